#!/usr/bin/env bash
# Side-by-side load harness: the same PostgreSQL reached directly, through PgBouncer (session
# mode) and through the Portcullis gateway with no policy, measured alternately in one run —
# and, on request, through the same gateway recording an audit trail (JSONL sink, write-ahead
# with on_failure = "refuse", signed checkpoints): fsync = "interval" with the writer thread
# (`audit`) or inline writes (`audit-inline`), and fsync = "always" (`audit-always`) — and
# through the same gateway with the guard on (`guard`: [policy] with the rules of
# INTERFACE.md's example, none of which blocks pgbench's statements), and with masking on
# (`mask`: every detector, column rules on the `token` and `ssn` labels; it also runs
# `pii-1m`, a 1M-row select with three columns to mask, side by side with direct and the
# gateway without masking), and with OpenID Connect tokens (`oidc`: the same gateway with
# `[identity.oidc]` trusting the test kit's provider — panva's oidc-provider on Node, from
# crates/portcullis-testkit/oidc — and clients presenting its client-credentials access
# tokens instead of the static token). `MODES=connect` runs `pgbench -C` (a new connection,
# so a token validation, per transaction).
#
# Run with:   bash benches/side-by-side.sh [REPORT.md]      (default benches/last-run.md)
#
# It starts a throwaway PostgreSQL 15 (initdb in a temp dir, fsync off, 127.0.0.1 on a free
# port), `pgbench -i -s $SCALE`, PgBouncer and the gateway in front of it, then for each of
# ROUNDS rounds runs every workload once per path, rotating the order of the paths each round:
#
#   S-simple-c1 .. S-prepared-c8   pgbench -S -n -T $DURATION, -M simple|extended|prepared,
#                                  at -c 1 -j 1 and -c $CLIENTS -j $THREADS
#   select-1m                      psql: select g, md5(g::text) from generate_series(1,1000000) g
#   pii-1m-binary                  pii-1m fetched by asyncpg, which asks for binary results (the
#                                  mask path's binary decoding), when PATHS has "mask"
#   copy-1m                        psql: copy (the same) to stdout
#
# and prints medians per workload and path: TPS (or seconds and MB/s), ratios, the single
# client's p50 latency (from pgbench --log) and what the gateway adds to it, the proxies' CPU
# time per transaction (or per row) from /proc/PID/stat, and their RSS (peak, and growth
# during the 1M-row select). Everything is cleaned up on exit.
#
# Knobs (environment): DURATION (10 s per pgbench run), ROUNDS (3), SCALE (10), CLIENTS (8),
# THREADS (2), PATHS ("direct pgbouncer gateway": drop one to skip it; add "audit",
# "audit-inline" and "audit-always" for the audited gateway, "guard" for the guarded one), PGBIN
# (/usr/lib/postgresql/15/bin), GATEWAY_BIN (target/release/portcullis, built when missing),
# GATEWAY_LOG (PORTCULLIS_LOG for the gateway, default info), KEEP_TMP=1 (keep the temp dir),
# MODES ("simple extended prepared": pgbench modes to run; `connect` = -C -M simple), BULK=0
# (skip the 1M-row runs).
#
# Expected output: a progress line per run on stderr, then a markdown report on stdout, also
# written to the report file.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${1:-$ROOT/benches/last-run.md}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
PATHS=${PATHS:-direct pgbouncer gateway}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/portcullis}
GATEWAY_LOG=${GATEWAY_LOG:-info}
ROWS=1000000
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[side-by-side] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

read -r -a PATH_LIST <<<"$PATHS"
has_path() { [[ " ${PATH_LIST[*]} " == *" $1 "* ]]; }
AUDIT_PATHS=()
for p in audit audit-inline audit-always; do has_path "$p" && AUDIT_PATHS+=("$p"); done
any_gateway() { has_path gateway || has_path guard || has_path mask || has_path oidc || (( ${#AUDIT_PATHS[@]} > 0 )); }
(( ${#PATH_LIST[@]} > 0 )) || die "PATHS is empty"
for p in "${PATH_LIST[@]}"; do
    case $p in direct | pgbouncer | gateway | audit | audit-inline | audit-always | guard | mask | oidc) ;; *) die "unknown path '$p' in PATHS" ;; esac
done

# ---- tools ------------------------------------------------------------------------------
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL at $PGBIN (apt-get install -y postgresql-15)"
PGBENCH=$PGBIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
PSQL=$PGBIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
if has_path pgbouncer && ! command -v pgbouncer >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        log "installing pgbouncer"
        { apt-get install -y pgbouncer || { apt-get update && apt-get install -y pgbouncer; }; } >&2 \
            || die "could not install pgbouncer"
    else
        die "pgbouncer not found (apt-get install -y pgbouncer)"
    fi
fi
PGBOUNCER=$(command -v pgbouncer || true)
if any_gateway && [[ ! -x $GATEWAY_BIN ]]; then
    log "building the gateway (cargo build --release -p portcullis-gateway)"
    (cd "$ROOT" && cargo build --release -p portcullis-gateway) >&2 \
        || die "the gateway did not build; PATHS='direct pgbouncer' runs without it"
    [[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN"
fi

# Daemons run unprivileged: PostgreSQL and PgBouncer refuse to run as root.
if [[ $(id -u) == 0 ]]; then
    RUN_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
else
    RUN_AS=()
fi

# ---- cleanup ----------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/portcullis-sbs.XXXXXX)
PG_STARTED=0
GATEWAY_PIDS=()
IDP_PID=
PGBOUNCER_PID=
SAMPLER_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    for pid in "${GATEWAY_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    [[ -n $IDP_PID ]] && pkill -P "$IDP_PID" 2>/dev/null; [[ -n $IDP_PID ]] && kill "$IDP_PID" 2>/dev/null
    [[ -n $PGBOUNCER_PID ]] && kill "$PGBOUNCER_PID" 2>/dev/null && wait "$PGBOUNCER_PID" 2>/dev/null
    if (( PG_STARTED )); then
        "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate stop >/dev/null 2>&1
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ----------------------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN_PORTS=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 40000 ))
        if [[ $TAKEN_PORTS != *" $p "* ]] && ! port_in_use "$p"; then
            TAKEN_PORTS+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port"
}
wait_port() { # port pid name
    for _ in $(seq 200); do
        port_in_use "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during start (see its log in $WORK)"
        sleep 0.05
    done
    die "$3 did not listen on port $1"
}
cpu_ticks() { # utime + stime of a whole process (all its threads)
    local stat
    stat=$(<"/proc/$1/stat") || { echo 0; return; }
    stat=${stat##*")" }
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( ${12} + ${13} ))
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "NA"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt() { # printf format, value (NA passes through)
    # shellcheck disable=SC2059 # the format is always a literal of this script
    if [[ $2 == NA || -z $2 ]]; then echo "n/a"; else LC_ALL=C printf "$1" "$2"; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || a == "" || b == "" || b == 0) print "NA"; else print a / b }'; }
diff_() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || a == "" || b == "") print "NA"; else print a - b }'; }

declare -A PORT PASSWORD PID_OF
declare -A RESULTS # "$metric|$workload|$path" -> space-separated values, one per round
record() { RESULTS["$1|$2|$3"]+="$4 "; }
values() { tr ' ' '\n' <<<"${RESULTS["$1|$2|$3"]:-}" | grep -v '^$' | grep -v '^NA$'; }
med() { values "$@" | median; }

# ---- PostgreSQL ------------------------------------------------------------------------
PG_USER=bench
PG_DB=bench
PG_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
PORT[direct]=$(free_port)
PORT[pgbouncer]=$(free_port)
PASSWORD[direct]=$PG_PASSWORD
PASSWORD[pgbouncer]=$PG_PASSWORD
PORT[guard_admin]=$(free_port)
for g in gateway audit audit-inline audit-always guard mask oidc; do
    PORT[$g]=$(free_port)
    PASSWORD[$g]=$TOKEN
done

[[ $(id -u) == 0 ]] && chown postgres: "$WORK"
chmod 755 "$WORK"
printf '%s\n' "$PG_PASSWORD" >"$WORK/pwfile"
[[ $(id -u) == 0 ]] && chown postgres: "$WORK/pwfile"
log "initdb ($WORK/pgdata), PostgreSQL on 127.0.0.1:${PORT[direct]}"
"${RUN_AS[@]}" "$PGBIN/initdb" -D "$WORK/pgdata" -U "$PG_USER" --pwfile="$WORK/pwfile" \
    -A scram-sha-256 --auth-local=trust -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$WORK/initdb.log")"
cat >>"$WORK/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${PORT[direct]}
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_connections = 100
EOF
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start >/dev/null \
    || die "PostgreSQL did not start: $(tail -5 "$WORK/postgres.log")"
PG_STARTED=1
PID_OF[direct]=$(head -1 "$WORK/pgdata/postmaster.pid")
export PGCONNECT_TIMEOUT=10
PGPASSWORD=$PG_PASSWORD "$PSQL" -X -q -h 127.0.0.1 -p "${PORT[direct]}" -U "$PG_USER" -d postgres \
    -c "create database $PG_DB" >/dev/null || die "create database failed"
log "pgbench -i -s $SCALE"
PGPASSWORD=$PG_PASSWORD "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "${PORT[direct]}" \
    -U "$PG_USER" "$PG_DB" >"$WORK/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed: $(tail -5 "$WORK/pgbench-init.log")"

# ---- PgBouncer --------------------------------------------------------------------------
if has_path pgbouncer; then
    printf '"%s" "%s"\n' "$PG_USER" "$PG_PASSWORD" >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$PG_DB = host=127.0.0.1 port=${PORT[direct]} dbname=$PG_DB user=$PG_USER password=$PG_PASSWORD

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
unix_socket_dir = $WORK
auth_type = plain
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
server_tls_sslmode = disable
logfile = $WORK/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    [[ $(id -u) == 0 ]] && chown postgres: "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
    log "PgBouncer ($($PGBOUNCER --version | head -1)) on 127.0.0.1:${PORT[pgbouncer]}"
    "${RUN_AS[@]}" "$PGBOUNCER" "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 &
    PGBOUNCER_PID=$!
    PID_OF[pgbouncer]=$PGBOUNCER_PID
    wait_port "${PORT[pgbouncer]}" "$PGBOUNCER_PID" pgbouncer
fi

# ---- the gateway ------------------------------------------------------------------------
start_gateway() { # path, extra config
    local name=$1 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/portcullis.toml" <<EOF
# Generated by benches/side-by-side.sh: one PostgreSQL target, one static token, no policy.
[[identity.tokens]]
name = "bench"
sha256 = "$TOKEN_SHA"
groups = ["bench"]

[[postgres]]
name = "bench"
listen = "127.0.0.1:${PORT[$name]}"
allow_plaintext_tokens_on_loopback = true
[postgres.upstream]
host = "127.0.0.1"
port = ${PORT[direct]}
user = "$PG_USER"
password = "\${SBS_PG_PASSWORD}"
database = "$PG_DB"
tls = "disable"
$2
EOF
    log "$name ($GATEWAY_BIN) on 127.0.0.1:${PORT[$name]}"
    SBS_PG_PASSWORD=$PG_PASSWORD PORTCULLIS_LOG=$GATEWAY_LOG \
        "$GATEWAY_BIN" run --config "$dir/portcullis.toml" >"$dir/gateway.log" 2>&1 &
    PID_OF[$name]=$!
    GATEWAY_PIDS+=("$!")
    wait_port "${PORT[$name]}" "${PID_OF[$name]}" "$name"
}
audit_config() { # fsync policy, writer
    cat <<EOF
[audit]
on_failure = "refuse"
signing_key = "$WORK/audit.key"
[[audit.sinks]]
kind = "jsonl"
path = "trail.jsonl"
fsync = "$1"
writer = "$2"
EOF
}
guard_config() {
    cat <<EOF
[admin]
listen = "127.0.0.1:${PORT[guard_admin]}"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "no-drop"
statements = ["drop", "truncate"]
action = "deny"
[[policy.rules]]
name = "unbounded-writes"
statements = ["delete", "update"]
without_where = true
action = "approve"
approvers = ["dba"]
[[policy.rules]]
name = "analysts-read-only"
groups = ["analysts"]
statements = ["write", "ddl", "admin"]
action = "deny"
[[policy.rules]]
name = "dba-may-read-files"
groups = ["dba"]
functions = ["pg_read_file"]
action = "allow"
[[policy.rules]]
name = "no-file-access"
functions = ["pg_read_file", "pg_read_binary_file", "pg_ls_dir", "lo_import", "lo_export"]
action = "deny"
[[policy.rules]]
name = "payments-approval"
tables = ["billing.*"]
statements = ["write"]
action = "approve"
approvers = ["finance-leads"]
mode = "detect"
EOF
}
has_path gateway && start_gateway gateway ""
has_path guard && start_gateway guard "$(guard_config)"
mask_config() {
    cat <<EOF
[masking]
strategy = "partial"
[[masking.columns]]
match = "token"
strategy = "redact"
[[masking.columns]]
match = "ssn"
strategy = "partial"
EOF
}
has_path mask && start_gateway mask "$(mask_config)"
IDP_DIR=$ROOT/crates/portcullis-testkit/oidc
oidc_token() { # a fresh client-credentials access token from the test provider
    curl -sf -u svc-reporting:svc-reporting-secret -d grant_type=client_credentials \
        "http://127.0.0.1:${PORT[idp]}/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
if has_path oidc; then
    [[ -d $IDP_DIR/node_modules/oidc-provider ]] \
        || npm install --silent --no-audit --no-fund --prefix "$IDP_DIR" >&2 || die "npm install of the test provider failed"
    PORT[idp]=$(free_port)
    log "OIDC provider (oidc-provider on node $(node --version)) on 127.0.0.1:${PORT[idp]}"
    # It exits when its stdin closes: the pipe from `tail -f` stays open until cleanup.
    (tail -f /dev/null | node "$IDP_DIR/provider.mjs" "${PORT[idp]}" >"$WORK/idp.log" 2>&1) &
    IDP_PID=$!
    wait_port "${PORT[idp]}" "$IDP_PID" "OIDC provider"
    start_gateway oidc "[identity.oidc]
issuer = \"http://127.0.0.1:${PORT[idp]}\"
audiences = [\"portcullis\"]
accept = [\"access_token\"]"
    PASSWORD[oidc]=$(oidc_token) || die "no token from the OIDC provider (see $WORK/idp.log)"
fi
if (( ${#AUDIT_PATHS[@]} > 0 )); then
    "$GATEWAY_BIN" audit keygen --out "$WORK/audit.key" >/dev/null || die "audit keygen failed"
fi
has_path audit && start_gateway audit "$(audit_config interval thread)"
has_path audit-inline && start_gateway audit-inline "$(audit_config interval inline)"
has_path audit-always && start_gateway audit-always "$(audit_config always thread)"

# ---- runs -------------------------------------------------------------------------------
# Peak RSS over the whole run, kept across the per-select resets of VmHWM.
declare -A PEAK_KB
note_peak() {
    local pid=${PID_OF[$1]} hwm
    [[ $1 == direct ]] && return
    hwm=$(status_kb "$pid" VmHWM)
    (( ${hwm:-0} > ${PEAK_KB[$1]:-0} )) && PEAK_KB[$1]=$hwm
}

pg_env() { # path -> env for libpq clients
    echo "PGHOST=127.0.0.1 PGPORT=${PORT[$1]} PGUSER=$PG_USER PGDATABASE=$PG_DB PGPASSWORD=${PASSWORD[$1]}"
}

run_pgbench() { # workload mode clients threads path record(0|1)
    local wl=$1 mode=$2 c=$3 j=$4 path=$5 rec=$6 out="$WORK/pgbench.out" pid=${PID_OF[$5]}
    local logargs=() t0=0 t1=0 tps n lat p50=NA
    rm -f "$WORK"/pgblog.*
    if (( c == 1 && rec )); then logargs=(--log --log-prefix="$WORK/pgblog"); fi
    # Tokens live 10 minutes: a fresh one per run.
    if [[ $path == oidc ]]; then PASSWORD[oidc]=$(oidc_token) || log "  no fresh OIDC token"; fi
    local modeargs=(-M "$mode")
    [[ $mode == connect ]] && modeargs=(-C -M simple)
    [[ $path != direct ]] && t0=$(cpu_ticks "$pid")
    # shellcheck disable=SC2046
    if ! env $(pg_env "$path") "$PGBENCH" -S -n "${modeargs[@]}" -c "$c" -j "$j" -T "$DURATION" \
        "${logargs[@]}" >"$out" 2>&1; then
        log "  $wl via $path FAILED: $(grep -v '^pgbench (' "$out" | tail -3 | tr '\n' ' ')"
        (( rec )) && record tps "$wl" "$path" NA
        return 1
    fi
    [[ $path != direct ]] && t1=$(cpu_ticks "$pid")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
    if (( c == 1 && rec )) && compgen -G "$WORK/pgblog.*" >/dev/null; then
        # Field 3 of pgbench's per-transaction log is the latency in microseconds.
        p50=$(cat "$WORK"/pgblog.* | awk '{ print $3 }' | median)
    fi
    (( rec )) || return 0
    record tps "$wl" "$path" "${tps:-NA}"
    record latavg "$wl" "$path" "$(awk -v l="${lat:-NA}" 'BEGIN { print (l == "NA") ? "NA" : l * 1000 }')"
    record p50 "$wl" "$path" "$p50"
    if [[ $path != direct && -n $n && $n -gt 0 ]]; then
        record cpu "$wl" "$path" "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { print d / hz / n * 1e6 }')"
    fi
    note_peak "$path"
    log "  $wl via $path: tps=${tps:-?} lat_avg=${lat:-?}ms p50=${p50}us"
}

SELECT_SQL="select g, md5(g::text) from generate_series(1, $ROWS) g"
COPY_SQL="copy ($SELECT_SQL) to stdout"
PII_SQL="select g, 'user' || g || '@example.com' as email, md5(g::text) as token, lpad(g::text, 9, '0') as ssn from generate_series(1, $ROWS) g"
declare -A OUT_BYTES
# A client that fetches in binary format: asyncpg (libpq's environment variables).
BINARY_CLIENT='import asyncio, sys, asyncpg
async def main():
    c = await asyncpg.connect(ssl=False)
    rows = await c.fetch(sys.argv[1])
    await c.close()
    print(len(rows))
asyncio.run(main())'

run_bulk() { # workload sql path
    local wl=$1 sql=$2 path=$3 pid=${PID_OF[$3]} t0=0 t1=0 s e rss0=0 rss_peak=0 secs
    if [[ $path != direct ]]; then
        note_peak "$path"
        rss0=$(status_kb "$pid" VmRSS)
        # Reset VmHWM to the current RSS so that afterwards it is this select's peak; where
        # that is not allowed, sample VmRSS instead.
        if ! echo 5 >"/proc/$pid/clear_refs" 2>/dev/null; then
            (while :; do status_kb "$pid" VmRSS; sleep 0.02; done >"$WORK/rss.samples") &
            SAMPLER_PID=$!
        fi
        t0=$(cpu_ticks "$pid")
    fi
    s=$(date +%s%N)
    local client=("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -c "$sql")
    [[ $wl == *-binary ]] && client=(python3 -c "$BINARY_CLIENT" "$sql")
    # shellcheck disable=SC2046
    if ! env $(pg_env "$path") "${client[@]}" >/dev/null 2>"$WORK/psql.err"; then
        log "  $wl via $path FAILED: $(tail -3 "$WORK/psql.err" | tr '\n' ' ')"
        record secs "$wl" "$path" NA
        [[ -n $SAMPLER_PID ]] && { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=; }
        return 1
    fi
    e=$(date +%s%N)
    secs=$(awk -v a="$s" -v b="$e" 'BEGIN { print (b - a) / 1e9 }')
    record secs "$wl" "$path" "$secs"
    record mbps "$wl" "$path" "$(awk -v b="${OUT_BYTES[$wl]}" -v t="$secs" 'BEGIN { print b / t / 1e6 }')"
    if [[ $path != direct ]]; then
        t1=$(cpu_ticks "$pid")
        if [[ -n $SAMPLER_PID ]]; then
            kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=
            rss_peak=$(sort -n "$WORK/rss.samples" | tail -1)
        else
            rss_peak=$(status_kb "$pid" VmHWM)
        fi
        record rssgrowth "$wl" "$path" "$(( ${rss_peak:-0} - ${rss0:-0} ))"
        record cpurow "$wl" "$path" "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$ROWS" 'BEGIN { print d / hz / n * 1e9 }')"
        note_peak "$path"
    fi
    log "  $wl via $path: ${secs}s"
}

# Output sizes, measured once directly (what the client receives, as text).
# shellcheck disable=SC2046
OUT_BYTES[select-1m]=$(env $(pg_env direct) "$PSQL" -X -q -A -t -c "$SELECT_SQL" | wc -c)
# shellcheck disable=SC2046
OUT_BYTES[copy-1m]=$(env $(pg_env direct) "$PSQL" -X -q -c "$COPY_SQL" | wc -c)
# shellcheck disable=SC2046
has_path mask && OUT_BYTES[pii-1m]=$(env $(pg_env direct) "$PSQL" -X -q -A -t -c "$PII_SQL" | wc -c)
# (the binary fetch's MB/s are counted over the same clear text size)
has_path mask && OUT_BYTES[pii-1m-binary]=${OUT_BYTES[pii-1m]}

# Every path must work before anything is measured; a short unrecorded run also warms caches.
log "warm-up and check of every path"
for path in "${PATH_LIST[@]}"; do
    SAVED=$DURATION
    DURATION=$(( DURATION < 3 ? DURATION : 3 ))
    run_pgbench warmup prepared 1 1 "$path" 0 \
        || die "$path does not work (see $WORK and its log); PATHS=... skips a path"
    DURATION=$SAVED
done

PGBENCH_WORKLOADS=()
for c in 1 "$CLIENTS"; do
    for mode in ${MODES:-simple extended prepared}; do PGBENCH_WORKLOADS+=("S-$mode-c$c"); done
done
WORKLOADS=("${PGBENCH_WORKLOADS[@]}")
[[ ${BULK:-1} == 1 ]] && WORKLOADS+=(select-1m copy-1m)
[[ ${BULK:-1} == 1 ]] && has_path mask && WORKLOADS+=(pii-1m pii-1m-binary)

START=$(date +%s)
for (( round = 1; round <= ROUNDS; round++ )); do
    # Rotate the order of the paths each round so that no path always runs first.
    order=()
    for (( i = 0; i < ${#PATH_LIST[@]}; i++ )); do
        order+=("${PATH_LIST[$(( (i + round - 1) % ${#PATH_LIST[@]} ))]}")
    done
    log "round $round/$ROUNDS (order: ${order[*]})"
    for wl in "${WORKLOADS[@]}"; do
        for path in "${order[@]}"; do
            case $wl in
                S-*-c*)
                    mode=${wl#S-}; mode=${mode%-c*}; c=${wl##*-c}
                    j=$(( c == 1 ? 1 : THREADS ))
                    run_pgbench "$wl" "$mode" "$c" "$j" "$path" 1
                    ;;
                select-1m) [[ $path == audit* || $path == guard ]] || run_bulk "$wl" "$SELECT_SQL" "$path" ;;
                copy-1m) [[ $path == audit* || $path == guard || $path == mask ]] || run_bulk "$wl" "$COPY_SQL" "$path" ;;
                pii-1m | pii-1m-binary) [[ $path == direct || $path == gateway || $path == mask ]] && run_bulk "$wl" "$PII_SQL" "$path" ;;
            esac
        done
    done
done
ELAPSED=$(( $(date +%s) - START ))
for path in pgbouncer gateway guard mask oidc "${AUDIT_PATHS[@]}"; do has_path "$path" && note_peak "$path"; done

# The audited gateways stop cleanly (sealing their trails), which are then verified.
declare -A TRAIL
for path in "${AUDIT_PATHS[@]}"; do
    kill "${PID_OF[$path]}" 2>/dev/null && wait "${PID_OF[$path]}" 2>/dev/null
    t="$WORK/$path/trail.jsonl"
    if out=$("$GATEWAY_BIN" audit verify "$t" --key "$WORK/audit.key.pub" 2>&1); then
        TRAIL[$path]="intact, $(sed -n 's/^intact: [0-9]* file(s), \([0-9]*\) records.*/\1/p' <<<"$out") records, $(( $(stat -c %s "$t") / 1048576 )) MiB"
    else
        TRAIL[$path]="NOT INTACT: $(grep 'NOT INTACT' <<<"$out")"
    fi
done

# ---- report -----------------------------------------------------------------------------
against_gateway() { # path: pgbench TPS and CPU per transaction next to the plain gateway
    local p=$1 wl g a
    echo "| workload | gateway | $p | $p/gateway | gateway CPU/tx (µs) | $p CPU/tx (µs) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for wl in "${PGBENCH_WORKLOADS[@]}"; do
        g=$(med tps "$wl" gateway); a=$(med tps "$wl" "$p")
        echo "| $wl | $(fmt %.0f "$g") | $(fmt %.0f "$a") | $(fmt %.3f "$(ratio "$a" "$g")") |" \
            "$(fmt %.1f "$(med cpu "$wl" gateway)") | $(fmt %.1f "$(med cpu "$wl" "$p")") |"
    done
}

report() {
    local wl d b g
    echo "# Side-by-side run ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); $("$PGBIN/postgres" --version);" \
        "${PGBOUNCER:+$($PGBOUNCER --version | head -1); }gateway: $(has_path gateway && echo "$GATEWAY_BIN" || echo "not run")."
    echo "Settings: DURATION=${DURATION}s ROUNDS=$ROUNDS SCALE=$SCALE CLIENTS=$CLIENTS THREADS=$THREADS," \
        "paths: ${PATH_LIST[*]}; gateway log level: $GATEWAY_LOG; wall time ${ELAPSED}s." \
        "Values are medians over the rounds; paths alternate within each round."
    echo
    echo "## pgbench -S (TPS)"
    echo
    echo "| workload | direct | pgbouncer | gateway | gateway/direct | pgbouncer/direct | gateway/pgbouncer | gateway CPU/tx (µs) | pgbouncer CPU/tx (µs) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for wl in "${PGBENCH_WORKLOADS[@]}"; do
        d=$(med tps "$wl" direct); b=$(med tps "$wl" pgbouncer); g=$(med tps "$wl" gateway)
        echo "| $wl | $(fmt %.0f "$d") | $(fmt %.0f "$b") | $(fmt %.0f "$g") |" \
            "$(fmt %.3f "$(ratio "$g" "$d")") | $(fmt %.3f "$(ratio "$b" "$d")") | $(fmt %.3f "$(ratio "$g" "$b")") |" \
            "$(fmt %.1f "$(med cpu "$wl" gateway)") | $(fmt %.1f "$(med cpu "$wl" pgbouncer)") |"
    done
    echo
    echo "## Single-client latency (µs; p50 from pgbench --log, average from pgbench)"
    echo
    echo "| workload | p50 direct | p50 pgbouncer | p50 gateway | gateway adds (p50) | pgbouncer adds (p50) | gateway adds (avg) | pgbouncer adds (avg) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for wl in "${PGBENCH_WORKLOADS[@]}"; do
        [[ $wl == *-c1 ]] || continue
        d=$(med p50 "$wl" direct); b=$(med p50 "$wl" pgbouncer); g=$(med p50 "$wl" gateway)
        echo "| $wl | $(fmt %.1f "$d") | $(fmt %.1f "$b") | $(fmt %.1f "$g") |" \
            "$(fmt %.1f "$(diff_ "$g" "$d")") | $(fmt %.1f "$(diff_ "$b" "$d")") |" \
            "$(fmt %.1f "$(diff_ "$(med latavg "$wl" gateway)" "$(med latavg "$wl" direct)")") |" \
            "$(fmt %.1f "$(diff_ "$(med latavg "$wl" pgbouncer)" "$(med latavg "$wl" direct)")") |"
    done
    echo
    echo "## 1M-row select and copy (psql to /dev/null)"
    echo
    echo "| workload | output MB | direct s | pgbouncer s | gateway s | direct MB/s | pgbouncer MB/s | gateway MB/s | gateway/direct | pgbouncer/direct | gateway CPU/row (ns) | pgbouncer CPU/row (ns) | gateway RSS growth (KiB) | pgbouncer RSS growth (KiB) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for wl in select-1m copy-1m; do
        d=$(med mbps "$wl" direct); b=$(med mbps "$wl" pgbouncer); g=$(med mbps "$wl" gateway)
        echo "| $wl | $(fmt %.1f "$(awk -v b="${OUT_BYTES[$wl]}" 'BEGIN { print b / 1e6 }')") |" \
            "$(fmt %.2f "$(med secs "$wl" direct)") | $(fmt %.2f "$(med secs "$wl" pgbouncer)") | $(fmt %.2f "$(med secs "$wl" gateway)") |" \
            "$(fmt %.1f "$d") | $(fmt %.1f "$b") | $(fmt %.1f "$g") |" \
            "$(fmt %.3f "$(ratio "$g" "$d")") | $(fmt %.3f "$(ratio "$b" "$d")") |" \
            "$(fmt %.0f "$(med cpurow "$wl" gateway)") | $(fmt %.0f "$(med cpurow "$wl" pgbouncer)") |" \
            "$(fmt %.0f "$(values rssgrowth "$wl" gateway | sort -n | tail -1)") | $(fmt %.0f "$(values rssgrowth "$wl" pgbouncer | sort -n | tail -1)") |"
    done
    echo
    echo "RSS growth: the largest over the rounds of (peak RSS during the command − RSS before it)."
    echo "Peak RSS over the whole run: gateway $(fmt %.0f "${PEAK_KB[gateway]:-NA}") KiB," \
        "pgbouncer $(fmt %.0f "${PEAK_KB[pgbouncer]:-NA}") KiB (VmHWM)."
    if has_path gateway; then
        echo "Gateway log ($GATEWAY_LOG): $(wc -l <"$WORK/gateway/gateway.log") lines, of which" \
            "$(grep -c -E 'WARN|ERROR' "$WORK/gateway/gateway.log") WARN/ERROR."
    fi
    if (( ${#AUDIT_PATHS[@]} > 0 )); then
        echo
        echo "## Audit trail cost (pgbench -S TPS; JSONL sink, write-ahead, on_failure = refuse)"
        echo
        echo "audit: fsync = interval, writer thread; audit-inline: fsync = interval, sessions append"
        echo "inline; audit-always: fsync = always, writer thread. Ratios are against the gateway without audit."
        echo
        local head="| workload | gateway |" rule="|---|---:|" p
        for p in "${AUDIT_PATHS[@]}"; do head+=" $p | $p/gateway |"; rule+="---:|---:|"; done
        head+=" gateway CPU/tx (µs) |"; rule+="---:|"
        for p in "${AUDIT_PATHS[@]}"; do head+=" $p CPU/tx (µs) |"; rule+="---:|"; done
        echo "$head"; echo "$rule"
        for wl in "${PGBENCH_WORKLOADS[@]}"; do
            g=$(med tps "$wl" gateway)
            local row="| $wl | $(fmt %.0f "$g") |"
            for p in "${AUDIT_PATHS[@]}"; do
                a=$(med tps "$wl" "$p")
                row+=" $(fmt %.0f "$a") | $(fmt %.3f "$(ratio "$a" "$g")") |"
            done
            row+=" $(fmt %.1f "$(med cpu "$wl" gateway)") |"
            for p in "${AUDIT_PATHS[@]}"; do row+=" $(fmt %.1f "$(med cpu "$wl" "$p")") |"; done
            echo "$row"
        done
        echo
        local lat="Single-client p50 (µs, S-simple-c1): gateway $(fmt %.1f "$(med p50 S-simple-c1 gateway)")"
        for p in "${AUDIT_PATHS[@]}"; do lat+=", $p $(fmt %.1f "$(med p50 S-simple-c1 "$p")")"; done
        echo "$lat."
        for p in "${AUDIT_PATHS[@]}"; do echo "Trail of $p after the run: ${TRAIL[$p]}."; done
    fi
    if has_path guard; then
        echo
        echo "## Guard cost (pgbench -S TPS; [policy] with six rules, verdicts cached)"
        echo
        against_gateway guard
        echo
        echo "Single-client p50 (µs, S-simple-c1): gateway $(fmt %.1f "$(med p50 S-simple-c1 gateway)"), guard $(fmt %.1f "$(med p50 S-simple-c1 guard)")."
    fi
    if has_path oidc; then
        echo
        echo "## OIDC tokens against static tokens (pgbench -S TPS; oidc = client-credentials RS256 access tokens)"
        echo
        against_gateway oidc
    fi
    if has_path mask; then
        echo
        echo "## Masking cost"
        echo
        echo "pgbench -S (no value to mask; every detector scans the result):"
        echo
        against_gateway mask
        if [[ " ${WORKLOADS[*]} " == *" pii-1m "* ]]; then
            echo
            echo "1M-row selects (psql to /dev/null; pii-1m masks an e-mail by content, a token and an SSN by column rule in every row):"
            echo
            echo "| workload | direct MB/s | gateway MB/s | mask MB/s | mask/direct | mask/gateway | mask CPU/row (ns) | mask RSS growth (KiB) |"
            echo "|---|---:|---:|---:|---:|---:|---:|---:|"
            for wl in select-1m pii-1m pii-1m-binary; do
                d=$(med mbps "$wl" direct); g=$(med mbps "$wl" gateway); a=$(med mbps "$wl" mask)
                echo "| $wl | $(fmt %.1f "$d") | $(fmt %.1f "$g") | $(fmt %.1f "$a") | $(fmt %.3f "$(ratio "$a" "$d")") | $(fmt %.3f "$(ratio "$a" "$g")") |" \
                    "$(fmt %.0f "$(med cpurow "$wl" mask)") | $(fmt %.0f "$(values rssgrowth "$wl" mask | sort -n | tail -1)") |"
            done
        fi
    fi
    echo
    echo "## Targets"
    echo
    local r lat rss
    r=$(ratio "$(med tps "S-simple-c$CLIENTS" gateway)" "$(med tps "S-simple-c$CLIENTS" pgbouncer)")
    lat=$(diff_ "$(med p50 S-simple-c1 gateway)" "$(med p50 S-simple-c1 direct)")
    rss=$(values rssgrowth select-1m gateway | sort -n | tail -1)
    verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "NA" || v == "") print "n/a"; else if ((op == ">=" && v >= t) || (op == "<=" && v <= t) || (op == "<" && v < t)) print "met"; else print "NOT met" }'; }
    echo "| target | measured | |"
    echo "|---|---:|---|"
    echo "| gateway ≥ 1.05× PgBouncer TPS, -S -M simple -c $CLIENTS | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 1.05) |"
    echo "| single-client added latency ≤ 40 µs p50 (simple) | $(fmt %.1f "$lat") µs | $(verdict "$lat" '<=' 40) |"
    r=$(ratio "$(med mbps select-1m gateway)" "$(med mbps select-1m direct)")
    echo "| 1M-row select ≥ 0.95× direct throughput | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.95) |"
    echo "| 1M-row select RSS growth < 16 MB | $(fmt %.0f "${rss:-NA}") KiB | $(verdict "${rss:-NA}" '<' 16384) |"
    for p in audit audit-inline; do
        has_path "$p" || continue
        r=$(ratio "$(med tps "S-simple-c$CLIENTS" "$p")" "$(med tps "S-simple-c$CLIENTS" gateway)")
        echo "| $p (fsync = interval) ≥ 0.95× the gateway without audit, -S -M simple -c $CLIENTS | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.95) |"
    done
    if has_path mask; then
        r=$(ratio "$(med tps "S-simple-c$CLIENTS" mask)" "$(med tps "S-simple-c$CLIENTS" gateway)")
        echo "| mask ≥ 0.97× the gateway without masking, -S -M simple -c $CLIENTS | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.97) |"
        if [[ " ${WORKLOADS[*]} " == *" pii-1m "* ]]; then
            r=$(ratio "$(med mbps pii-1m mask)" "$(med mbps pii-1m direct)")
            rss=$(values rssgrowth pii-1m mask | sort -n | tail -1)
            echo "| pii-1m (3 masked columns) ≥ 0.9× direct throughput | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.9) |"
            echo "| pii-1m RSS growth < 16 MB | $(fmt %.0f "${rss:-NA}") KiB | $(verdict "${rss:-NA}" '<' 16384) |"
            r=$(ratio "$(med mbps pii-1m-binary mask)" "$(med mbps pii-1m-binary direct)")
            rss=$(values rssgrowth pii-1m-binary mask | sort -n | tail -1)
            echo "| pii-1m-binary (asyncpg, binary format) ≥ 0.9× direct throughput | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.9) |"
            echo "| pii-1m-binary RSS growth < 16 MB | $(fmt %.0f "${rss:-NA}") KiB | $(verdict "${rss:-NA}" '<' 16384) |"
        fi
    fi
    if has_path guard; then
        for m in simple prepared; do
            r=$(ratio "$(med tps "S-$m-c$CLIENTS" guard)" "$(med tps "S-$m-c$CLIENTS" gateway)")
            echo "| guard ≥ 0.95× the gateway without guard, -S -M $m -c $CLIENTS | $(fmt %.3f "$r")× | $(verdict "$r" '>=' 0.95) |"
        done
    fi
}

report | tee "$REPORT"
log "report written to $REPORT"

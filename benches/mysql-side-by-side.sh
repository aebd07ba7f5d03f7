#!/usr/bin/env bash
# Side-by-side load harness for the MySQL data plane: the same MariaDB reached directly,
# through the Portcullis gateway with no policy layers (`gateway`: static tokens only), and
# through the same gateway with every layer on (`gateway-all`: [policy] with rules none of
# which blocks sysbench's statements, [masking] with every detector, [approvals], and [audit]
# with a JSONL sink — write-ahead, on_failure = "refuse", fsync = "interval", signed
# checkpoints), measured alternately in one run — and, on request, through the gateway with
# one of those layers alone (`guard`: [policy] and [approvals]; `mask`: [masking]; `audit`:
# [audit]), to tell what each costs. The MySQL counterpart of side-by-side.sh.
#
# Run with:   bash benches/mysql-side-by-side.sh [REPORT.md]   (default benches/mysql-last-run.md)
#
# It starts a throwaway MariaDB (mariadb-install-db in a temp dir, its own --defaults-file,
# nothing durable, 127.0.0.1 on a free port and its own socket; as the `mysql` system user when
# run as root), runs `sysbench oltp_point_select prepare` against it directly, starts one
# gateway per gateway path in front of it, then for each of ROUNDS rounds runs every workload
# once per path, rotating the order of the paths each round:
#
#   point-select-c1, point-select-c$CLIENTS
#                 sysbench oltp_point_select run --time=$DURATION --threads=1|$CLIENTS
#                 (one server-side prepared SELECT by primary key per transaction)
#   select-1m     mariadb --quick -N -B -e "SELECT seq, concat('row-', seq, repeat('x', 20))
#                 FROM seq_1_to_1000000" > /dev/null
#
# and prints medians per workload and path: TPS, ratios, sysbench's average, p50 and p95
# latency and what the gateway adds to them, CPU time per transaction (or per row) of the
# gateway, of mariadbd and of the client (from /proc/PID/stat and bash's `time`), and the
# gateways' RSS (peak, and growth during the 1M-row select). Everything is cleaned up on exit.
#
# Knobs (environment): DURATION (10 s per sysbench run), ROUNDS (3), CLIENTS (8 sysbench
# threads), TABLES (4), TABLE_SIZE (100000 rows per table), PATHS ("direct gateway
# gateway-all": drop one to skip it; add "guard", "mask" and "audit" for one layer each),
# GATEWAY_BIN (target/release/portcullis, built when missing), GATEWAY_LOG (PORTCULLIS_LOG for
# the gateways, default info), AUDIT_WRITER (the JSONL sink's `writer`: thread, the default,
# or inline), MARIADB_BIN_DIR (where mariadbd, mariadb-install-db and mariadb are; default PATH,
# /usr/sbin, /usr/bin), KEEP_TMP=1 (keep the temp dir), BULK=0 (skip the 1M-row select),
# WAIT_FOR (process names, e.g. "rustc": before each measured run wait until none runs, at most
# WAIT_MAX seconds, default 1200, and count the runs that overlapped one anyway).
#
# Expected output: a progress line per run on stderr, then a markdown report on stdout, also
# written to the report file.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${1:-$ROOT/benches/mysql-last-run.md}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-100000}
PATHS=${PATHS:-direct gateway gateway-all}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/portcullis}
GATEWAY_LOG=${GATEWAY_LOG:-info}
AUDIT_WRITER=${AUDIT_WRITER:-thread}
WAIT_FOR=${WAIT_FOR:-}
WAIT_MAX=${WAIT_MAX:-1200}
ROWS=1000000
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[mysql-side-by-side] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

read -r -a PATH_LIST <<<"$PATHS"
has_path() { [[ " ${PATH_LIST[*]} " == *" $1 "* ]]; }
GATEWAYS=()
for p in gateway guard mask audit gateway-all; do has_path "$p" && GATEWAYS+=("$p"); done
LAYER_PATHS=()
for p in guard mask audit; do has_path "$p" && LAYER_PATHS+=("$p"); done
AUDITED=()
for p in audit gateway-all; do has_path "$p" && AUDITED+=("$p"); done
(( ${#PATH_LIST[@]} > 0 )) || die "PATHS is empty"
for p in "${PATH_LIST[@]}"; do
    case $p in direct | gateway | gateway-all | guard | mask | audit) ;; *) die "unknown path '$p' in PATHS" ;; esac
done
[[ $AUDIT_WRITER == thread || $AUDIT_WRITER == inline ]] || die "AUDIT_WRITER must be thread or inline"

# Nothing in the caller's environment may redirect or reconfigure the MySQL clients.
# shellcheck disable=SC2046
unset $(compgen -v MYSQL) 2>/dev/null
# The gateway asks for the token through an authentication switch to mysql_clear_password,
# which libmariadb loads from a shared object on first use — and several threads connecting
# at once (sysbench's) race on that load: "Plugin mysql_clear_password could not be loaded: it
# is already loaded" (error 1045), most runs at 8 threads. Loaded at library init instead, it is
# there before the threads start. No effect on the direct path (mysql_native_password is built in).
export LIBMYSQL_PLUGINS=mysql_clear_password

# ---- tools ------------------------------------------------------------------------------
find_mariadb() { # program name
    local d
    for d in ${MARIADB_BIN_DIR:-} $(tr ':' ' ' <<<"$PATH") /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
        [[ -x $d/$1 ]] && { echo "$d/$1"; return; }
    done
    return 1
}
MARIADBD=$(find_mariadb mariadbd) || die "mariadbd not found (apt-get install -y mariadb-server)"
INSTALL_DB=$(find_mariadb mariadb-install-db) || die "mariadb-install-db not found (apt-get install -y mariadb-server)"
MARIADB=$(find_mariadb mariadb) || die "the mariadb client not found (apt-get install -y mariadb-client)"
SYSBENCH=$(command -v sysbench) || die "sysbench not found (apt-get install -y sysbench)"
if (( ${#GATEWAYS[@]} > 0 )) && [[ ! -x $GATEWAY_BIN ]]; then
    log "building the gateway (cargo build --release -p portcullis-gateway)"
    (cd "$ROOT" && cargo build --release -p portcullis-gateway) >&2 \
        || die "the gateway did not build; PATHS=direct runs without it"
    [[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN"
fi

# mariadbd refuses to run as root: it runs as the `mysql` system user then.
if [[ $(id -u) == 0 ]]; then
    id mysql >/dev/null 2>&1 || die "running as root needs a 'mysql' user"
    RUN_AS=(setpriv --reuid=mysql --regid=mysql --init-groups --)
    SOCKET_USER=root
else
    RUN_AS=()
    SOCKET_USER=$(id -un)
fi

# ---- cleanup ----------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/portcullis-mysql-sbs.XXXXXX)
MARIADB_PID=
GATEWAY_PIDS=()
SAMPLER_PID=
WATCH_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    [[ -n $WATCH_PID ]] && kill "$WATCH_PID" 2>/dev/null
    for pid in "${GATEWAY_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    # Throwaway data: no clean shutdown needed.
    [[ -n $MARIADB_PID ]] && kill -KILL "$MARIADB_PID" 2>/dev/null && wait "$MARIADB_PID" 2>/dev/null
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
    for _ in $(seq 600); do
        port_in_use "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during start (see its log in $WORK)"
        sleep 0.05
    done
    die "$3 did not listen on port $1"
}
cpu_ticks() { # utime + stime of a whole process (all its threads)
    local stat
    { stat=$(<"/proc/$1/stat"); } 2>/dev/null || { echo 0; return; }
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
per() { # ticks (or seconds with hz=1), hz, count, scale -> ticks / hz / count * scale
    awk -v d="$1" -v hz="$2" -v n="$3" -v s="$4" 'BEGIN { if (n == "" || n == 0) print "NA"; else print d / hz / n * s }'
}

declare -A PORT PASSWORD USER_OF PID_OF
declare -A RESULTS # "$metric|$workload|$path" -> space-separated values, one per round
record() { RESULTS["$1|$2|$3"]+="$4 "; }
values() { tr ' ' '\n' <<<"${RESULTS["$1|$2|$3"]:-}" | grep -v '^$' | grep -v '^NA$'; }
med() { values "$@" | median; }

# Another workload on the machine (a compiler, say) skews every number: with WAIT_FOR, wait
# until none of those processes runs before each measured run, and watch for them during it.
WAIT_RE=${WAIT_FOR// /|}
WAITED=0 OVERLAPS=0 MEASURED=0 WAIT_TIMEOUTS=0
wait_idle() {
    [[ -n $WAIT_RE ]] || return 0
    local waited=0
    while pgrep -x "$WAIT_RE" >/dev/null; do
        if (( waited >= WAIT_MAX )); then
            log "  $WAIT_FOR still running after ${WAIT_MAX}s: going ahead"
            (( WAIT_TIMEOUTS++ ))
            break
        fi
        (( waited == 0 )) && log "  waiting for $WAIT_FOR to finish"
        sleep 3
        (( waited += 3 ))
    done
    (( WAITED += waited ))
}
watch_start() {
    (( MEASURED++ ))
    [[ -n $WAIT_RE ]] || return 0
    : >"$WORK/overlap"
    (while :; do pgrep -x "$WAIT_RE" >/dev/null && echo 1 >>"$WORK/overlap"; sleep 1; done) &
    WATCH_PID=$!
}
watch_stop() { # -> "" or " (overlapped WAIT_FOR)"
    [[ -n $WATCH_PID ]] || return 0
    kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=
    if [[ -s $WORK/overlap ]]; then (( OVERLAPS++ )); OVERLAP_NOTE=" (overlapped $WAIT_FOR)"; else OVERLAP_NOTE=; fi
}

# ---- MariaDB ----------------------------------------------------------------------------
DB_NAME=sbtest
DB_USER=sbtest
DB_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
PORT[direct]=$(free_port)
PASSWORD[direct]=$DB_PASSWORD
USER_OF[direct]=$DB_USER
for g in gateway guard mask audit gateway-all; do
    PORT[$g]=$(free_port)
    PORT[admin-$g]=$(free_port)
    PASSWORD[$g]=$TOKEN
    USER_OF[$g]=bench # the token is the credential; the name is only recorded
done

# The buffer pool holds all the data (about 250 bytes a row with its index) with room to spare.
POOL_MB=$(( TABLES * TABLE_SIZE * 400 / 1048576 + 128 ))
mkdir -p "$WORK/data" "$WORK/tmp"
chmod 755 "$WORK"
cat >"$WORK/my.cnf" <<EOF
# Generated by benches/mysql-side-by-side.sh: a throwaway server, nothing durable.
[mysqld]
datadir = "$WORK/data"
socket = "$WORK/mariadbd.sock"
pid-file = "$WORK/mariadbd.pid"
tmpdir = "$WORK/tmp"
log-error = "$WORK/mariadbd.log"
bind-address = 127.0.0.1
port = ${PORT[direct]}
skip-name-resolve
skip-log-bin
character-set-server = utf8mb4
performance-schema = OFF
max-connections = 200
max-allowed-packet = 64M
table-open-cache = 400
innodb-buffer-pool-size = ${POOL_MB}M
innodb-log-file-size = 256M
innodb-flush-log-at-trx-commit = 0
innodb-doublewrite = OFF
innodb-use-native-aio = OFF
innodb-buffer-pool-dump-at-shutdown = OFF
innodb-buffer-pool-load-at-startup = OFF
EOF
[[ $(id -u) == 0 ]] && chown -R mysql: "$WORK/data" "$WORK/tmp" && chown mysql: "$WORK"

log "mariadb-install-db ($WORK/data), MariaDB on 127.0.0.1:${PORT[direct]}"
(cd "$WORK" && LC_ALL=C "${RUN_AS[@]}" "$INSTALL_DB" --defaults-file="$WORK/my.cnf" \
    --auth-root-socket-user="$SOCKET_USER" --skip-test-db --skip-name-resolve) \
    >"$WORK/install-db.log" 2>&1 </dev/null || die "mariadb-install-db failed: $(tail -5 "$WORK/install-db.log")"
(cd "$WORK" && LC_ALL=C exec "${RUN_AS[@]}" "$MARIADBD" --defaults-file="$WORK/my.cnf") \
    >"$WORK/mariadbd.out" 2>&1 </dev/null &
MARIADB_PID=$!
PID_OF[direct]=$MARIADB_PID
for _ in $(seq 600); do
    [[ -S $WORK/mariadbd.sock ]] && port_in_use "${PORT[direct]}" && break
    kill -0 "$MARIADB_PID" 2>/dev/null || die "mariadbd exited during start: $(tail -5 "$WORK/mariadbd.log")"
    sleep 0.05
done
port_in_use "${PORT[direct]}" || die "mariadbd did not listen on port ${PORT[direct]}"
root_sql() { "$MARIADB" --no-defaults --protocol=socket --socket="$WORK/mariadbd.sock" -u"$SOCKET_USER" -N -B -e "$1"; }
root_sql "CREATE DATABASE $DB_NAME;
CREATE USER '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'%';" || die "creating the database and user failed"
SERVER_VERSION=$(root_sql "SELECT version()")

SB_TABLES=(--tables="$TABLES" --table-size="$TABLE_SIZE")
sb_args() { # path -> the connection options of sysbench's MySQL driver
    SB_ARGS=(--db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="${PORT[$1]}" --mysql-user="${USER_OF[$1]}"
        --mysql-password="${PASSWORD[$1]}" --mysql-db="$DB_NAME" --mysql-ssl=off "${SB_TABLES[@]}")
}
client_args() { # path -> options of the mariadb CLI
    CLIENT_ARGS=(--no-defaults --protocol=tcp -h127.0.0.1 -P"${PORT[$1]}" -u"${USER_OF[$1]}" -p"${PASSWORD[$1]}"
        --skip-ssl --default-character-set=utf8mb4 -D"$DB_NAME")
}

log "sysbench oltp_point_select prepare (${TABLES} tables of ${TABLE_SIZE} rows)"
sb_args direct
"$SYSBENCH" oltp_point_select "${SB_ARGS[@]}" --threads="$(( TABLES < 4 ? TABLES : 4 ))" prepare \
    >"$WORK/sysbench-prepare.log" 2>&1 || die "sysbench prepare failed: $(tail -5 "$WORK/sysbench-prepare.log")"

# ---- the gateway ------------------------------------------------------------------------
start_gateway() { # path, extra config
    local name=$1 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/portcullis.toml" <<EOF
# Generated by benches/mysql-side-by-side.sh: one MariaDB target, one static token.
[gateway]
drain_timeout = "3s"

[[identity.tokens]]
name = "bench"
sha256 = "$TOKEN_SHA"
groups = ["bench"]

[[mysql]]
name = "bench"
listen = "127.0.0.1:${PORT[$name]}"
allow_plaintext_tokens_on_loopback = true
[mysql.upstream]
host = "127.0.0.1"
port = ${PORT[direct]}
user = "$DB_USER"
password = "\${SBS_MY_PASSWORD}"
database = "$DB_NAME"
tls = "disable"
$2
EOF
    log "$name ($GATEWAY_BIN) on 127.0.0.1:${PORT[$name]}"
    SBS_MY_PASSWORD=$DB_PASSWORD PORTCULLIS_LOG=$GATEWAY_LOG \
        "$GATEWAY_BIN" run --config "$dir/portcullis.toml" >"$dir/gateway.log" 2>&1 &
    PID_OF[$name]=$!
    GATEWAY_PIDS+=("$!")
    wait_port "${PORT[$name]}" "${PID_OF[$name]}" "$name"
}
# The layers: a guard whose rules do not match sysbench's SELECTs (nor the 1M-row select),
# approvals (for unbounded writes), masking with every detector, and an audit trail.
guard_config() { # path (for its admin port)
    cat <<EOF
[admin]
listen = "127.0.0.1:${PORT[admin-$1]}"

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
name = "no-admin"
statements = ["admin"]
action = "deny"
[[policy.rules]]
name = "no-file-access"
functions = ["load_file"]
action = "deny"

[approvals]
timeout = "2m"
EOF
}
mask_config() {
    cat <<EOF
[masking]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "ipv4", "jwt", "aws_access_key"]
EOF
}
audit_config() {
    cat <<EOF
[audit]
on_failure = "refuse"
signing_key = "$WORK/audit.key"
[[audit.sinks]]
kind = "jsonl"
path = "trail.jsonl"
fsync = "interval"
writer = "$AUDIT_WRITER"
EOF
}
if (( ${#AUDITED[@]} > 0 )); then
    "$GATEWAY_BIN" audit keygen --out "$WORK/audit.key" >/dev/null || die "audit keygen failed"
fi
has_path gateway && start_gateway gateway ""
has_path guard && start_gateway guard "$(guard_config guard)"
has_path mask && start_gateway mask "$(mask_config)"
has_path audit && start_gateway audit "$(audit_config)"
has_path gateway-all && start_gateway gateway-all "$(guard_config gateway-all)
$(mask_config)
$(audit_config)"

# ---- runs -------------------------------------------------------------------------------
# Peak RSS over the whole run, kept across the per-select resets of VmHWM.
declare -A PEAK_KB
note_peak() {
    local pid=${PID_OF[$1]} hwm
    [[ $1 == direct ]] && return
    hwm=$(status_kb "$pid" VmHWM)
    (( ${hwm:-0} > ${PEAK_KB[$1]:-0} )) && PEAK_KB[$1]=$hwm
}

hist_percentile() { # percent, sysbench output with --histogram -> µs
    awk -v q="$1" '
        /^Latency histogram/ { on = 1; next }
        on && /^ *[0-9.]+ +\|/ { v[++k] = $1; c[k] = $NF; total += $NF; next }
        on && k && !/^ *[0-9.]+ +\|/ { on = 0 }
        END {
            if (!total) { print "NA"; exit }
            for (i = 1; i <= k; i++) { s += c[i]; if (s >= total * q / 100) { print v[i] * 1000; exit } }
        }' "$2"
}

run_sysbench() { # workload threads path record(0|1)
    local wl=$1 c=$2 path=$3 rec=$4 out="$WORK/sysbench.out" pid=${PID_OF[$3]}
    local t0=0 t1=0 d0 d1 tps n avg p50 p95 errs client TIMEFORMAT='%U %S'
    (( rec )) && { wait_idle; watch_start; }
    [[ $path != direct ]] && t0=$(cpu_ticks "$pid")
    d0=$(cpu_ticks "$MARIADB_PID")
    sb_args "$path"
    if ! { time "$SYSBENCH" oltp_point_select "${SB_ARGS[@]}" --threads="$c" --time="$DURATION" \
        --report-interval=0 --histogram=on run >"$out" 2>&1; } 2>"$WORK/time.out"; then
        (( rec )) && watch_stop
        log "  $wl via $path FAILED: $(grep -v '^sysbench ' "$out" | grep -v '^$' | tail -3 | tr '\n' ' ')"
        (( rec )) && record tps "$wl" "$path" NA
        return 1
    fi
    d1=$(cpu_ticks "$MARIADB_PID")
    [[ $path != direct ]] && t1=$(cpu_ticks "$pid")
    (( rec )) && watch_stop
    n=$(awk '$1 == "transactions:" { print $2 }' "$out")
    tps=$(awk '$1 == "transactions:" { gsub(/\(/, "", $3); print $3 }' "$out")
    # Latencies in µs: sysbench prints them in ms with two decimals, too coarse here; the
    # average comes from the sum of latencies, percentiles from the histogram (about 2% buckets,
    # values to the µs).
    avg=$(awk -v n="$n" '$1 == "sum:" { if (n > 0) print $2 * 1000 / n }' "$out")
    p50=$(hist_percentile 50 "$out")
    p95=$(hist_percentile 95 "$out")
    errs=$(awk '$1 == "ignored" && $2 == "errors:" { print $3 }' "$out")
    client=$(awk '{ print $1 + $2 }' "$WORK/time.out")
    (( ${errs:-0} > 0 )) && log "  $wl via $path: sysbench ignored $errs errors"
    (( rec )) || return 0
    record tps "$wl" "$path" "${tps:-NA}"
    record avg "$wl" "$path" "${avg:-NA}"
    record p50 "$wl" "$path" "${p50:-NA}"
    record p95 "$wl" "$path" "${p95:-NA}"
    record errors "$wl" "$path" "${errs:-0}"
    record dbcpu "$wl" "$path" "$(per $((d1 - d0)) "$CLK_TCK" "$n" 1e6)"
    record clientcpu "$wl" "$path" "$(per "$client" 1 "$n" 1e6)"
    [[ $path != direct ]] && record cpu "$wl" "$path" "$(per $((t1 - t0)) "$CLK_TCK" "$n" 1e6)"
    note_peak "$path"
    log "  $wl via $path: tps=${tps:-?} lat_avg=$(fmt %.1f "${avg:-NA}")us p50=${p50:-?}us p95=${p95:-?}us${OVERLAP_NOTE:-}"
}

SELECT_SQL="SELECT seq, concat('row-', seq, repeat('x', 20)) FROM seq_1_to_$ROWS"
declare -A OUT_BYTES

run_bulk() { # workload sql path
    local wl=$1 sql=$2 path=$3 pid=${PID_OF[$3]} t0=0 t1=0 s e rss0=0 rss_peak=0 secs
    wait_idle
    watch_start
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
    client_args "$path"
    s=$(date +%s%N)
    if ! "$MARIADB" "${CLIENT_ARGS[@]}" --quick -N -B -e "$sql" >/dev/null 2>"$WORK/mariadb.err"; then
        watch_stop
        log "  $wl via $path FAILED: $(tail -3 "$WORK/mariadb.err" | tr '\n' ' ')"
        record secs "$wl" "$path" NA
        [[ -n $SAMPLER_PID ]] && { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=; }
        return 1
    fi
    e=$(date +%s%N)
    watch_stop
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
        record rsspeak "$wl" "$path" "${rss_peak:-0}"
        record rssgrowth "$wl" "$path" "$(( ${rss_peak:-0} - ${rss0:-0} ))"
        record cpurow "$wl" "$path" "$(per $((t1 - t0)) "$CLK_TCK" "$ROWS" 1e9)"
        note_peak "$path"
    fi
    log "  $wl via $path: ${secs}s${OVERLAP_NOTE:-}"
}

WORKLOADS=(point-select-c1)
(( CLIENTS != 1 )) && WORKLOADS+=("point-select-c$CLIENTS")
SB_WORKLOADS=("${WORKLOADS[@]}")
if [[ ${BULK:-1} == 1 ]]; then
    WORKLOADS+=(select-1m)
    # Output size, measured once directly (what the client receives, as text).
    client_args direct
    OUT_BYTES[select-1m]=$("$MARIADB" "${CLIENT_ARGS[@]}" --quick -N -B -e "$SELECT_SQL" | wc -c)
    (( OUT_BYTES[select-1m] > ROWS )) || die "the 1M-row select returned ${OUT_BYTES[select-1m]} bytes (no SEQUENCE engine?)"
fi

# Every path must work before anything is measured; a short unrecorded run also warms caches.
log "warm-up and check of every path"
for path in "${PATH_LIST[@]}"; do
    client_args "$path"
    "$MARIADB" "${CLIENT_ARGS[@]}" -N -B -e "SELECT 1" >/dev/null 2>"$WORK/mariadb.err" \
        || die "$path does not work: $(tail -3 "$WORK/mariadb.err" | tr '\n' ' ') (see $WORK; PATHS=... skips a path)"
    SAVED=$DURATION
    DURATION=$(( DURATION < 3 ? DURATION : 3 ))
    run_sysbench warmup "$CLIENTS" "$path" 0 \
        || die "$path does not work (see $WORK and its log); PATHS=... skips a path"
    DURATION=$SAVED
done

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
                point-select-c*) run_sysbench "$wl" "${wl##*-c}" "$path" 1 ;;
                select-1m) run_bulk "$wl" "$SELECT_SQL" "$path" ;;
            esac
        done
    done
done
ELAPSED=$(( $(date +%s) - START ))
for path in "${GATEWAYS[@]}"; do note_peak "$path"; done

# The audited gateways stop cleanly (sealing their trails), which are then verified and summed
# up: records, statuses, refusals (and by which rule), masked values, the statements seen.
declare -A TRAIL_NOTE TRAIL_SUMMARY
for path in "${AUDITED[@]}"; do
    kill "${PID_OF[$path]}" 2>/dev/null && wait "${PID_OF[$path]}" 2>/dev/null
    t="$WORK/$path/trail.jsonl"
    if out=$("$GATEWAY_BIN" audit verify "$t" --key "$WORK/audit.key.pub" 2>&1); then
        TRAIL_NOTE[$path]="intact, $(sed -n 's/^intact: [0-9]* file(s), \([0-9]*\) records.*/\1/p' <<<"$out") records, $(( $(stat -c %s "$t") / 1048576 )) MiB"
    else
        TRAIL_NOTE[$path]="NOT INTACT: $(grep 'NOT INTACT' <<<"$out")"
    fi
    TRAIL_SUMMARY[$path]=$(python3 - "$t" <<'PY' 2>&1
import collections, json, sys
C = collections.Counter
types, statuses, verdicts, refused, texts, masked = C(), C(), C(), C(), C(), 0
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    t = r.get("type", "?")
    types[t] += 1
    if t == "command":
        for s in r.get("statements") or []:
            texts[" ".join(str(s.get("text", "?")).split())[:70]] += 1
    elif t == "outcome":
        statuses[r.get("status", "?")] += 1
        for d in r.get("decisions") or []:
            if d.get("verdict") not in (None, "allow"):
                verdicts[f'{d.get("layer")} {d.get("verdict")} "{d.get("rule")}"'] += 1
        if r.get("status") == "refused":
            refused[str((r.get("error") or {}).get("message", "?"))[:100]] += 1
        m = r.get("masking")
        if isinstance(m, dict):
            v = m.get("values")
            masked += sum(v.values()) if isinstance(v, dict) else int(v or 0)
fmt = lambda c, n=None: ", ".join(f"{k} {v}" for k, v in c.most_common(n)) or "none"
print(f"records by type: {fmt(types)}; outcomes by status: {fmt(statuses)};"
      f" decisions other than allow: {fmt(verdicts)}; refusals: {fmt(refused)};"
      f" masked values: {masked}; statements (most frequent): {fmt(C({f'`{k}`': v for k, v in texts.items()}), 6)}")
PY
)
done

# ---- report -----------------------------------------------------------------------------
report() {
    local wl d g a p r rss
    echo "# MySQL side-by-side run ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); MariaDB $SERVER_VERSION; $("$SYSBENCH" --version);" \
        "gateway: $( (( ${#GATEWAYS[@]} > 0 )) && echo "$GATEWAY_BIN" || echo "not run")."
    echo "Settings: DURATION=${DURATION}s ROUNDS=$ROUNDS CLIENTS=$CLIENTS TABLES=$TABLES TABLE_SIZE=$TABLE_SIZE" \
        "(buffer pool ${POOL_MB} MB, innodb_flush_log_at_trx_commit = 0, no binlog)," \
        "paths: ${PATH_LIST[*]}; gateway log level: $GATEWAY_LOG; wall time ${ELAPSED}s." \
        "Values are medians over the rounds; paths alternate within each round."
    if [[ -n $WAIT_RE ]]; then
        echo "Waited ${WAITED}s in all for \`$WAIT_FOR\` to finish before measured runs ($WAIT_TIMEOUTS waits gave up" \
            "after ${WAIT_MAX}s); $OVERLAPS of $MEASURED measured runs overlapped a \`$WAIT_FOR\` process (sampled every second)."
    fi
    echo
    echo "sysbench runs with LIBMYSQL_PLUGINS=mysql_clear_password (libmariadb otherwise races loading that" \
        "plugin when several threads connect through the gateway at once; see the script)."
    echo
    echo "gateway: static tokens only, no policy layer. gateway-all: the same plus [policy] (5 rules:" \
        "no-drop deny, unbounded delete/update approve, analysts read-only, admin deny, load_file deny;" \
        "on_unparsed = deny), [approvals], [masking] with every detector, and [audit] (JSONL sink," \
        "write-ahead, on_failure = refuse, fsync = interval, writer = $AUDIT_WRITER, signed checkpoints)."
    echo
    echo "## sysbench oltp_point_select (TPS; one prepared primary-key SELECT per transaction)"
    echo
    echo "| workload | direct | gateway | gateway-all | gateway/direct | gateway-all/direct | gateway-all/gateway |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for wl in "${SB_WORKLOADS[@]}"; do
        d=$(med tps "$wl" direct); g=$(med tps "$wl" gateway); a=$(med tps "$wl" gateway-all)
        echo "| $wl | $(fmt %.0f "$d") | $(fmt %.0f "$g") | $(fmt %.0f "$a") |" \
            "$(fmt %.3f "$(ratio "$g" "$d")") | $(fmt %.3f "$(ratio "$a" "$d")") | $(fmt %.3f "$(ratio "$a" "$g")") |"
    done
    echo
    echo "## Latency (µs; sysbench: average from its sum of latencies, p50 and p95 from its histogram)"
    echo
    echo "| workload | avg direct | avg gateway | avg gateway-all | p50 direct | p50 gateway | p50 gateway-all | p95 direct | p95 gateway | p95 gateway-all | gateway adds (avg / p50) | gateway-all adds (avg / p50) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for wl in "${SB_WORKLOADS[@]}"; do
        d=$(med avg "$wl" direct); g=$(med avg "$wl" gateway); a=$(med avg "$wl" gateway-all)
        local d50 g50 a50
        d50=$(med p50 "$wl" direct); g50=$(med p50 "$wl" gateway); a50=$(med p50 "$wl" gateway-all)
        echo "| $wl | $(fmt %.1f "$d") | $(fmt %.1f "$g") | $(fmt %.1f "$a") |" \
            "$(fmt %.0f "$d50") | $(fmt %.0f "$g50") | $(fmt %.0f "$a50") |" \
            "$(fmt %.0f "$(med p95 "$wl" direct)") | $(fmt %.0f "$(med p95 "$wl" gateway)") | $(fmt %.0f "$(med p95 "$wl" gateway-all)") |" \
            "$(fmt %.1f "$(diff_ "$g" "$d")") / $(fmt %.0f "$(diff_ "$g50" "$d50")") |" \
            "$(fmt %.1f "$(diff_ "$a" "$d")") / $(fmt %.0f "$(diff_ "$a50" "$d50")") |"
    done
    echo
    echo "## CPU time per transaction (µs)"
    echo
    echo "From /proc/PID/stat (gateway, mariadbd) and bash's \`time\` (sysbench). On $(nproc) cores" \
        "shared by all three, their sum bounds the TPS once the machine is saturated."
    echo
    echo "| workload | path | gateway | mariadbd | sysbench | sum |"
    echo "|---|---|---:|---:|---:|---:|"
    for wl in "${SB_WORKLOADS[@]}"; do
        for p in "${PATH_LIST[@]}"; do
            g=$(med cpu "$wl" "$p"); d=$(med dbcpu "$wl" "$p"); a=$(med clientcpu "$wl" "$p")
            echo "| $wl | $p | $(fmt %.1f "$g") | $(fmt %.1f "$d") | $(fmt %.1f "$a") |" \
                "$(fmt %.1f "$(awk -v g="$g" -v d="$d" -v a="$a" 'BEGIN { if (d == "NA" || a == "NA") print "NA"; else print (g == "NA" ? 0 : g) + d + a }')") |"
        done
    done
    if [[ " ${WORKLOADS[*]} " == *" select-1m "* ]]; then
        echo
        echo "## 1M-row select (mariadb --quick -N -B to /dev/null, $(fmt %.1f "$(awk -v b="${OUT_BYTES[select-1m]}" 'BEGIN { print b / 1e6 }')") MB of output)"
        echo
        echo "| path | seconds | MB/s | vs direct | gateway CPU/row (ns) | RSS growth (KiB) | peak VmHWM during the select (KiB) |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        d=$(med mbps select-1m direct)
        for p in "${PATH_LIST[@]}"; do
            a=$(med mbps select-1m "$p")
            echo "| $p | $(fmt %.2f "$(med secs select-1m "$p")") | $(fmt %.1f "$a") | $(fmt %.3f "$(ratio "$a" "$d")") |" \
                "$(fmt %.0f "$(med cpurow select-1m "$p")") | $(fmt %.0f "$(values rssgrowth select-1m "$p" | sort -n | tail -1)") |" \
                "$(fmt %.0f "$(values rsspeak select-1m "$p" | sort -n | tail -1)") |"
        done
        echo
        echo "RSS growth: the largest over the rounds of (peak RSS during the select − RSS before it)."
    fi
    echo
    local peaks="Peak RSS over the whole run (VmHWM):"
    for p in "${GATEWAYS[@]}"; do peaks+=" $p $(fmt %.0f "${PEAK_KB[$p]:-NA}") KiB;"; done
    (( ${#GATEWAYS[@]} > 0 )) && echo "${peaks%;}."
    for p in "${GATEWAYS[@]}"; do
        echo "Log of $p ($GATEWAY_LOG): $(wc -l <"$WORK/$p/gateway.log") lines, of which" \
            "$(grep -c -E 'WARN|ERROR' "$WORK/$p/gateway.log") WARN/ERROR."
    done
    local errs=0
    for wl in "${SB_WORKLOADS[@]}"; do for p in "${PATH_LIST[@]}"; do
        errs=$(( errs + $(values errors "$wl" "$p" | awk '{ s += $1 } END { print s + 0 }') ))
    done; done
    echo "Errors sysbench ignored over all measured runs: $errs."
    for p in "${AUDITED[@]}"; do
        echo "Audit trail of $p after the run: ${TRAIL_NOTE[$p]}."
        echo "Its contents: ${TRAIL_SUMMARY[$p]}."
    done
    if (( ${#LAYER_PATHS[@]} > 0 )); then
        echo
        echo "## Layer by layer (the gateway with one layer on, against the plain gateway)"
        echo
        echo "guard: [policy] and [approvals] (with [admin]); mask: [masking]; audit: [audit]; gateway-all: all of them."
        echo
        echo "| workload | path | TPS | vs gateway | vs direct | gateway CPU/tx (µs) | added CPU/tx (µs) | added avg latency (µs) |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        for wl in "${SB_WORKLOADS[@]}"; do
            g=$(med tps "$wl" gateway); d=$(med tps "$wl" direct)
            for p in gateway "${LAYER_PATHS[@]}" gateway-all; do
                has_path "$p" || continue
                a=$(med tps "$wl" "$p")
                echo "| $wl | $p | $(fmt %.0f "$a") | $(fmt %.3f "$(ratio "$a" "$g")") | $(fmt %.3f "$(ratio "$a" "$d")") |" \
                    "$(fmt %.1f "$(med cpu "$wl" "$p")") | $(fmt %.1f "$(diff_ "$(med cpu "$wl" "$p")" "$(med cpu "$wl" gateway)")") |" \
                    "$(fmt %.1f "$(diff_ "$(med avg "$wl" "$p")" "$(med avg "$wl" gateway)")") |"
            done
        done
    fi
    echo
    echo "## Targets"
    echo
    # Ratios truncated, not rounded, so that 0.7496 does not show as a "0.750" that is not met.
    trunc3() { awk -v v="$1" 'BEGIN { if (v == "NA" || v == "") print "NA"; else printf "%.3f", int(v * 1000) / 1000 }'; }
    verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "NA" || v == "") print "n/a"; else if ((op == ">=" && v >= t) || (op == "<=" && v <= t) || (op == "<" && v < t)) print "met"; else print "NOT met" }'; }
    echo "| target | measured | |"
    echo "|---|---:|---|"
    for wl in "${SB_WORKLOADS[@]}"; do
        d=$(med tps "$wl" direct)
        r=$(ratio "$(med tps "$wl" gateway)" "$d")
        echo "| gateway ≥ 0.75× direct TPS, oltp_point_select --threads=${wl##*-c} | $(trunc3 "$r")× | $(verdict "$r" '>=' 0.75) |"
        r=$(ratio "$(med tps "$wl" gateway-all)" "$d")
        echo "| gateway-all ≥ 0.65× direct TPS, oltp_point_select --threads=${wl##*-c} | $(trunc3 "$r")× | $(verdict "$r" '>=' 0.65) |"
    done
    if [[ " ${WORKLOADS[*]} " == *" select-1m "* ]]; then
        for p in "${GATEWAYS[@]}"; do
            r=$(ratio "$(med mbps select-1m "$p")" "$(med mbps select-1m direct)")
            rss=$(values rssgrowth select-1m "$p" | sort -n | tail -1)
            echo "| 1M-row select via $p ≥ 0.95× direct throughput | $(trunc3 "$r")× | $(verdict "$r" '>=' 0.95) |"
            echo "| 1M-row select via $p: RSS growth < 16 MB | $(fmt %.0f "${rss:-NA}") KiB | $(verdict "${rss:-NA}" '<' 16384) |"
        done
    fi
}

report | tee "$REPORT"
log "report written to $REPORT"

#!/usr/bin/env bash
# Side-by-side load harness for the HTTP data plane: the same HTTP API (nginx serving static
# JSON files) reached directly, through the Portcullis gateway with no policy layers
# (`gateway`: an [[http]] listener, static tokens only), and through the same gateway with
# every layer on (`gateway-all`: [policy] with path/method rules none of which blocks the GETs,
# [approvals] with [admin], [masking] with every detector and a [[masking.json]] rule, and
# [audit] with a JSONL sink — write-ahead, on_failure = "refuse", fsync = "interval", signed
# checkpoints), measured alternately in one run. The HTTP counterpart of side-by-side.sh and
# mysql-side-by-side.sh.
#
# Run with:   bash benches/http-side-by-side.sh [REPORT.md]   (default benches/http-last-run.md)
#
# Needs wrk (apt-get install -y wrk), nginx (apt-get install -y nginx-light, or nginx), curl
# and python3. It writes two files into a temp dir — small.json (about 500 bytes of nested
# JSON with planted personal values: e-mails, a card, an SSN) and big.json (a JSON array of
# BIG_MB MB of objects, each with an e-mail, a name and filler text) — starts a throwaway
# nginx on a free port serving them (its own config, pid and logs in the temp dir, `daemon
# off`, access log off), starts one gateway per gateway path in front of it, then for each of
# ROUNDS rounds runs every workload once per path, rotating the order of the paths each round:
#
#   get-c1, get-c$CONNECTIONS
#                 wrk -t1 -c1 | -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency
#                     -H "Authorization: Bearer $TOKEN" .../small.json
#                 (every path gets the header; nginx ignores it, the gateway checks and strips it)
#   stream-big    curl -s -o /dev/null -w '%{http_code} %{time_total} ...' .../big.json
#                 (streamed; gateway-all masks every e-mail in it as it streams)
#
# and prints medians per workload and path: requests/s, ratios, wrk's average, p50 and p99
# latency and what the gateway adds to them, CPU time per request of the gateway, of nginx and
# of wrk (from /proc/PID/stat and bash's `time`), the stream's seconds, MB/s (of big.json's
# size), time to first byte, the gateway's CPU per MB and its RSS (peak, and growth during the
# stream). Before measuring, it checks every path: status 200, the bearer token stripped and
# the upstream key injected (from a header log of nginx on a /check/ location), small.json and
# big.json masked through gateway-all (valid JSON, no clear planted value, no clear e-mail).
# Everything is cleaned up on exit.
#
# Knobs (environment): DURATION (10 s per wrk run), ROUNDS (3), CONNECTIONS (8), THREADS (2 wrk
# threads for the multi-connection run), PATHS ("direct gateway gateway-all": drop one to skip
# it), GATEWAY_BIN (target/release/portcullis, built when missing; BUILD=1 runs `cargo build
# --release -p portcullis-gateway` first anyway, a no-op when it is fresh), GATEWAY_LOG
# (PORTCULLIS_LOG for the gateways, default info), AUDIT_WRITER (the JSONL sink's `writer`:
# thread, the default, or inline), NGINX_BIN (nginx on PATH or /usr/sbin/nginx), NGINX_WORKERS
# (1), KEEP_TMP=1 (keep the temp dir), BULK=0 (skip the big.json stream), BIG_MB (100),
# WAIT_FOR (process names, default "rustc": before each measured run wait until none runs, at
# most WAIT_MAX seconds, default 1200, and count the runs that overlapped one anyway; WAIT_FOR=
# turns it off), WAIT_BUSY (25: before each measured run also wait, within the same WAIT_MAX,
# until at most that % of all cores is busy over a second — a test or benchmark binary is not
# rustc; 0 turns it off), RETRY_BUSY (10: a wrk run during which other processes used more
# than that % of the machine is discarded and run again, at most RETRIES times, default 2;
# 0 turns it off). The report gives the CPU other processes used during the wrk runs.
#
# Expected output: a progress line per run on stderr, then a markdown report on stdout, also
# written to the report file.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${1:-$ROOT/benches/http-last-run.md}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=${THREADS:-2}
PATHS=${PATHS:-direct gateway gateway-all}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/portcullis}
GATEWAY_LOG=${GATEWAY_LOG:-info}
AUDIT_WRITER=${AUDIT_WRITER:-thread}
NGINX_WORKERS=${NGINX_WORKERS:-1}
BIG_MB=${BIG_MB:-100}
WAIT_FOR=${WAIT_FOR-rustc}
WAIT_MAX=${WAIT_MAX:-1200}
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[http-side-by-side] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

read -r -a PATH_LIST <<<"$PATHS"
has_path() { [[ " ${PATH_LIST[*]} " == *" $1 "* ]]; }
GATEWAYS=()
for p in gateway gateway-all; do has_path "$p" && GATEWAYS+=("$p"); done
(( ${#PATH_LIST[@]} > 0 )) || die "PATHS is empty"
for p in "${PATH_LIST[@]}"; do
    case $p in direct | gateway | gateway-all) ;; *) die "unknown path '$p' in PATHS" ;; esac
done
[[ $AUDIT_WRITER == thread || $AUDIT_WRITER == inline ]] || die "AUDIT_WRITER must be thread or inline"
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS ($CONNECTIONS) must be at least THREADS ($THREADS) (wrk needs a connection per thread)"
[[ $BIG_MB =~ ^[0-9]+$ ]] && (( BIG_MB > 0 )) || die "BIG_MB must be a positive whole number"

# ---- tools ------------------------------------------------------------------------------
WRK=$(command -v wrk) || die "wrk not found: install it with  apt-get install -y wrk  (Debian package wrk)"
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x $NGINX ]] || die "nginx not found at '$NGINX': install it with  apt-get install -y nginx-light  (or nginx)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
command -v python3 >/dev/null || die "python3 not found (apt-get install -y python3)"
if (( ${#GATEWAYS[@]} > 0 )) && [[ ! -x $GATEWAY_BIN || ${BUILD:-0} == 1 ]]; then
    log "building the gateway (cargo build --release -p portcullis-gateway)"
    (cd "$ROOT" && cargo build --release -p portcullis-gateway) >&2 \
        || die "the gateway did not build; PATHS=direct runs without it"
    [[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN"
fi

# ---- cleanup ----------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/portcullis-http-sbs.XXXXXX)
NGINX_PID=
GATEWAY_PIDS=()
SAMPLER_PID=
WATCH_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    [[ -n $WATCH_PID ]] && kill "$WATCH_PID" 2>/dev/null
    for pid in "${GATEWAY_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    # nginx's master stops its workers on SIGQUIT (graceful) or SIGTERM (fast).
    [[ -n $NGINX_PID ]] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
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
cpu_ticks() { # utime + stime of whole processes (all their threads), summed
    local stat sum=0 pid
    for pid in "$@"; do
        { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
        stat=${stat##*")" }
        # shellcheck disable=SC2086
        set -- $stat
        sum=$(( sum + ${12} + ${13} ))
    done
    echo "$sum"
}
sys_busy() { # ticks all CPUs spent busy since boot (user nice system irq softirq steal)
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
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
to_us() { # a wrk duration (123.45us, 1.20ms, 2.00s, 1.00m) -> µs
    awk -v t="$1" 'BEGIN {
        if (t == "") { print "NA"; exit }
        v = t + 0; u = t; sub(/^[0-9.]+/, "", u)
        if (u == "us") print v; else if (u == "ms") print v * 1e3; else if (u == "s") print v * 1e6;
        else if (u == "m") print v * 6e7; else if (u == "h") print v * 3.6e9; else print "NA" }'
}

declare -A PORT PID_OF
declare -A RESULTS # "$metric|$workload|$path" -> space-separated values, one per round
record() { RESULTS["$1|$2|$3"]+="$4 "; }
values() { tr ' ' '\n' <<<"${RESULTS["$1|$2|$3"]:-}" | grep -v '^$' | grep -v '^NA$'; }
med() { values "$@" | median; }
total() { values "$@" | awk '{ s += $1 } END { print s + 0 }'; }

# Another workload on the machine (a compiler, a test or benchmark binary) skews every number:
# before each measured run, wait until none of the WAIT_FOR processes runs and the rest of the
# machine is quiet (at most WAIT_BUSY % of all cores busy over a second), and watch for
# WAIT_FOR processes during the run.
WAIT_RE=${WAIT_FOR// /|}
WAIT_BUSY=${WAIT_BUSY:-25}
RETRY_BUSY=${RETRY_BUSY:-10}
RETRIES=${RETRIES:-2}
WAITED=0 OVERLAPS=0 MEASURED=0 WAIT_TIMEOUTS=0
machine_busy() { # % of all cores busy over about a second
    local b0 b1 n0 n1
    b0=$(sys_busy); n0=$(date +%s%N)
    sleep 1
    b1=$(sys_busy); n1=$(date +%s%N)
    awk -v b=$((b1 - b0)) -v hz="$CLK_TCK" -v ns=$((n1 - n0)) -v cores="$(nproc)" \
        'BEGIN { printf "%.0f", b / hz / (ns / 1e9 * cores) * 100 }'
}
wait_idle() {
    [[ -n $WAIT_RE ]] || (( WAIT_BUSY > 0 )) || return 0
    local waited=0 why busy said= since
    since=$(date +%s)
    while :; do
        why=
        if [[ -n $WAIT_RE ]] && pgrep -x "$WAIT_RE" >/dev/null; then
            why="$WAIT_FOR to finish"
        elif (( WAIT_BUSY > 0 )); then
            busy=$(machine_busy)
            (( busy > WAIT_BUSY )) && why="the machine to quieten (${busy}% busy: $(top -b -n1 -w 256 | awk 'NR > 7 && $9 + 0 >= 10 { printf "%s%s %s%%", n++ ? ", " : "", $12, $9 }' | head -c 120))"
        fi
        [[ -z $why ]] && break
        if (( waited >= WAIT_MAX )); then
            log "  still waiting for $why after ${WAIT_MAX}s: going ahead"
            (( WAIT_TIMEOUTS++ ))
            break
        fi
        [[ $said == "${why%% (*}" ]] || { log "  waiting for $why"; said=${why%% (*}; }
        sleep 3
        waited=$(( $(date +%s) - since ))
    done
    (( WAITED += $(date +%s) - since ))
}
watch_start() {
    (( MEASURED++ ))
    [[ -n $WAIT_RE ]] || return 0
    : >"$WORK/overlap"
    (while :; do pgrep -x "$WAIT_RE" >/dev/null && echo 1 >>"$WORK/overlap"; sleep 1; done) &
    WATCH_PID=$!
}
watch_stop() { # sets OVERLAP_NOTE to "" or " (overlapped WAIT_FOR)"
    OVERLAP_NOTE=
    [[ -n $WATCH_PID ]] || return 0
    kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=
    if [[ -s $WORK/overlap ]]; then (( OVERLAPS++ )); OVERLAP_NOTE=" (overlapped $WAIT_FOR)"; fi
}

# ---- the API's files --------------------------------------------------------------------
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
UPSTREAM_KEY=bench-upstream-key-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')
PORT[direct]=$(free_port)
for g in gateway gateway-all; do
    PORT[$g]=$(free_port)
    PORT[admin-$g]=$(free_port)
done

mkdir -p "$WORK/www" "$WORK/nginx/tmp"
chmod 755 "$WORK" "$WORK/www" # nginx's workers drop to `nobody` when it runs as root
PLANTED_EMAIL=jane.doe@example.com
PLANTED_EMAIL2=ops-team@corp.example.org
PLANTED_CARD="4242 4242 4242 4242"
PLANTED_SSN=123-45-6789
cat >"$WORK/www/small.json" <<EOF
{"id": 1042, "status": "active", "customer": {"name": "Jane Doe", "email": "$PLANTED_EMAIL",
 "ssn": "$PLANTED_SSN", "address": {"street": "1 Main St", "city": "Springfield", "zip": "01101"}},
 "payment": {"card": "$PLANTED_CARD", "expires": "12/29", "note": "charged 19.99 USD"},
 "contacts": [{"kind": "support", "email": "$PLANTED_EMAIL2"}, {"kind": "fax", "value": "n/a"}],
 "tags": ["gold", "newsletter", "2fa"], "created": "2024-03-01T10:00:00Z",
 "order": "order 4242 4242 4242 4241 is not a card", "score": 0.93, "flags": {"beta": true}}
EOF
SMALL_BYTES=$(stat -c %s "$WORK/www/small.json")
BIG_BYTES=0
BIG_ITEMS=0
if [[ ${BULK:-1} == 1 ]]; then
    log "generating big.json ($BIG_MB MB)"
    BIG_ITEMS=$(python3 - "$WORK/www/big.json" "$(( BIG_MB * 1000000 ))" <<'PY'
import sys
path, target = sys.argv[1], int(sys.argv[2])
filler = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud")
size, i = 1, 0
with open(path, "w", encoding="ascii") as f:
    f.write("[")
    batch = []
    while size < target:
        item = '%s{"id":%d,"name":"User %d","email":"user%d@example.com","text":"%s"}\n' % (
            "," if i else "", i, i, i, filler)
        batch.append(item)
        size += len(item)
        i += 1
        if len(batch) == 10000:
            f.write("".join(batch))
            batch = []
    f.write("".join(batch) + "]\n")
print(i)
PY
) || die "generating big.json failed"
    BIG_BYTES=$(stat -c %s "$WORK/www/big.json")
fi

# ---- nginx ------------------------------------------------------------------------------
cat >"$WORK/nginx/nginx.conf" <<EOF
# Generated by benches/http-side-by-side.sh: static JSON files, nothing logged on the hot path.
daemon off;
worker_processes $NGINX_WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    types { application/json json; }
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    log_format hdrs '\$http_authorization|\$http_x_api_key';
    server {
        listen 127.0.0.1:${PORT[direct]};
        root $WORK/www;
        # The same files, with the headers that reached nginx logged: the checks read them.
        location /check/ {
            alias $WORK/www/;
            access_log $WORK/nginx/headers.log hdrs;
        }
    }
}
EOF
log "nginx ($("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $NGINX_WORKERS worker) on 127.0.0.1:${PORT[direct]}"
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
    >"$WORK/nginx/nginx.out" 2>&1 </dev/null &
NGINX_PID=$!
PID_OF[direct]=$NGINX_PID
wait_port "${PORT[direct]}" "$NGINX_PID" nginx
NGINX_PIDS=("$NGINX_PID")
for _ in $(seq 100); do
    mapfile -t kids < <(pgrep -P "$NGINX_PID")
    (( ${#kids[@]} >= NGINX_WORKERS )) && break
    sleep 0.05
done
NGINX_PIDS+=("${kids[@]}")

# ---- the gateway ------------------------------------------------------------------------
start_gateway() { # path, extra config
    local name=$1 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/portcullis.toml" <<EOF
# Generated by benches/http-side-by-side.sh: one HTTP API, one static token.
[gateway]
drain_timeout = "3s"

[[identity.tokens]]
name = "bench"
sha256 = "$TOKEN_SHA"
groups = ["bench"]

[[http]]
name = "api"
listen = "127.0.0.1:${PORT[$name]}"
allow_plaintext_tokens_on_loopback = true
[http.upstream]
url = "http://127.0.0.1:${PORT[direct]}"
headers = { "x-api-key" = "\${SBS_UPSTREAM_KEY}" }
$2
EOF
    local out
    out=$(SBS_UPSTREAM_KEY=$UPSTREAM_KEY "$GATEWAY_BIN" check --config "$dir/portcullis.toml" 2>&1) \
        || die "$name: portcullis check failed: $out"
    log "$name ($GATEWAY_BIN) on 127.0.0.1:${PORT[$name]}"
    SBS_UPSTREAM_KEY=$UPSTREAM_KEY PORTCULLIS_LOG=$GATEWAY_LOG \
        "$GATEWAY_BIN" run --config "$dir/portcullis.toml" >"$dir/gateway.log" 2>&1 </dev/null &
    PID_OF[$name]=$!
    GATEWAY_PIDS+=("$!")
    wait_port "${PORT[$name]}" "${PID_OF[$name]}" "$name"
}
# The layers: rules on paths and methods that do not match the benchmark's GETs, approvals
# (for writes under /admin), masking with every detector and a JSON path rule, an audit trail.
all_config() { # path (for its admin port)
    cat <<EOF
[admin]
listen = "127.0.0.1:${PORT[admin-$1]}"

[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "no-index-delete"
statements = ["delete"]
paths = ["/v1/indices/*"]
action = "deny"
message = "indices are deleted by the platform team"
[[policy.rules]]
name = "admin-approval"
statements = ["post", "put", "patch", "delete"]
paths = ["/admin/**"]
action = "approve"
approvers = ["ops"]
[[policy.rules]]
name = "readers-read-only"
groups = ["readers"]
statements = ["post", "put", "patch", "delete"]
action = "deny"
[[policy.rules]]
name = "no-internal"
paths = ["/internal/**", "/.git/**"]
action = "deny"

[approvals]
timeout = "2m"

[masking]
detectors = ["email", "credit_card", "iban", "us_ssn", "phone", "ipv4", "ipv6", "jwt", "aws_access_key", "aws_secret", "private_key", "api_token"]
[[masking.json]]
path = "\$..ssn"
strategy = "redact"

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
if has_path gateway-all; then
    "$GATEWAY_BIN" audit keygen --out "$WORK/audit.key" >/dev/null || die "audit keygen failed"
    # The static token's hash as the gateway computes it must be the one in the configs.
    [[ $(printf %s "$TOKEN" | "$GATEWAY_BIN" token hash 2>/dev/null | tr -d '[:space:]') == "$TOKEN_SHA" ]] \
        || log "warning: 'portcullis token hash' does not print sha256sum's hash of the token"
fi
has_path gateway && start_gateway gateway ""
has_path gateway-all && start_gateway gateway-all "$(all_config gateway-all)"

# ---- runs -------------------------------------------------------------------------------
url() { echo "http://127.0.0.1:${PORT[$1]}/$2"; }
# Peak RSS over the whole run, kept across the per-stream resets of VmHWM.
declare -A PEAK_KB
note_peak() {
    local pid=${PID_OF[$1]} hwm
    [[ $1 == direct ]] && return
    hwm=$(status_kb "$pid" VmHWM)
    (( ${hwm:-0} > ${PEAK_KB[$1]:-0} )) && PEAK_KB[$1]=$hwm
}

# A measured wrk run during which other processes used more than RETRY_BUSY % of the machine
# is discarded and run again (after waiting for quiet), at most RETRIES times.
DISCARDED=0
run_wrk() { # workload connections path record(0|1)
    local tries=0 rc
    while :; do
        RETRY_OK=$(( tries < RETRIES ))
        run_wrk_once "$@"; rc=$?
        (( rc == 2 )) || return "$rc"
        (( tries++ ))
    done
}
run_wrk_once() { # workload connections path record(0|1); 2 = discarded, run it again
    local wl=$1 c=$2 path=$3 rec=$4 out="$WORK/wrk.out" pid=${PID_OF[$3]}
    local t0=0 t1=0 d0 d1 b0 b1 s0 s1 other rps n avg p50 p99 non2xx sockerr client TIMEFORMAT='%U %S'
    local t=$(( c == 1 ? 1 : THREADS ))
    (( rec )) && { wait_idle; watch_start; }
    [[ $path != direct ]] && t0=$(cpu_ticks "$pid")
    d0=$(cpu_ticks "${NGINX_PIDS[@]}")
    b0=$(sys_busy); s0=$(date +%s%N)
    if ! { time "$WRK" -t"$t" -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" \
        "$(url "$path" small.json)" >"$out" 2>&1; } 2>"$WORK/time.out"; then
        (( rec )) && watch_stop
        log "  $wl via $path FAILED: $(tail -3 "$out" | tr '\n' ' ')"
        (( rec )) && record rps "$wl" "$path" NA
        return 1
    fi
    b1=$(sys_busy); s1=$(date +%s%N)
    d1=$(cpu_ticks "${NGINX_PIDS[@]}")
    [[ $path != direct ]] && t1=$(cpu_ticks "$pid")
    (( rec )) && watch_stop
    n=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$out")
    rps=$(awk '$1 == "Requests/sec:" { print $2 }' "$out")
    avg=$(to_us "$(awk '$1 == "Latency" && NF >= 4 { print $2; exit }' "$out")")
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    non2xx=$(awk '/^ *Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk '/^ *Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    client=$(awk '{ print $1 + $2 }' "$WORK/time.out")
    # What the rest of the machine used meanwhile: all CPUs' busy time less the gateway's,
    # nginx's and wrk's, as a share of every core over the run's wall time.
    other=$(awk -v b=$((b1 - b0)) -v g=$((t1 - t0)) -v d=$((d1 - d0)) -v w="$client" -v hz="$CLK_TCK" \
        -v ns=$((s1 - s0)) -v cores="$(nproc)" 'BEGIN { v = (b - g - d - w * hz) / hz / (ns / 1e9 * cores) * 100; print (v < 0 ? 0 : v) }')
    if [[ -z $n || -z $rps || $n == 0 ]]; then
        log "  $wl via $path FAILED: no requests (wrk said: $(tail -3 "$out" | tr '\n' ' '))"
        (( rec )) && record rps "$wl" "$path" NA
        return 1
    fi
    (( ${non2xx:-0} > 0 )) && log "  $wl via $path: ${non2xx} responses not 2xx/3xx"
    (( ${sockerr:-0} > 0 )) && log "  $wl via $path: ${sockerr} socket errors ($(grep 'Socket errors' "$out" | sed 's/^ *//'))"
    (( rec )) || { [[ ${non2xx:-0} == 0 ]]; return; }
    if (( RETRY_OK )) && awk -v o="$other" -v m="$RETRY_BUSY" 'BEGIN { exit !(m > 0 && o > m) }'; then
        log "  $wl via $path: discarded (other processes used $(fmt %.0f "$other")% of the machine${OVERLAP_NOTE:-}); again"
        (( DISCARDED++ )); (( MEASURED-- ))
        [[ -n ${OVERLAP_NOTE:-} ]] && (( OVERLAPS-- ))
        return 2
    fi
    record rps "$wl" "$path" "$rps"
    record requests "$wl" "$path" "$n"
    record avg "$wl" "$path" "${avg:-NA}"
    record p50 "$wl" "$path" "${p50:-NA}"
    record p99 "$wl" "$path" "${p99:-NA}"
    record non2xx "$wl" "$path" "${non2xx:-0}"
    record sockerr "$wl" "$path" "${sockerr:-0}"
    record upcpu "$wl" "$path" "$(per $((d1 - d0)) "$CLK_TCK" "$n" 1e6)"
    record clientcpu "$wl" "$path" "$(per "$client" 1 "$n" 1e6)"
    record othercpu all all "$other"
    [[ $path != direct ]] && record cpu "$wl" "$path" "$(per $((t1 - t0)) "$CLK_TCK" "$n" 1e6)"
    note_peak "$path"
    log "  $wl via $path: rps=$rps lat_avg=$(fmt %.1f "${avg:-NA}")us p50=$(fmt %.1f "${p50:-NA}")us p99=$(fmt %.1f "${p99:-NA}")us${non2xx:+ non-2xx=$non2xx} other-cpu=$(fmt %.0f "$other")%${OVERLAP_NOTE:-}"
}

run_stream() { # workload path
    local wl=$1 path=$2 pid=${PID_OF[$2]} t0=0 t1=0 rss0=0 rss_peak=0 out code secs ttfb size
    wait_idle
    watch_start
    if [[ $path != direct ]]; then
        note_peak "$path"
        rss0=$(status_kb "$pid" VmRSS)
        # Reset VmHWM to the current RSS so that afterwards it is this stream's peak; where
        # that is not allowed, sample VmRSS instead.
        if ! echo 5 >"/proc/$pid/clear_refs" 2>/dev/null; then
            (while :; do status_kb "$pid" VmRSS; sleep 0.02; done >"$WORK/rss.samples") &
            SAMPLER_PID=$!
        fi
        t0=$(cpu_ticks "$pid")
    fi
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total} %{time_starttransfer} %{size_download}' \
        -H "Authorization: Bearer $TOKEN" "$(url "$path" big.json)" 2>"$WORK/curl.err")
    watch_stop
    [[ $path != direct ]] && t1=$(cpu_ticks "$pid")
    if [[ -n $SAMPLER_PID ]]; then
        kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=
        rss_peak=$(sort -n "$WORK/rss.samples" | tail -1)
    elif [[ $path != direct ]]; then
        rss_peak=$(status_kb "$pid" VmHWM)
    fi
    read -r code secs ttfb size <<<"$out"
    record size "$wl" "$path" "${size:-0}"
    if [[ $code != 200 ]]; then
        log "  $wl via $path FAILED: HTTP ${code:-?} after ${secs:-?}s, ${size:-?} bytes $(tr '\n' ' ' <"$WORK/curl.err")"
        record secs "$wl" "$path" NA
        record failures "$wl" "$path" 1
        return 1
    fi
    (( size < BIG_BYTES / 2 )) && log "  $wl via $path: only $size bytes of $BIG_BYTES"
    record secs "$wl" "$path" "$secs"
    record ttfb "$wl" "$path" "$(awk -v t="$ttfb" 'BEGIN { print t * 1e3 }')"
    record mbps "$wl" "$path" "$(awk -v b="$BIG_BYTES" -v t="$secs" 'BEGIN { print b / t / 1e6 }')"
    if [[ $path != direct ]]; then
        record cpusecs "$wl" "$path" "$(per $((t1 - t0)) "$CLK_TCK" 1 1)"
        record cpumb "$wl" "$path" "$(per $((t1 - t0)) "$CLK_TCK" "$(awk -v b="$BIG_BYTES" 'BEGIN { print b / 1e6 }')" 1e3)"
        record rsspeak "$wl" "$path" "${rss_peak:-0}"
        record rssgrowth "$wl" "$path" "$(( ${rss_peak:-0} - ${rss0:-0} ))"
        note_peak "$path"
    fi
    log "  $wl via $path: ${secs}s $(fmt %.1f "$(awk -v b="$BIG_BYTES" -v t="$secs" 'BEGIN { print b / t / 1e6 }')") MB/s${OVERLAP_NOTE:-}"
}

# ---- checks -----------------------------------------------------------------------------
# Every path must work, and do what it says, before anything is measured.
declare -A CHECK
log "checks and warm-up of every path"
last_headers() { tail -1 "$WORK/nginx/headers.log" 2>/dev/null; }
for path in "${PATH_LIST[@]}"; do
    body=$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" "$(url "$path" check/small.json)")
    code=${body##*$'\n'}; body=${body%$'\n'*}
    [[ $code == 200 ]] || die "$path: GET /check/small.json answered $code: $body (see $WORK; PATHS=... skips a path)"
    seen=$(last_headers)
    clear=0
    for v in "$PLANTED_EMAIL" "$PLANTED_EMAIL2" "$PLANTED_CARD" "$PLANTED_SSN"; do [[ $body == *"$v"* ]] && (( clear++ )); done
    python3 -c 'import json,sys; json.loads(sys.stdin.read())' <<<"$body" || die "$path: small.json is not JSON: $body"
    case $path in
        direct)
            [[ $seen == "Bearer $TOKEN|-" ]] || die "direct: nginx saw '$seen'"
            (( clear == 4 )) || die "direct: small.json lacks its planted values"
            CHECK[$path]="200, JSON, the 4 planted values in clear"
            ;;
        gateway)
            [[ $seen == "-|$UPSTREAM_KEY" ]] || die "gateway: nginx saw authorization|x-api-key = '$seen'"
            (( clear == 4 )) || die "gateway: small.json lacks its planted values (masked without [masking]?)"
            CHECK[$path]="200, JSON, bearer token stripped and x-api-key injected (as nginx saw them), the 4 planted values in clear"
            ;;
        gateway-all)
            [[ $seen == "-|$UPSTREAM_KEY" ]] || die "gateway-all: nginx saw authorization|x-api-key = '$seen'"
            (( clear == 0 )) || die "gateway-all: $clear planted values in clear: $body"
            [[ $body == *"4242 4242 4242 4241"* ]] || log "  gateway-all: the near-miss card number was masked too"
            CHECK[$path]="200, JSON, bearer token stripped and x-api-key injected, none of the 4 planted values in clear (ssn: $(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read())["customer"]["ssn"]))' <<<"$body"), email: $(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read())["customer"]["email"]))' <<<"$body"))"
            ;;
    esac
    # No token, a wrong token: refused by the gateway.
    if [[ $path != direct ]]; then
        c1=$(curl -s -o /dev/null -w '%{http_code}' "$(url "$path" small.json)")
        c2=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer not-$TOKEN" "$(url "$path" small.json)")
        CHECK[$path]+="; without a token $c1, with a wrong token $c2"
    fi
    if has_path gateway-all && [[ $path == gateway-all ]]; then
        # A rule refuses; nothing else here should.
        c3=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "Authorization: Bearer $TOKEN" "$(url "$path" v1/indices/logs)")
        CHECK[$path]+="; DELETE /v1/indices/logs (rule no-index-delete) $c3"
    fi
    if [[ ${BULK:-1} == 1 ]]; then
        out=$(curl -s -o "$WORK/big.out" -w '%{http_code} %{size_download}' -H "Authorization: Bearer $TOKEN" "$(url "$path" big.json)")
        [[ ${out%% *} == 200 ]] || die "$path: GET /big.json answered $out"
        res=$(python3 - "$WORK/big.out" <<'PY'
import json, re, sys
data = open(sys.argv[1], "rb").read()
items = json.loads(data)
clear = len(re.findall(rb'"user[0-9]+@example\.com"', data))
print(len(items), clear, len(data))
PY
) || die "$path: big.json as received is not JSON"
        read -r items clear size <<<"$res"
        (( items == BIG_ITEMS )) || die "$path: big.json has $items objects, not $BIG_ITEMS"
        if [[ $path == gateway-all ]]; then
            (( clear == 0 )) || die "gateway-all: $clear e-mails in clear in big.json"
            sample=$(head -c 300 "$WORK/big.out" | grep -o '"email":"[^"]*"' | head -1)
        else
            (( clear == items )) || die "$path: big.json has $clear of $items e-mails in clear"
            sample=
        fi
        CHECK[$path]+="; big.json: 200, valid JSON, $items objects, $clear e-mails in clear, $size bytes${sample:+ (first: \`$sample\`)}"
        rm -f "$WORK/big.out"
    fi
    SAVED=$DURATION
    DURATION=$(( DURATION < 3 ? DURATION : 3 ))
    run_wrk warmup "$CONNECTIONS" "$path" 0 \
        || die "$path does not work (see $WORK and its log); PATHS=... skips a path"
    DURATION=$SAVED
    log "  $path: ${CHECK[$path]}"
done

WORKLOADS=(get-c1)
(( CONNECTIONS != 1 )) && WORKLOADS+=("get-c$CONNECTIONS")
WRK_WORKLOADS=("${WORKLOADS[@]}")
[[ ${BULK:-1} == 1 ]] && WORKLOADS+=(stream-big)

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
                get-c*) run_wrk "$wl" "${wl##*-c}" "$path" 1 ;;
                stream-big) run_stream "$wl" "$path" ;;
            esac
        done
    done
done
ELAPSED=$(( $(date +%s) - START ))
for path in "${GATEWAYS[@]}"; do note_peak "$path"; done

# The audited gateway stops cleanly (sealing its trail), which is then verified and summed
# up: records, statuses, refusals (and by which rule), masked values, the requests seen.
TRAIL_NOTE= TRAIL_SUMMARY=
if has_path gateway-all; then
    kill "${PID_OF[gateway-all]}" 2>/dev/null && wait "${PID_OF[gateway-all]}" 2>/dev/null
    t="$WORK/gateway-all/trail.jsonl"
    if out=$("$GATEWAY_BIN" audit verify "$t" --key "$WORK/audit.key.pub" 2>&1); then
        TRAIL_NOTE="intact, $(sed -n 's/^intact: [0-9]* file(s), \([0-9]*\) records.*/\1/p' <<<"$out") records, $(( $(stat -c %s "$t") / 1048576 )) MiB"
    else
        TRAIL_NOTE="NOT INTACT: $(grep 'NOT INTACT' <<<"$out" || tail -3 <<<"$out")"
    fi
    TRAIL_SUMMARY=$(python3 - "$t" <<'PY' 2>&1
import collections, json, re, sys
C = collections.Counter
types, statuses, tags, verdicts, refused, texts, layers = C(), C(), C(), C(), C(), C(), C()
masked_outcome = masked_decision = 0
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
    elif t == "decision":
        # HTTP: a layer's verdict on a request, e.g. the mask layer's "masked 4 value(s); ...".
        layers[f'{r.get("layer")} {r.get("verdict")}'] += 1
        m = re.match(r"masked (\d+) value", str(r.get("detail") or ""))
        if m:
            masked_decision += int(m.group(1))
    elif t == "outcome":
        statuses[r.get("status", "?")] += 1
        if r.get("tag") is not None:
            tags[str(r.get("tag"))] += 1
        for d in r.get("decisions") or []:
            if d.get("verdict") not in (None, "allow"):
                verdicts[f'{d.get("layer")} {d.get("verdict")} "{d.get("rule")}"'] += 1
        if r.get("status") == "refused":
            refused[str((r.get("error") or {}).get("message", "?"))[:100]] += 1
        m = r.get("masking")
        if isinstance(m, dict):
            v = m.get("values")
            masked_outcome += sum(v.values()) if isinstance(v, dict) else int(v or 0)
fmt = lambda c, n=None: ", ".join(f"{k} {v}" for k, v in c.most_common(n)) or "none"
print(f"records by type: {fmt(types)}; outcomes by status: {fmt(statuses)}; outcomes by tag (HTTP status):"
      f" {fmt(tags)}; decision records by layer and verdict: {fmt(layers)}; decisions other than allow in"
      f" outcomes: {fmt(verdicts)}; refusals: {fmt(refused)}; masked values: {masked_decision} in decision"
      f" records, {masked_outcome} in outcomes' `masking`; requests (most frequent):"
      f" {fmt(C({f'`{k}`': v for k, v in texts.items()}), 6)}")
PY
)
fi

# ---- report -----------------------------------------------------------------------------
report() {
    local wl d g a p r rss
    echo "# HTTP side-by-side run ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); upstream nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')" \
        "($NGINX_WORKERS worker, static files, sendfile, access log off); $("$WRK" -v 2>&1 | head -1 | awk '{ print $1, $2 }');" \
        "$(curl --version | head -1 | awk '{ print $1, $2 }'); gateway: $( (( ${#GATEWAYS[@]} > 0 )) && echo "$GATEWAY_BIN (built $(date -u -r "$GATEWAY_BIN" +%Y-%m-%dT%H:%MZ))" || echo "not run")."
    echo "Settings: DURATION=${DURATION}s ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS THREADS=$THREADS" \
        "BIG_MB=$BIG_MB (big.json $BIG_BYTES bytes, $BIG_ITEMS objects; small.json $SMALL_BYTES bytes)," \
        "paths: ${PATH_LIST[*]}; gateway log level: $GATEWAY_LOG; wall time ${ELAPSED}s." \
        "Values are medians over the rounds; paths alternate within each round."
    if [[ -n $WAIT_RE ]] || (( WAIT_BUSY > 0 )); then
        local quiet="the machine to be at most ${WAIT_BUSY}% busy"
        (( WAIT_BUSY > 0 )) || quiet=
        [[ -n $WAIT_RE && -n $quiet ]] && quiet=" and $quiet"
        echo "Waited ${WAITED}s in all before measured runs for${WAIT_RE:+ \`$WAIT_FOR\` to finish}${quiet:+ ${quiet# }}" \
            "($WAIT_TIMEOUTS waits gave up after ${WAIT_MAX}s)${WAIT_RE:+; $OVERLAPS of $MEASURED measured runs overlapped a \`$WAIT_FOR\` process (sampled every second)}."
    fi
    echo "CPU used by other processes during the wrk runs (all cores' busy time from /proc/stat less the" \
        "gateway's, nginx's and wrk's, as a share of the machine): median $(fmt %.1f "$(med othercpu all all)")%," \
        "max $(fmt %.1f "$(values othercpu all all | sort -g | tail -1)")%; $(values othercpu all all | awk '$1 > 10 { n++ } END { print n + 0 }')" \
        "of $(values othercpu all all | wc -l) runs above 10%; $DISCARDED runs discarded and run again because other" \
        "processes used more than ${RETRY_BUSY}% (at most $RETRIES retries a run)."
    echo
    echo "Every path gets \`Authorization: Bearer <token>\` (nginx ignores it). gateway: an [[http]] listener," \
        "static token only, the upstream key injected as x-api-key, no policy layer. gateway-all: the same plus" \
        "[policy] (4 path/method rules: DELETE /v1/indices/* deny, writes to /admin/** approve, readers" \
        "read-only, /internal/** deny; on_unparsed = deny), [approvals] with [admin], [masking] with all 12" \
        "detectors and \`[[masking.json]] path = \"\$..ssn\"\` (redact), and [audit] (JSONL sink, write-ahead," \
        "on_failure = refuse, fsync = interval, writer = $AUDIT_WRITER, signed checkpoints)."
    echo
    echo "## Small JSON GET (requests/s; wrk, keep-alive, $SMALL_BYTES-byte small.json)"
    echo
    echo "| workload | direct | gateway | gateway-all | gateway/direct | gateway-all/direct | gateway-all/gateway |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for wl in "${WRK_WORKLOADS[@]}"; do
        d=$(med rps "$wl" direct); g=$(med rps "$wl" gateway); a=$(med rps "$wl" gateway-all)
        echo "| $wl | $(fmt %.0f "$d") | $(fmt %.0f "$g") | $(fmt %.0f "$a") |" \
            "$(fmt %.3f "$(ratio "$g" "$d")") | $(fmt %.3f "$(ratio "$a" "$d")") | $(fmt %.3f "$(ratio "$a" "$g")") |"
    done
    echo
    echo "get-c1: wrk -t1 -c1; get-c$CONNECTIONS: wrk -t$THREADS -c$CONNECTIONS; ${DURATION}s each."
    echo
    echo "## Latency (µs; wrk --latency: average, p50, p99)"
    echo
    echo "| workload | avg direct | avg gateway | avg gateway-all | p50 direct | p50 gateway | p50 gateway-all | p99 direct | p99 gateway | p99 gateway-all | gateway adds (avg / p50) | gateway-all adds (avg / p50) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for wl in "${WRK_WORKLOADS[@]}"; do
        d=$(med avg "$wl" direct); g=$(med avg "$wl" gateway); a=$(med avg "$wl" gateway-all)
        local d50 g50 a50
        d50=$(med p50 "$wl" direct); g50=$(med p50 "$wl" gateway); a50=$(med p50 "$wl" gateway-all)
        echo "| $wl | $(fmt %.1f "$d") | $(fmt %.1f "$g") | $(fmt %.1f "$a") |" \
            "$(fmt %.1f "$d50") | $(fmt %.1f "$g50") | $(fmt %.1f "$a50") |" \
            "$(fmt %.0f "$(med p99 "$wl" direct)") | $(fmt %.0f "$(med p99 "$wl" gateway)") | $(fmt %.0f "$(med p99 "$wl" gateway-all)") |" \
            "$(fmt %.1f "$(diff_ "$g" "$d")") / $(fmt %.1f "$(diff_ "$g50" "$d50")") |" \
            "$(fmt %.1f "$(diff_ "$a" "$d")") / $(fmt %.1f "$(diff_ "$a50" "$d50")") |"
    done
    echo
    echo "## CPU time per request (µs)"
    echo
    echo "From /proc/PID/stat (gateway; nginx, master and workers) and bash's \`time\` (wrk). On $(nproc) cores" \
        "shared by all three, their sum bounds the requests/s once the machine is saturated."
    echo
    echo "| workload | path | gateway | nginx | wrk | sum |"
    echo "|---|---|---:|---:|---:|---:|"
    for wl in "${WRK_WORKLOADS[@]}"; do
        for p in "${PATH_LIST[@]}"; do
            g=$(med cpu "$wl" "$p"); d=$(med upcpu "$wl" "$p"); a=$(med clientcpu "$wl" "$p")
            echo "| $wl | $p | $(fmt %.1f "$g") | $(fmt %.1f "$d") | $(fmt %.1f "$a") |" \
                "$(fmt %.1f "$(awk -v g="$g" -v d="$d" -v a="$a" 'BEGIN { if (d == "NA" || a == "NA") print "NA"; else print (g == "NA" ? 0 : g) + d + a }')") |"
        done
    done
    if [[ " ${WORKLOADS[*]} " == *" stream-big "* ]]; then
        echo
        echo "## Streamed big.json (curl to /dev/null; $(fmt %.1f "$(awk -v b="$BIG_BYTES" 'BEGIN { print b / 1e6 }')") MB, $BIG_ITEMS objects, one e-mail each)"
        echo
        echo "| path | seconds | MB/s | vs direct | first byte (ms) | bytes received | gateway CPU (s) | gateway CPU per MB (ms) | RSS growth (KiB) | peak VmHWM during the stream (KiB) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        d=$(med mbps stream-big direct)
        for p in "${PATH_LIST[@]}"; do
            a=$(med mbps stream-big "$p")
            echo "| $p | $(fmt %.3f "$(med secs stream-big "$p")") | $(fmt %.1f "$a") | $(fmt %.3f "$(ratio "$a" "$d")") |" \
                "$(fmt %.1f "$(med ttfb stream-big "$p")") | $(fmt %.0f "$(med size stream-big "$p")") |" \
                "$(fmt %.2f "$(med cpusecs stream-big "$p")") | $(fmt %.2f "$(med cpumb stream-big "$p")") |" \
                "$(fmt %.0f "$(values rssgrowth stream-big "$p" | sort -n | tail -1)") |" \
                "$(fmt %.0f "$(values rsspeak stream-big "$p" | sort -n | tail -1)") |"
        done
        echo
        echo "MB/s: big.json's size (MB = 10^6 bytes) over curl's time_total, whatever was received (masked" \
            "e-mails are shorter). RSS growth: the largest over the rounds of (peak RSS during the stream −" \
            "RSS before it)."
    fi
    echo
    echo "## Checks and errors"
    echo
    for p in "${PATH_LIST[@]}"; do echo "- $p: ${CHECK[$p]:-n/a}."; done
    local non=0 sock=0 fails=0
    for wl in "${WRK_WORKLOADS[@]}"; do for p in "${PATH_LIST[@]}"; do
        non=$(( non + $(total non2xx "$wl" "$p") )); sock=$(( sock + $(total sockerr "$wl" "$p") ))
    done; done
    for p in "${PATH_LIST[@]}"; do fails=$(( fails + $(total failures stream-big "$p") )); done
    echo "- wrk over all measured runs: $non responses not 2xx/3xx, $sock socket errors" \
        "(requests: $(for p in "${PATH_LIST[@]}"; do printf '%s %s; ' "$p" "$(for wl in "${WRK_WORKLOADS[@]}"; do total requests "$wl" "$p"; done | awk '{ s += $1 } END { print s + 0 }')"; done | sed 's/; $//'))."
    [[ " ${WORKLOADS[*]} " == *" stream-big "* ]] && echo "- big.json streams that did not answer 200: $fails."
    local peaks="- Peak RSS over the whole run (VmHWM):"
    for p in "${GATEWAYS[@]}"; do peaks+=" $p $(fmt %.0f "${PEAK_KB[$p]:-NA}") KiB;"; done
    (( ${#GATEWAYS[@]} > 0 )) && echo "${peaks%;}."
    for p in "${GATEWAYS[@]}"; do
        echo "- Log of $p ($GATEWAY_LOG): $(wc -l <"$WORK/$p/gateway.log") lines, of which" \
            "$(grep -c -E 'WARN|ERROR' "$WORK/$p/gateway.log") WARN/ERROR."
    done
    local nerr
    nerr=$(grep -c -v -E '^\s*$' "$WORK/nginx/error.log" 2>/dev/null)
    echo "- nginx error log: ${nerr:-0} lines${nerr:+$( (( nerr > 0 )) && echo ", the last: \`$(tail -1 "$WORK/nginx/error.log")\`")}."
    if has_path gateway-all; then
        echo "- Audit trail of gateway-all after the run: $TRAIL_NOTE."
        echo "- Its contents: $TRAIL_SUMMARY."
    fi
    echo
    echo "## Targets"
    echo
    # Ratios truncated, not rounded, so that 0.5996 does not show as a "0.600" that is not met.
    trunc3() { awk -v v="$1" 'BEGIN { if (v == "NA" || v == "") print "NA"; else printf "%.3f", int(v * 1000) / 1000 }'; }
    verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "NA" || v == "") print "n/a"; else if ((op == ">=" && v >= t) || (op == "<=" && v <= t) || (op == "<" && v < t)) print "met"; else print "NOT met" }'; }
    echo "| target | measured | |"
    echo "|---|---:|---|"
    wl=get-c$CONNECTIONS
    r=$(ratio "$(med rps "$wl" gateway-all)" "$(med rps "$wl" direct)")
    echo "| small JSON GET, all layers (gateway-all) ≥ 0.6× direct requests/s, $CONNECTIONS connections | $(trunc3 "$r")× | $(verdict "$r" '>=' 0.6) |"
    if [[ " ${WORKLOADS[*]} " == *" stream-big "* ]]; then
        r=$(ratio "$(med mbps stream-big gateway-all)" "$(med mbps stream-big direct)")
        echo "| streamed $BIG_MB MB JSON, masked (gateway-all) ≥ 0.8× direct throughput | $(trunc3 "$r")× | $(verdict "$r" '>=' 0.8) |"
    fi
}

report | tee "$REPORT"
log "report written to $REPORT"

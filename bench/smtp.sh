#!/usr/bin/env bash
# SMTP benchmark: gale and HAProxy (tcp mode, same backends, same SMTP
# health checks) side by side in one run, plus the client talking to a
# backend directly.
#
#   backends: two smtp-sink     client: smtp-source     (pinned to core 1)
#   proxies:  gale, haproxy                             (pinned to core 0)
#
# Reports messages/s with one connection per message and with reused
# connections, and session setup latency (connect until the 220 greeting),
# each as ratios gale/HAProxy and gale/direct. Everything is on loopback
# and every run is bounded by its message count.
#
# Usage: [ROUNDS=9] [GALE=path] bench/smtp.sh [messages]   (needs postfix, haproxy; builds gale)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-9}
LATENCY_SESSIONS=1000

for tool in smtp-source smtp-sink haproxy taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install postfix haproxy util-linux)"; exit 1; }
done
# GALE=path: a gale built elsewhere (an earlier commit, to compare).
if [ -z "${GALE:-}" ]; then cargo build --release -q; GALE=target/release/gale; fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; tail -5 "$work"/*.log; exit 1; }

S1=$(port); S2=$(port); HP=$(port); GP=$(port)
taskset -c 1 smtp-sink -u nobody 127.0.0.1:"$S1" 1024 & pids+=($!)
taskset -c 1 smtp-sink -u nobody 127.0.0.1:"$S2" 1024 & pids+=($!)
wait_port "$S1"; wait_port "$S2"

cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
listen smtp
    bind 127.0.0.1:$HP
    balance roundrobin
    option smtpchk EHLO bench.test
    server s1 127.0.0.1:$S1 check inter 2s
    server s2 127.0.0.1:$S2 check inter 2s
CFG
taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
HAPROXY_PID=$!

cat > "$work/gale.toml" <<CFG
[plugins]
cache_dir = "$work/cache"
[listeners.smtp]
protocol = "smtp"
address = "127.0.0.1:$GP"
pool = "sinks"
[pools.sinks]
[pools.sinks.probe]
kind = "smtp"
interval = "2s"
[[pools.sinks.backends]]
name = "s1"
address = "127.0.0.1:$S1"
[[pools.sinks.backends]]
name = "s2"
address = "127.0.0.1:$S2"
CFG
# One worker thread, like haproxy's nbthread 1; session logs off (HAProxy
# logs nothing here either).
TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$GALE" run --config "$work/gale.toml" >"$work/gale.log" 2>&1 & pids+=($!)
GALE_PID=$!
wait_port "$HP"; wait_port "$GP"
sleep 1

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { [ -n "$1" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# One smtp-source run against port $2 with the proxy's pid in $3 (empty for
# direct); appends "round target mode msgs/s proxy-CPU-us-per-msg" to
# $work/runs.
run() {
    local round=$1 who=$2 mode=$3 target=$4 pid=$5; shift 5
    local start end c0 c1
    c0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
    taskset -c 1 smtp-source "$@" -s $SESSIONS -m "$MESSAGES" -l 512 -f a@bench.test -t b@bench.test 127.0.0.1:"$target" 2>"$work/err"
    end=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    if [ -s "$work/err" ]; then echo "smtp-source errors against $who:" >&2; cat "$work/err" >&2; exit 1; fi
    python3 -c "print($round, '$who', '$mode', $MESSAGES/($end-$start), ($c1-$c0)*$TICK_US/$MESSAGES)" >>"$work/runs"
}

# connect-to-220 latency of $LATENCY_SESSIONS sessions against port $3;
# appends "round target latency-us..." to $work/latency.
latency() {
    taskset -c 1 python3 - "$1" "$2" "$3" "$LATENCY_SESSIONS" >>"$work/latency" <<'PY'
import socket, sys, time
rnd, who, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
samples = []
for _ in range(n):
    t = time.perf_counter_ns()
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    while not any(l.startswith(b"220 ") for l in buf.split(b"\r\n")):
        chunk = s.recv(4096)
        if not chunk: raise SystemExit("closed before 220")
        buf += chunk
    samples.append((time.perf_counter_ns() - t) / 1000)
    s.sendall(b"QUIT\r\n"); s.recv(4096); s.close()
print(rnd, who, *(round(x) for x in samples))
PY
}

echo "$MESSAGES messages per run, $SESSIONS parallel sessions, 512-byte messages, $ROUNDS rounds"
declare -A PORT=([direct]=$S1 [haproxy]=$HP [gale]=$GP) PID=([direct]= [haproxy]=$HAPROXY_PID [gale]=$GALE_PID)
for round in $(seq "$ROUNDS"); do
    # Interleaved, and the proxies' order alternates, so drift in the
    # machine's speed hits every target alike; ratios are taken per round.
    if (( round % 2 )); then order=(haproxy gale direct); else order=(gale haproxy direct); fi
    for who in "${order[@]}"; do
        run "$round" "$who" new "${PORT[$who]}" "${PID[$who]}"
        run "$round" "$who" reuse "${PORT[$who]}" "${PID[$who]}" -d
        latency "$round" "$who" "${PORT[$who]}"
    done
    echo "round $round of $ROUNDS done" >&2
done

python3 - "$work/runs" "$work/latency" <<'PY'
import statistics as st, sys
from collections import defaultdict
runs = defaultdict(dict)     # (mode) -> {(round, who): (rate, cpu)}
for line in open(sys.argv[1]):
    rnd, who, mode, rate, cpu = line.split()
    runs[mode][(int(rnd), who)] = (float(rate), float(cpu))
lat = {}                     # (round, who) -> sorted samples
for line in open(sys.argv[2]):
    rnd, who, *xs = line.split()
    lat[(int(rnd), who)] = sorted(map(float, xs))
rounds = sorted({r for r, _ in runs["new"]})
pct = lambda xs, q: xs[min(len(xs) - 1, int(len(xs) * q))]

def row(name, value, better_high=True, proxies_only=False):
    """value(round, who) -> number; ratios are per round, then the median."""
    med = {w: st.median(value(r, w) for r in rounds) for w in ("direct", "haproxy", "gale")}
    def ratio(other):
        rs = sorted((value(r, "gale") / value(r, other)) if better_high else (value(r, other) / value(r, "gale")) for r in rounds)
        return f"{st.median(rs):.2f} ({rs[0]:.2f}-{rs[-1]:.2f})"
    d = "" if proxies_only else f"{med['direct']:.0f}"
    print(f"| {name} | {d} | {med['haproxy']:.0f} | {med['gale']:.0f} | {ratio('haproxy')} | {'' if proxies_only else ratio('direct')} |")

print()
print("| | direct | HAProxy | gale | gale/HAProxy (range) | gale/direct (range) |")
print("|---|---:|---:|---:|---:|---:|")
row("msgs/s, one connection per message", lambda r, w: runs["new"][(r, w)][0])
row("msgs/s, reused connections", lambda r, w: runs["reuse"][(r, w)][0])
row("proxy CPU µs per message, new connection", lambda r, w: runs["new"][(r, w)][1], False, True)
row("proxy CPU µs per message, reused", lambda r, w: runs["reuse"][(r, w)][1], False, True)
row("session setup (connect to 220) p50, µs", lambda r, w: pct(lat[(r, w)], 0.5), False)
row("session setup p99, µs", lambda r, w: pct(lat[(r, w)], 0.99), False)
print()
print("Ratios are medians of per-round ratios, with their range; for CPU and")
print("latency the ratio is other/gale, so above 1 means gale is better.")
PY

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
# Usage: bench/smtp.sh [messages]   (needs postfix, haproxy; builds gale)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SESSIONS=20
ROUNDS=5

for tool in smtp-source smtp-sink haproxy taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install postfix haproxy util-linux)"; exit 1; }
done
cargo build --release -q
GALE=target/release/gale

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

# "messages/s proxy-CPU-us-per-message" of one smtp-source run against
# port $1, with the proxy's pid in $2 (empty for direct).
rate() {
    local target=$1 pid=$2; shift 2
    local start end c0 c1
    c0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
    taskset -c 1 smtp-source "$@" -s $SESSIONS -m "$MESSAGES" -l 512 -f a@bench.test -t b@bench.test 127.0.0.1:"$target" 2>"$work/err"
    end=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    if [ -s "$work/err" ]; then echo "smtp-source errors against $target:" >&2; cat "$work/err" >&2; exit 1; fi
    python3 -c "print(round($MESSAGES/($end-$start)), round(($c1-$c0)*$TICK_US/$MESSAGES, 1))"
}
median() { python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:]))))" "$@"; }

# connect-to-220 latency (p50 and p99, microseconds) over 2000 sessions.
latency() {
    taskset -c 1 python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1]); samples = []
for _ in range(2000):
    t = time.perf_counter_ns()
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    while not any(l.startswith(b"220 ") for l in buf.split(b"\r\n")):
        chunk = s.recv(4096)
        if not chunk: raise SystemExit("closed before 220")
        buf += chunk
    samples.append((time.perf_counter_ns() - t) / 1000)
    s.sendall(b"QUIT\r\n"); s.recv(4096); s.close()
samples.sort()
print(f"{samples[len(samples)//2]:.0f} {samples[int(len(samples)*0.99)]:.0f}")
PY
}

echo "messages: $MESSAGES per run, $SESSIONS parallel sessions, 512-byte messages; median of $ROUNDS interleaved rounds"
declare -A NEW REUSE NEWCPU REUSECPU LAT50 LAT99 PORT=([direct]=$S1 [haproxy]=$HP [gale]=$GP) PID=([direct]= [haproxy]=$HAPROXY_PID [gale]=$GALE_PID)
for round in $(seq $ROUNDS); do
    # Interleaved, so drift in the machine's speed hits every target alike.
    for who in direct haproxy gale; do
        read -r r c < <(rate "${PORT[$who]}" "${PID[$who]}")
        NEW[$who]+=" $r"; NEWCPU[$who]+=" $c"
        read -r r c < <(rate "${PORT[$who]}" "${PID[$who]}" -d)
        REUSE[$who]+=" $r"; REUSECPU[$who]+=" $c"
    done
    echo "round $round done" >&2
done
for who in direct haproxy gale; do
    NEW[$who]=$(median ${NEW[$who]}); NEWCPU[$who]=$(median ${NEWCPU[$who]})
    REUSE[$who]=$(median ${REUSE[$who]}); REUSECPU[$who]=$(median ${REUSECPU[$who]})
    read -r LAT50[$who] LAT99[$who] < <(latency "${PORT[$who]}")
done

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
lat_ratio() { python3 -c "print(f'{$2/$1:.2f}')"; }  # higher is better for gale
printf '\n| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "" direct haproxy gale gale/HAProxy gale/direct
printf '|%s|\n' "--------------------------------------|-----------|-----------|-----------|------------|-----------"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "msgs/s, one connection per message" "${NEW[direct]}" "${NEW[haproxy]}" "${NEW[gale]}" "$(ratio "${NEW[gale]}" "${NEW[haproxy]}")" "$(ratio "${NEW[gale]}" "${NEW[direct]}")"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "msgs/s, reused connections" "${REUSE[direct]}" "${REUSE[haproxy]}" "${REUSE[gale]}" "$(ratio "${REUSE[gale]}" "${REUSE[haproxy]}")" "$(ratio "${REUSE[gale]}" "${REUSE[direct]}")"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "proxy CPU us/msg, new conn (other/gale)" "-" "${NEWCPU[haproxy]}" "${NEWCPU[gale]}" "$(lat_ratio "${NEWCPU[gale]}" "${NEWCPU[haproxy]}")" "-"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "proxy CPU us/msg, reused (other/gale)" "-" "${REUSECPU[haproxy]}" "${REUSECPU[gale]}" "$(lat_ratio "${REUSECPU[gale]}" "${REUSECPU[haproxy]}")" "-"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "setup p50, us (ratio: other/gale)" "${LAT50[direct]}" "${LAT50[haproxy]}" "${LAT50[gale]}" "$(lat_ratio "${LAT50[gale]}" "${LAT50[haproxy]}")" "$(lat_ratio "${LAT50[gale]}" "${LAT50[direct]}")"
printf '| %-36s | %9s | %9s | %9s | %10s | %10s |\n' "setup p99, us (ratio: other/gale)" "${LAT99[direct]}" "${LAT99[haproxy]}" "${LAT99[gale]}" "$(lat_ratio "${LAT99[gale]}" "${LAT99[haproxy]}")" "$(lat_ratio "${LAT99[gale]}" "${LAT99[direct]}")"

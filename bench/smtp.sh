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
# each as ratios gale/HAProxy and gale/direct; and the memory each proxy
# holds per idle session (bench/idle.py: IDLE sessions at once, each
# greeted with 220 through the proxy, then silent). Everything is on
# loopback and every run is bounded by its message or session count.
#
# TLS rows (SMTPS, port 465): each proxy also terminates TLS (HAProxy
# `bind ... ssl crt`, gale `tls = { cert, key }`; one P-256 certificate,
# TLS 1.3) for the same sinks. smtp-source speaks no TLS, so a third
# HAProxy on the clients' core wraps its sessions in TLS towards the
# proxy under test (`ssl verify none no-ssl-reuse`: a full handshake per
# connection, as from a sender seen for the first time): the same
# client for both, its cost on the clients' core.
#
# THREADS=2: nothing pinned, gale with two worker threads, haproxy with
# nbthread 2.
#
# Usage: [ROUNDS=9] [IDLE=5000] [THREADS=1|2] [GALE=path] bench/smtp.sh [messages]
#        (needs postfix, haproxy; builds gale)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-9}
LATENCY_SESSIONS=1000
IDLE=${IDLE:-5000}
THREADS=${THREADS:-1}

for tool in smtp-source smtp-sink haproxy taskset python3 openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install postfix haproxy util-linux)"; exit 1; }
done
case $THREADS in
    1) MODE="pinned: proxies on core 0 with one thread each, client and sinks on core 1" ;;
    *) MODE="THREADS=2: nothing pinned, gale TOKIO_WORKER_THREADS=2, haproxy nbthread 2" ;;
esac
# A proxy holds two descriptors per idle session (client and backend),
# and haproxy wants two per maxconn: under the hard limit (this machine's
# is 20000, which a non-root process cannot raise).
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
CONNS=$(( IDLE + 1000 > 4000 ? IDLE + 1000 : 4000 ))
if (( 2 * CONNS + 100 > NOFILE )); then echo "IDLE=$IDLE needs more descriptors than the limit ($NOFILE)"; exit 1; fi
source bench/lib.sh
placement
# Until ten sessions in a row through port $1 are greeted with 220 (both
# sinks in rotation, not a proxy's own 421), at most 10 s.
wait_greeted() {
    python3 - "$1" <<'PY' || { echo "port $1 never greeted with 220"; tail -5 "$work"/*.log; exit 1; }
import socket, sys, time
port, ok, end = int(sys.argv[1]), 0, time.monotonic() + 10
while ok < 10:
    if time.monotonic() > end: sys.exit(1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk: break
                buf += chunk
            ok = ok + 1 if buf.startswith(b"220") else 0
            s.sendall(b"QUIT\r\n")
    except OSError:
        ok = 0
    if ok < 10: time.sleep(0.05)
PY
}
# Ends a proxy started by this script.
stop() { kill "$1"; wait "$1" 2>/dev/null || true; local p keep=(); for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }

S1=$(port); S2=$(port); HP=$(port); GP=$(port)
# SMTPS on each proxy, and the TLS wrapper's plain ports in front of them.
HTP=$(port); GTP=$(port); WH=$(port); WG=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench.test -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/both.pem"
# -m: sessions a sink serves at once (default 256; the rest would wait
# unanswered in its backlog): every idle session could land on one sink.
"${pin1[@]}" smtp-sink -u nobody -m "$CONNS" 127.0.0.1:"$S1" 1024 & pids+=($!)
"${pin1[@]}" smtp-sink -u nobody -m "$CONNS" 127.0.0.1:"$S2" 1024 & pids+=($!)
wait_port "$S1"; wait_port "$S2"

start_haproxy() {   # name port [smtps-port]; sets HAPROXY_PID
    cat > "$work/$1.cfg" <<CFG
global
    maxconn $CONNS
    nbthread $THREADS
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
listen smtp
    bind 127.0.0.1:$2
    balance roundrobin
    option smtpchk EHLO bench.test
    server s1 127.0.0.1:$S1 check inter 2s
    server s2 127.0.0.1:$S2 check inter 2s
CFG
    [ -z "${3:-}" ] || cat >> "$work/$1.cfg" <<CFG
listen smtps
    bind 127.0.0.1:$3 ssl crt $work/both.pem
    balance roundrobin
    option smtpchk EHLO bench.test
    server s1 127.0.0.1:$S1 check inter 2s
    server s2 127.0.0.1:$S2 check inter 2s
CFG
    "${pin0[@]}" haproxy -f "$work/$1.cfg" -db >"$work/$1.log" 2>&1 & pids+=($!)
    HAPROXY_PID=$!
}
start_haproxy haproxy "$HP" "$HTP"
# The TLS client side of the SMTPS rows, on the clients' core.
cat > "$work/wrap.cfg" <<CFG
global
    maxconn $CONNS
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
listen to-haproxy
    bind 127.0.0.1:$WH
    server h 127.0.0.1:$HTP ssl verify none no-ssl-reuse
listen to-gale
    bind 127.0.0.1:$WG
    server g 127.0.0.1:$GTP ssl verify none no-ssl-reuse
CFG
"${pin1[@]}" haproxy -f "$work/wrap.cfg" -db >"$work/wrap.log" 2>&1 & pids+=($!)

start_gale() {   # name port [smtps-port]; sets GALE_PID
    cat > "$work/$1.toml" <<CFG
[plugins]
cache_dir = "$work/cache"
[listeners.smtp]
protocol = "smtp"
address = "127.0.0.1:$2"
pool = "sinks"
max_sessions = $CONNS
[listeners.smtps]
protocol = "smtp"
address = "127.0.0.1:${3:-0}"
pool = "sinks"
max_sessions = $CONNS
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }
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
    # One worker thread, like haproxy's nbthread 1 (THREADS of each
    # otherwise); session logs off (HAProxy logs nothing here either).
    TOKIO_WORKER_THREADS=$THREADS RUST_LOG=warn "${pin0[@]}" "$GALE" run --config "$work/$1.toml" >"$work/$1.log" 2>&1 & pids+=($!)
    GALE_PID=$!
}
start_gale gale "$GP" "$GTP"
wait_port "$HP"; wait_port "$GP"; wait_port "$HTP"; wait_port "$GTP"; wait_port "$WH"; wait_port "$WG"
sleep 1

# One smtp-source run against port $2 with the proxy's pid in $3 (empty for
# direct); appends "round target mode msgs/s proxy-CPU-us-per-msg" to
# $work/runs.
run() {
    local round=$1 who=$2 mode=$3 target=$4 pid=$5; shift 5
    local start end c0 c1
    c0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
    "${pin1[@]}" smtp-source "$@" -s $SESSIONS -m "$MESSAGES" -l 512 -f a@bench.test -t b@bench.test 127.0.0.1:"$target" 2>"$work/err"
    end=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    if [ -s "$work/err" ]; then echo "smtp-source errors against $who:" >&2; cat "$work/err" >&2; exit 1; fi
    python3 -c "print($round, '$who', '$mode', $MESSAGES/($end-$start), ($c1-$c0)*$TICK_US/$MESSAGES)" >>"$work/runs"
}

# connect-to-220 latency of $LATENCY_SESSIONS sessions against port $3;
# appends "round target latency-us..." to $work/latency.
latency() {
    "${pin1[@]}" python3 - "$1" "$2" "$3" "$LATENCY_SESSIONS" >>"$work/latency" <<'PY'
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
echo "mode: $MODE"
declare -A PORT=([direct]=$S1 [haproxy]=$HP [gale]=$GP [haproxy-tls]=$WH [gale-tls]=$WG)
declare -A PID=([direct]= [haproxy]=$HAPROXY_PID [gale]=$GALE_PID [haproxy-tls]=$HAPROXY_PID [gale-tls]=$GALE_PID)
for round in $(seq "$ROUNDS"); do
    # Interleaved, and the proxies' order alternates, so drift in the
    # machine's speed hits every target alike; ratios are taken per round.
    if (( round % 2 )); then order=(haproxy gale direct); else order=(gale haproxy direct); fi
    for who in "${order[@]}"; do
        run "$round" "$who" new "${PORT[$who]}" "${PID[$who]}"
        run "$round" "$who" reuse "${PORT[$who]}" "${PID[$who]}" -d
        latency "$round" "$who" "${PORT[$who]}"
    done
    for who in "${order[@]/direct}"; do
        [ -n "$who" ] || continue
        run "$round" "$who-tls" new "${PORT[$who-tls]}" "${PID[$who-tls]}"
        run "$round" "$who-tls" reuse "${PORT[$who-tls]}" "${PID[$who-tls]}" -d
    done
    echo "round $round of $ROUNDS done" >&2
done

# Idle sessions: IDLE sessions through a fresh proxy of each, all
# greeted (220), RSS before and after; appends "who rss-before-KiB
# rss-after-KiB n closed fds-before fds-after rss-half-KiB" to $work/idle.
# Fresh, because the proxies above still hold memory they freed (gale's
# first start compiles the plugins and gives that memory back at some
# later point, which showed as a negative growth).
touch "$work/idle"
if (( IDLE > 0 )); then
    for who in haproxy gale; do
        p=$(port)
        case $who in
            haproxy) start_haproxy haproxy-idle "$p"; pid=$HAPROXY_PID ;;
            gale) start_gale gale-idle "$p"; pid=$GALE_PID ;;
        esac
        wait_port "$p"; wait_greeted "$p"
        got=$("${pin1[@]}" python3 bench/idle.py smtp "$p" "$IDLE" "$pid") ||
            { echo "idle smtp: bench/idle.py failed against $who" >&2; exit 1; }
        echo "$who $got" >>"$work/idle"
        stop "$pid"
    done
fi

python3 - "$work/runs" "$work/latency" "$work/idle" "$IDLE" <<'PY'
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
    whos = ("haproxy", "gale") if proxies_only else ("direct", "haproxy", "gale")
    med = {w: st.median(value(r, w) for r in rounds) for w in whos}
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
row("SMTPS (TLS terminated) msgs/s, new connection", lambda r, w: runs["new"][(r, w + "-tls")][0], True, True)
row("SMTPS msgs/s, reused connections", lambda r, w: runs["reuse"][(r, w + "-tls")][0], True, True)
row("SMTPS proxy CPU µs per message, new connection (full handshake)", lambda r, w: runs["new"][(r, w + "-tls")][1], False, True)
row("SMTPS proxy CPU µs per message, reused", lambda r, w: runs["reuse"][(r, w + "-tls")][1], False, True)
print()
print("Ratios are medians of per-round ratios, with their range; for CPU and")
print("latency the ratio is other/gale, so above 1 means gale is better.")

idle = {}                    # who -> bench/idle.py's fields
for line in open(sys.argv[3]):
    who, *xs = line.split()
    idle[who] = tuple(map(int, xs))
if len(idle) == 2:
    per = {w: fields[7] / 1024 for w, fields in idle.items()}   # the slope
    ratio = f"{per['haproxy'] / per['gale']:.2f}" if per["gale"] > 0 else "n/a"
    print()
    print(f"| KiB of RSS per idle session ({sys.argv[4]} at once, greeted, then silent) | HAProxy | gale | HAProxy/gale |")
    print("|---|---:|---:|---:|")
    print(f"| idle SMTP session (client and backend connection) | {per['haproxy']:.2f} | {per['gale']:.2f} | {ratio} |")
    print()
    print("A fresh proxy of each; RSS read after each tenth of the sessions was")
    print("greeted, the figure the least-squares slope of RSS over sessions")
    print("(gale's RSS grows in 2 MiB steps: huge pages); above 1, gale holds")
    print("less. Kernel socket buffers are not in RSS.")
    for w, (before, after, n, closed, fd0, fd1, half, _) in sorted(idle.items()):
        whole, second = (after - before) / n, (after - half) / (n - n // 2)
        print(f"- {w}: RSS {before / 1024:.1f} -> {half / 1024:.1f} (half-way) -> {after / 1024:.1f} MiB "
              f"for {n} sessions ({whole:.2f} KiB each; second half {second:.2f}); descriptors {fd0} -> {fd1}"
              + (f"; {closed} CLOSED by the proxy before RSS was read" if closed else "")
              + ("; UNEVEN: the halves disagree" if abs(second - whole) > max(0.25, 0.25 * abs(whole)) else ""))
PY

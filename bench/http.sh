#!/usr/bin/env bash
# HTTP benchmark: gale, HAProxy (http mode) and nginx (reverse proxy with
# upstream keep-alive) side by side in one run over the same two nginx
# backends, plus wrk talking to one backend directly.
#
#   backends: two nginx (one worker each)   client: wrk     (pinned to core 1)
#   proxies:  gale, haproxy, nginx (one worker/thread each) (pinned to core 0)
#
# Reports requests/s with keep-alive and a small body, with keep-alive and
# a 16 KiB body, and with `Connection: close` (a new client connection per
# request), and the latency of one connection sending requests back to back
# (p50/p99 from wrk --latency), each as ratios gale/HAProxy, gale/nginx and
# gale/direct, plus the proxies' CPU per request. Everything is on loopback
# and every run is bounded by its duration.
#
# Usage: [ROUNDS=3] [DURATION=5] [CONNECTIONS=32] [GALE=path] bench/http.sh
#        (needs nginx, haproxy, wrk; builds gale)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}

for tool in nginx haproxy wrk taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx haproxy wrk util-linux python3)"; exit 1; }
done
# GALE=path: a gale built elsewhere (an earlier commit, to compare).
if [ -z "${GALE:-}" ]; then cargo build --release -q; GALE=$PWD/target/release/gale; fi

work=$(mktemp -d)
# nginx workers started as root run as nobody: they must reach the files.
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; tail -5 "$work"/*.log; exit 1; }
# Until GET /small on port $1 answers 200 ten times in a row (so every
# backend behind a proxy is in rotation), at most 10 s.
wait_ok() {
    python3 - "$1" <<'PY' || { echo "port $1 never answered 200"; tail -5 "$work"/*.log; exit 1; }
import http.client, sys, time
port, ok, end = int(sys.argv[1]), 0, time.monotonic() + 10
while ok < 10:
    if time.monotonic() > end: sys.exit(1)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/small"); r = c.getresponse(); r.read(); c.close()
        ok = ok + 1 if r.status == 200 else 0
    except OSError:
        ok = 0
    if ok < 10: time.sleep(0.05)
PY
}

B1=$(port); B2=$(port); HP=$(port); NP=$(port); GP=$(port)
mkdir -p "$work/www"
head -c 16384 /dev/urandom >"$work/www/16k"
chmod -R a+rX "$work/www"

# Paths nginx would otherwise put under /var: $1 is a name for its files.
nginx_common() {
    cat <<CFG
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1.log warn;
events { worker_connections 4096; }
CFG
}
nginx_http_common() {
    cat <<CFG
    access_log off;
    client_body_temp_path $work/$1-body;
    proxy_temp_path $work/$1-proxy;
    fastcgi_temp_path $work/$1-fastcgi;
    uwsgi_temp_path $work/$1-uwsgi;
    scgi_temp_path $work/$1-scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
CFG
}
start_nginx() {   # name core
    taskset -c "$2" nginx -p "$work/" -e "$work/$1.log" -c "$work/$1.conf" -g 'daemon off;' >>"$work/$1.log" 2>&1 & pids+=($!)
}

for b in b1:$B1 b2:$B2; do
    name=${b%%:*} p=${b#*:}
    { nginx_common "$name"; echo "http {"; nginx_http_common "$name"; cat <<CFG
    server {
        listen 127.0.0.1:$p;
        root $work/www;
        location = /small { return 200 "ok\n"; }
        location = /16k { }
    }
}
CFG
    } >"$work/$name.conf"
    start_nginx "$name" 1
done
wait_port "$B1"; wait_port "$B2"

# Proxy headers as gale sends them (X-Forwarded-For, X-Forwarded-Proto,
# Forwarded), so every proxy does comparable header work.
cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4000
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
listen web
    bind 127.0.0.1:$HP
    balance roundrobin
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request add-header Forwarded "for=%[src];proto=http;host=\\"%[req.hdr(host)]\\""
    option httpchk
    http-check send meth GET uri /small
    server b1 127.0.0.1:$B1 check inter 2s
    server b2 127.0.0.1:$B2 check inter 2s
CFG
taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
HAPROXY_PID=$!

# nginx has no active health checks outside nginx Plus: passive ones only.
{ nginx_common nginx-proxy; echo "http {"; nginx_http_common nginx-proxy; cat <<CFG
    upstream backends {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NP;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\\"\$host\\"";
        }
    }
}
CFG
} >"$work/nginx-proxy.conf"
start_nginx nginx-proxy 0
NGINX_PID=$!

cat > "$work/gale.toml" <<CFG
[listeners.web]
protocol = "http"
address = "127.0.0.1:$GP"
pool = "web"
[pools.web]
[pools.web.probe]
kind = "http"
path = "/small"
interval = "2s"
[[pools.web.backends]]
name = "b1"
address = "127.0.0.1:$B1"
weight = 1
[[pools.web.backends]]
name = "b2"
address = "127.0.0.1:$B2"
weight = 1
CFG
# One worker thread, like haproxy's nbthread 1 and nginx's one worker;
# request logs off (neither of the others logs here).
GALE_CACHE_DIR="$work/cache" TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
    taskset -c 0 "$GALE" run --config "$work/gale.toml" >"$work/gale.log" 2>&1 & pids+=($!)
GALE_PID=$!
wait_port "$HP"; wait_port "$NP"; wait_port "$GP"
for p in "$B1" "$HP" "$NP" "$GP"; do wait_ok "$p"; done
# nginx does its work in its worker: count the master and its workers.
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"

# CPU time (user + system, in clock ticks) the processes in $1 have used.
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# One wrk run against port $4 with the proxy's pids in $5 (empty for
# direct), path $6, extra wrk arguments after; appends "round target mode
# req/s proxy-CPU-us-per-request p50-us p99-us errors" to $work/runs.
run() {
    local round=$1 who=$2 mode=$3 target=$4 procs=$5 path=$6; shift 6
    local c0 c1 rc=0
    c0=$(cpu_ticks "$procs")
    taskset -c 1 wrk -t1 -d"${DURATION}s" "$@" "http://127.0.0.1:$target$path" >"$work/wrk.out" 2>&1 || rc=$?
    c1=$(cpu_ticks "$procs")
    if [ "$rc" != 0 ]; then echo "wrk failed against $who ($mode):" >&2; cat "$work/wrk.out" >&2; exit 1; fi
    python3 - "$round" "$who" "$mode" "$((c1 - c0))" "$TICK_US" "$work/wrk.out" >>"$work/runs" <<'PY'
import re, sys
rnd, who, mode, ticks, tick_us, path = sys.argv[1:]
out = open(path).read()
unit = {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7, "h": 3.6e9}
size = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", out)
n, read = int(m.group(1)), float(m.group(2)) * size[m.group(3)]
def pct(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(\w+)", out, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else 0.0
errors = [l.strip() for l in out.splitlines() if "Socket errors" in l or "Non-2xx" in l]
# Every response carries at least the body asked for: catch a proxy that
# answers fast with something else.
if mode == "ka_16k" and n and read / n < 16384:
    errors.append(f"only {read / n:.0f} bytes read per request")
if n == 0:
    errors.append("no requests completed")
if errors:
    print(f"warning: {who} {mode} round {rnd}: " + "; ".join(errors), file=sys.stderr)
cpu = int(ticks) * int(tick_us) / n if n else 0.0
print(rnd, who, mode, rate, cpu, pct(50), pct(99), "|".join(errors).replace(" ", "_") or "-")
PY
}

echo "wrk -t1 -c$CONNECTIONS for ${DURATION}s per run (c1 latency: -c1), $ROUNDS rounds; nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1 | cut -d' ' -f1-3)"
declare -A PORT=([direct]=$B1 [haproxy]=$HP [nginx]=$NP [gale]=$GP) \
    PID=([direct]= [haproxy]=$HAPROXY_PID [nginx]=$NGINX_PIDS [gale]=$GALE_PID)
proxies=(haproxy nginx gale)
for round in $(seq "$ROUNDS"); do
    # Interleaved, and the proxies' order rotates, so drift in the
    # machine's speed hits every target alike; ratios are taken per round.
    k=$(( (round - 1) % ${#proxies[@]} ))
    order=("${proxies[@]:k}" "${proxies[@]:0:k}" direct)
    for who in "${order[@]}"; do
        run "$round" "$who" ka_small "${PORT[$who]}" "${PID[$who]}" /small -c"$CONNECTIONS"
        run "$round" "$who" ka_16k "${PORT[$who]}" "${PID[$who]}" /16k -c"$CONNECTIONS"
        run "$round" "$who" close "${PORT[$who]}" "${PID[$who]}" /small -c"$CONNECTIONS" -H 'Connection: close'
        run "$round" "$who" c1 "${PORT[$who]}" "${PID[$who]}" /small -c1 --latency
    done
    echo "round $round of $ROUNDS done (order: ${order[*]})" >&2
done

python3 - "$work/runs" <<'PY'
import statistics as st, sys
runs = {}                    # (mode, round, who) -> (rate, cpu, p50, p99)
errors = []
for line in open(sys.argv[1]):
    rnd, who, mode, rate, cpu, p50, p99, err = line.split()
    runs[(mode, int(rnd), who)] = tuple(map(float, (rate, cpu, p50, p99)))
    if err != "-":
        errors.append(f"round {rnd}, {who}, {mode}: {err.replace('_', ' ').replace('|', '; ')}")
rounds = sorted({r for _, r, _ in runs})
WHO = ("direct", "haproxy", "nginx", "gale")

def row(name, value, better_high=True, proxies_only=False):
    """value(round, who) -> number; ratios are per round, then the median."""
    med = {w: st.median(value(r, w) for r in rounds) for w in WHO}
    def ratio(other):
        try:
            rs = sorted((value(r, "gale") / value(r, other)) if better_high else (value(r, other) / value(r, "gale")) for r in rounds)
        except ZeroDivisionError:
            return "n/a"
        f = lambda x: f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"
        return f"{f(st.median(rs))} ({f(rs[0])}-{f(rs[-1])})"
    d = "" if proxies_only else f"{med['direct']:.0f}"
    print(f"| {name} | {d} | {med['haproxy']:.0f} | {med['nginx']:.0f} | {med['gale']:.0f} | "
          f"{ratio('haproxy')} | {ratio('nginx')} | {'' if proxies_only else ratio('direct')} |")

print()
print("| | direct | HAProxy | nginx | gale | gale/HAProxy (range) | gale/nginx (range) | gale/direct (range) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
row("req/s, keep-alive, small body", lambda r, w: runs[("ka_small", r, w)][0])
row("req/s, keep-alive, 16 KiB body", lambda r, w: runs[("ka_16k", r, w)][0])
row("req/s, Connection: close", lambda r, w: runs[("close", r, w)][0])
row("one connection (c1) p50, µs", lambda r, w: runs[("c1", r, w)][2], False)
row("one connection (c1) p99, µs", lambda r, w: runs[("c1", r, w)][3], False)
row("proxy CPU µs per request, keep-alive small", lambda r, w: runs[("ka_small", r, w)][1], False, True)
row("proxy CPU µs per request, keep-alive 16 KiB", lambda r, w: runs[("ka_16k", r, w)][1], False, True)
row("proxy CPU µs per request, Connection: close", lambda r, w: runs[("close", r, w)][1], False, True)
print()
print("Ratios are medians of per-round ratios, with their range; for CPU and")
print("latency the ratio is other/gale, so above 1 means gale is better.")
if errors:
    print()
    print("Errors reported by wrk (their runs' numbers count failed requests too):")
    for e in errors:
        print(f"- {e}")
PY

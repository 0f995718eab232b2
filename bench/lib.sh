# What bench/http.sh and bench/smtp.sh share; sourced by both, from the
# repository's root.

# Where processes run, by THREADS (1 or 2): sets pin0 and pin1, the
# prefixes for what runs on the proxies' core and on the clients'. With 1
# the proxies are pinned to core 0 and everything else to core 1; with 2
# nothing is pinned. env runs the command in place, so $! stays the
# command's pid.
placement() {
    case $THREADS in
        1) pin0=(taskset -c 0) pin1=(taskset -c 1) ;;
        2) pin0=(env) pin1=(env) ;;
        *) echo "THREADS is 1 or 2"; exit 1 ;;
    esac
}

# GALE=path: a gale built elsewhere (an earlier commit, to compare);
# otherwise this tree's, built now.
if [ -z "${GALE:-}" ]; then cargo build --release -q; GALE=$PWD/target/release/gale; fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; tail -5 "$work"/*.log; exit 1; }

# CPU time (user + system, in clock ticks) the processes in $1 have used
# (0 for none).
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

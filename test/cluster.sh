#!/bin/sh
# The distributed demo on one machine: a redis-server on 127.0.0.1:6379
# (data in build/cluster/) and two chatd nodes, on ports 5000 and 5001,
# sharing it. Ctrl-C stops all three (only the processes started here).
#
# Every port is checked first: a port already taken stops the demo with the
# reason (a Redis already on 6379 would otherwise be used silently). The
# banner is printed only once Redis answers and every node listens; a node
# that fails to start stops the demo with exit code 1.
#
# Environment: REDIS_PORT (6379), NODE_PORTS ("5000 5001"), CHATD_BIN
# (./build/chatd), CONF (conf/chatd.conf), CLUSTER_DIR (build/cluster).
set -eu
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6379}
NODE_PORTS=${NODE_PORTS:-5000 5001}
CHATD_BIN=${CHATD_BIN:-./build/chatd}
CONF=${CONF:-conf/chatd.conf}
dir=${CLUSTER_DIR:-build/cluster}

fail() {
    echo "cluster: $*" >&2
    exit 1
}

# Something listens on TCP port $1, on any address (Linux: /proc/net).
listening() {
    hex=$(printf ':%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'
}

# Process $1 runs (an exited child stays a zombie until waited for).
alive() {
    [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

for port in $REDIS_PORT $NODE_PORTS; do
    if listening "$port"; then
        what="chatd node (set NODE_PORTS to use others)"
        [ "$port" = "$REDIS_PORT" ] && what="Redis (set REDIS_PORT to use another)"
        fail "port $port is taken: something already listens there; it is needed for the $what." \
             "Stop what holds it (ss -ltnp 'sport = :$port' names it) and run make cluster again."
    fi
done
command -v redis-server >/dev/null 2>&1 || fail "redis-server is not installed (make cluster installs it)"
[ -x "$CHATD_BIN" ] || fail "$CHATD_BIN is not built (make cluster builds it)"

mkdir -p "$dir"
pids=""
stop() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --appendonly yes --save '' \
    --logfile redis.log &
redis_pid=$!
pids="$pids $redis_pid"
up=no
for i in $(seq 100); do
    alive "$redis_pid" || fail "redis-server exited at start (see $dir/redis.log)"
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then up=yes; break; fi
    sleep 0.1
done
[ "$up" = yes ] || fail "redis-server did not answer on port $REDIS_PORT within 10 s (see $dir/redis.log)"

node_pids=""
for port in $NODE_PORTS; do
    env PORT="$port" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" "$CHATD_BIN" -c "$CONF" &
    node_pids="$node_pids $port:$!"
    pids="$pids $!"
done
for entry in $node_pids; do
    port=${entry%%:*} pid=${entry#*:}
    up=no
    for i in $(seq 100); do
        alive "$pid" || fail "the node on port $port exited at start (its error is above)"
        if listening "$port"; then up=yes; break; fi
        sleep 0.1
    done
    [ "$up" = yes ] || fail "the node on port $port does not listen after 10 s"
done

urls=""
for port in $NODE_PORTS; do urls="${urls:+$urls and }ws://localhost:$port"; done
echo "cluster: $urls share redis://127.0.0.1:$REDIS_PORT"
wait

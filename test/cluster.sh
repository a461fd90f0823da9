#!/bin/sh
# The distributed demo on one machine: a redis-server on 127.0.0.1:6379
# (data in build/cluster/) and two chatd nodes, on ports 5000 and 5001,
# sharing it. Ctrl-C stops all three (only the processes started here).
set -eu
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6379}
dir=build/cluster
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
pids="$pids $!"
for i in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

for port in 5000 5001; do
    env PORT=$port REDIS_URL=redis://127.0.0.1:$REDIS_PORT ./build/chatd -c conf/chatd.conf &
    pids="$pids $!"
done
echo "cluster: ws://localhost:5000 and ws://localhost:5001 share redis://127.0.0.1:$REDIS_PORT"
wait

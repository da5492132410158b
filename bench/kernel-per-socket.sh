#!/bin/sh
# The kernel's memory per loopback WebSocket connection: /proc/meminfo Slab and
# /proc/net/sockstat before and while bench/idle-rss.py holds N idle connections to a
# fresh corecast. Both ends are on this host, so the delta covers 2 sockets per connection.
# Usage (repository root, after `cargo build --release`): bench/kernel-per-socket.sh [N]
set -eu
N=${1:-15000}
PORT=9440
slab() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
target/release/corecast --listen 127.0.0.1:$PORT --shards 2 --max-connections-per-ip=0 --log=warn &
pid=$!
sleep 1
sync; echo 2 > /proc/sys/vm/drop_caches 2>/dev/null || true
before=$(slab); grep TCP: /proc/net/sockstat
python3 bench/idle-rss.py $PORT "$N" $pid &
client=$!
sleep $((N / 2500 + 6))
after=$(slab); grep TCP: /proc/net/sockstat
kill $client; kill $pid; wait 2>/dev/null || true
echo "Slab before ${before} kB, with $N connections ${after} kB:" \
     "$(( (after - before) * 1024 / N )) B per connection (both ends)," \
     "$(( (after - before) * 1024 / (2 * N) )) B per socket"

#!/bin/sh
# Issue 7: cross-node fan-out next to single-node figures. Starts nats-server, then
#   (a) one corecast node with 2 shards, and
#   (b) a cluster of 2 nodes with 1 shard each on the same NATS,
# and runs the same fan-out against each (bench-client spreads the connections and the
# publishers over the targets so that every room has members on every node).
# Usage (repository root, after `cargo build --release --workspace`): bench/cluster.sh
set -eu
BIN=target/release
NATS_PORT=4333
RATE=${RATE:-1000}
shape="-n 2000 --rooms 20 --publishers 20 --rate $RATE --duration 10 --payload 100 --threads 2 --quiet"
common="--rate-limit=0 --max-connections-per-ip=0 --log=warn"

nats-server -a 127.0.0.1 -p $NATS_PORT >/dev/null 2>&1 &
nats=$!
sleep 1

$BIN/corecast --listen 127.0.0.1:9471 --shards 2 $common &
single=$!
sleep 1
$BIN/bench-client fanout $shape --target 127.0.0.1:9471 --server-pid $single --scenario "cluster-baseline-1node-2shards-r$RATE" || true
kill $single; wait $single 2>/dev/null || true

$BIN/corecast --listen 127.0.0.1:9472 --shards 1 --nats-url nats://127.0.0.1:$NATS_PORT --node-name a $common &
a=$!
$BIN/corecast --listen 127.0.0.1:9473 --shards 1 --nats-url nats://127.0.0.1:$NATS_PORT --node-name b $common &
b=$!
sleep 4   # heartbeats: both nodes see each other before the rooms are joined
$BIN/bench-client fanout $shape --target 127.0.0.1:9472,127.0.0.1:9473 --server-pid $a,$b \
  --scenario "cluster-2nodes-1shard-r$RATE" || true
curl -s 127.0.0.1:9472/stats | python3 -c 'import json,sys; print("node a bus:", json.load(sys.stdin).get("bus"))' || true
kill $a $b; wait $a $b 2>/dev/null || true
kill $nats; wait $nats 2>/dev/null || true

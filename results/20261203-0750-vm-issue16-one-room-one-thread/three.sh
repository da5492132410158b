#!/usr/bin/env bash
# Issue 16 target 3 with one server thread each (`compare --shards 1`: corecast one shard,
# the ceiling probe and the tokio peer one thread each): one room of 10,000, max sustained
# and p99 at 100,000 deliveries/s, three `bench-client compare` runs one after the other.
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  $B/bench-client compare --server-bin $B/corecast --shards 1 --results $OUT/run$i \
    --only one-room-10k --only latency-one-room-100k \
    > $OUT/run$i.log 2>&1
  echo "run $i done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/progress
done

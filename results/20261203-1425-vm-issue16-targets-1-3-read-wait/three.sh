#!/usr/bin/env bash
# Issue 16 targets 1, 2 and 3 with corecast unpinned (`bench-client compare`'s default placement
# since the pinning runs): 100 rooms × 100 and one room of 10,000, max sustained, and 100,000
# deliveries/s (p99, server CPU per delivery); corecast against the ceiling probe and the tokio
# peer, three `bench-client compare` runs one after the other.
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  $B/bench-client compare --server-bin $B/corecast --shards 2 --results $OUT/run$i \
    --only rooms-100x100 --only latency-100x100-50k --only latency-100x100-100k --only one-room-10k --only latency-one-room-100k \
    > $OUT/run$i.log 2>&1
  echo "run $i done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/progress
done

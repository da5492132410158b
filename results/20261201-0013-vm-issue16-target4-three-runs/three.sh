#!/usr/bin/env bash
# Issue 16 target 4 (1,000 rooms × 10 and 10 rooms × 1,000: max sustained, p99 and server CPU per
# delivery at 100,000 deliveries/s), corecast against the ceiling probe and the tokio peer, three
# `bench-client compare` runs one after the other.
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  $B/bench-client compare --server-bin $B/corecast --shards 2 --results $OUT/run$i \
    --only rooms-1000x10 --only rooms-10x1000 --only latency-1000x10-100k --only latency-10x1000-100k \
    > $OUT/run$i.log 2>&1
  echo "run $i done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/progress
done

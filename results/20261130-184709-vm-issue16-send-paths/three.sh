#!/usr/bin/env bash
# Issue 16 targets 1-3 on both send paths, three runs each, alternating direct / io_uring,
# each run the same `bench-client compare` (corecast, the ceiling probe and the tokio peer).
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  for path in direct uring; do
    $B/bench-client compare --server-bin $B/corecast --shards 2 --server-arg=--send-path=$path \
      --results $OUT/$path/run$i \
      --only rooms-100x100 --only latency-100x100-50k --only latency-100x100-100k \
      --only one-room-10k --only latency-one-room-100k > $OUT/$path/run$i.log 2>&1
    echo "$path run $i done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/progress
  done
done

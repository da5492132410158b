#!/usr/bin/env bash
# Issue 16 target 2 (100 × 100 p99 at 50,000 and 100,000 deliveries/s): corecast with its defaults
# (pinned shards) and with --no-pin, three runs each, alternating; each run one `bench-client compare`
# (corecast, the ceiling probe and the tokio peer, same client).
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  for pin in pinned no-pin; do
    extra=(); [ $pin = no-pin ] && extra=(--server-arg=--no-pin)
    mkdir -p $OUT/$pin
    $B/bench-client compare --server-bin $B/corecast --shards 2 "${extra[@]}" --results $OUT/$pin/run$i \
      --only latency-100x100-50k --only latency-100x100-100k > $OUT/$pin/run$i.log 2>&1
    echo "$pin run $i done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/progress
  done
done

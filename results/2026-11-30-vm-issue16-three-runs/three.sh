#!/usr/bin/env bash
# The three-run comparison (issue 16 targets 1-5), one run after the other.
# Usage (repository root, after `cargo build --release --workspace`):
#   results/2026-11-30-vm-issue16-three-runs/three.sh OUT_DIR
set -u
B=${BIN:-target/release}
OUT=$1
for i in 1 2 3; do
  $B/bench-client compare --server-bin $B/corecast --shards 2 --results $OUT/run$i \
    --only idle-15k --only one-room-10k --only rooms-100x100 --only rooms-1000x10 --only rooms-10x1000 \
    --only latency-100x100-50k --only latency-100x100-100k --only latency-one-room-100k \
    --only latency-1000x10-100k --only latency-10x1000-100k > $OUT/run$i.log 2>&1
  echo "run $i done $(date -u +%H:%M:%S)" >> $OUT/progress
done

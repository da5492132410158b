#!/usr/bin/env bash
# Issue 16 target 6's shape (100 rooms × 100, 1,000 messages/s of 100 bytes = 100,000
# deliveries/s) for DURATION s (default 60) with one server thread and one client thread
# against two of each, for corecast, the ceiling probe and the tokio peer, RUNS rounds
# (default 3) of the six in a fixed order. Each run is the ten-minute run's script
# (../20261201-032848-vm-issue16-sustained-timeline/run.sh) with a shorter DURATION.
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/placement.sh results/<this folder>
set -u
OUT=$1
RUN=$(dirname "$0")/../20261201-032848-vm-issue16-sustained-timeline/run.sh
export DURATION=${DURATION:-60}
for i in $(seq "${RUNS:-3}"); do
  mkdir -p "$OUT/round$i"
  TAG=s1c1 SHARDS=1 CLIENT_THREADS=1 "$RUN" "$OUT/round$i"
  TAG=s2c2 SHARDS=2 CLIENT_THREADS=2 "$RUN" "$OUT/round$i"
  TAG=t1c1 SERVER=ceiling SERVER_THREADS=1 CLIENT_THREADS=1 "$RUN" "$OUT/round$i"
  TAG=t2c2 SERVER=ceiling SERVER_THREADS=2 CLIENT_THREADS=2 "$RUN" "$OUT/round$i"
  TAG=t1c1 SERVER=tokio SERVER_THREADS=1 CLIENT_THREADS=1 "$RUN" "$OUT/round$i"
  TAG=t2c2 SERVER=tokio SERVER_THREADS=2 CLIENT_THREADS=2 "$RUN" "$OUT/round$i"
done

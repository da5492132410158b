#!/bin/sh
# Issue 18: what the durable log costs the fan-out. The same 100 rooms x 100 members
# fan-out at a fixed rate against a fresh server in memory (no --data-dir), then with
# --data-dir under each --fsync policy, one run folder per run in results/ (deliveries/s,
# latency percentiles, server CPU per delivery: bench-client samples --server-pid).
# Usage (repository root, after `cargo build --release -p corecast -p bench-client`):
#   bench/durable-cost.sh            RATE=5000 DURATION=10 BIN=target/release by default
set -eu
BIN=${BIN:-target/release}
RATE=${RATE:-5000}
DURATION=${DURATION:-10}
PORT=${PORT:-19430}
for mode in memory never interval=200 always; do
  dir=$(mktemp -d /tmp/corecast-durable-XXXXXX)
  if [ "$mode" = memory ]; then extra=""; else extra="--data-dir=$dir --fsync=$mode"; fi
  # shellcheck disable=SC2086 # $extra is a list of flags
  $BIN/corecast --listen 127.0.0.1:$PORT --shards 2 --rate-limit=0 --max-connections-per-ip=0 --log=warn $extra &
  pid=$!
  # Wait until it listens (a loaded host can take seconds), at most 30 s.
  i=0
  until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done
  name=$(echo "durable-$mode-100x100-$RATE" | tr -d '=')
  $BIN/bench-client fanout -n 10000 --rooms 100 --publishers 100 --rate "$RATE" --duration "$DURATION" \
    --payload 100 --connect-rate 10000 --threads 2 --target 127.0.0.1:$PORT --server-pid $pid \
    --scenario "$name" --quiet || true
  kill $pid; wait $pid 2>/dev/null || true
  echo "$mode: log on disk after the run: $(du -sb "$dir" | cut -f1) bytes"
  rm -rf "$dir"
  PORT=$((PORT + 1))
done

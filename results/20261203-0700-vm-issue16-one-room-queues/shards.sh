#!/usr/bin/env bash
# One room of 10,000, 3 s steps as in `compare`, at RATES messages/s: corecast with one
# shard, corecast with two, and the ceiling probe with one thread, alternating, RUNS runs
# each.
# Usage (repository root, after `cargo build --release --workspace`):
#   RATES=226 results/<this folder>/shards.sh OUT_DIR
set -u
R=${BIN:-target/release}
OUT=$1
RATES=${RATES:-"226 269"}
RUNS=${RUNS:-3}
mkdir -p "$OUT/runs"
PORT=9400
run() {
  local label=$1 rate=$2; shift 2
  "$@" > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$R/bench-client" fanout -n 10000 --rooms 1 --publishers 1 --payload 100 --rate "$rate" \
    --duration 3 --drain 5 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/runs" --scenario "p-$label-$rate" --quiet > "$OUT/$label-$rate.fanout.log" 2>&1
  kill "$P"; wait "$P" 2> /dev/null
  printf '%s %s: %s\n' "$label" "$rate" "$(grep "step 0" "$OUT/$label-$rate.fanout.log" | head -1)" >> "$OUT/steps.txt"
}
C="--listen=127.0.0.1:$PORT --shards=2 --no-pin --rate-limit=0 --max-connections-per-ip=0"
for i in $(seq "$RUNS"); do
  for rate in $RATES; do
    run "shards1-$i" "$rate" "$R/corecast" --listen=127.0.0.1:$PORT --shards=1 --no-pin --rate-limit=0 --max-connections-per-ip=0
    run "shards2-$i" "$rate" "$R/corecast" $C
    run "ceiling1-$i" "$rate" "$R/corecast-ceiling" --listen=127.0.0.1:$PORT --threads=1
  done
done

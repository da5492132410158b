#!/usr/bin/env bash
# One room of 10,000 at 1.9 M deliveries/s (190 messages/s), where corecast's unpinned ramp
# step failed the 1 s p99 bound: corecast (as `bench-client compare` starts it) and the
# ceiling probe, alternating, each recorded with perf for 5 s of an 8 s step.
# Usage (repository root, after `cargo build --release --workspace`; needs perf):
#   results/<this folder>/profile-one-room.sh OUT_DIR
set -u
R=${BIN:-target/release}
OUT=$1
mkdir -p "$OUT/profile-runs"
PORT=9400
run() {
  local label=$1; shift
  "$@" > "$OUT/profile-$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$R/bench-client" fanout -n 10000 --rooms 1 --publishers 1 --payload 100 --rate 190 \
    --duration 8 --drain 3 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/profile-runs" --scenario "prof-$label" --quiet > "$OUT/profile-$label.fanout.log" 2>&1 &
  local F=$!
  # Connecting 10,000 takes about a second; record the middle of the step.
  sleep 4
  perf record -F 999 -g -p "$P" -o "$OUT/profile-$label.perf" -- sleep 5 > /dev/null 2>&1
  wait "$F"
  kill "$P"; wait "$P" 2> /dev/null
  perf report -i "$OUT/profile-$label.perf" --stdio --no-children -g none --sort dso,sym --percent-limit 0.7 \
    2> /dev/null | grep -v "^$" | grep -v "^#" | grep "%" > "$OUT/profile-$label.txt"
  rm -f "$OUT/profile-$label.perf"
  grep "step 0" "$OUT/profile-$label.fanout.log"
}
for i in 1 2; do
  run "corecast-$i" "$R/corecast" --listen=127.0.0.1:$PORT --shards=2 --no-pin --rate-limit=0 --max-connections-per-ip=0
  run "ceiling-$i" "$R/corecast-ceiling" --listen=127.0.0.1:$PORT --threads=2
done

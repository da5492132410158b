#!/usr/bin/env bash
# Idle RSS per connection, 15,000 connections each joined to one of 100 rooms (issue 16
# target 5's shape): two corecast builds, A (before) and B (after), alternating, same flags.
# RATE=5000 paces the connects (default: unpaced, as compare's idle-15k).
# Usage (repository root): RUNS=5 [RATE=5000] A_BIN=dirA B_BIN=dirB idle-ab.sh OUT_DIR
# where dirA and dirB each hold a `corecast` binary (cargo build --release, one commit each).
set -u
OUT=$1
RUNS=${RUNS:-5}
CLIENT=${CLIENT:-target/release/bench-client}
mkdir -p "$OUT/runs"
PORT=19000
run() {
  local label=$1 bin=$2
  "$bin/corecast" --listen=127.0.0.1:$PORT --shards=2 --log=warn --rate-limit=0 --max-connections-per-ip=0 \
    > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$CLIENT" connect -n 15000 --rooms 100 --duration 5 --connect-rate ${RATE:-1000000} --threads=2 \
    --quiet --target=127.0.0.1:$PORT --server-pid=$P --results="$OUT/runs" --scenario="$label" \
    > "$OUT/$label.txt" 2>&1
  local idle
  idle=$(awk '/VmRSS/{print $2}' /proc/$P/status)
  kill "$P"; wait "$P" 2> /dev/null
  printf '%s: %s | server RSS after the hold %s kB\n' "$label" "$(grep -o 'server [0-9]* B RSS/conn' "$OUT/$label.txt")" "$idle" | tee -a "$OUT/summary.txt"
}
for i in $(seq "$RUNS"); do
  run "A-before-$i" "$A_BIN"
  run "B-after-$i" "$B_BIN"
done

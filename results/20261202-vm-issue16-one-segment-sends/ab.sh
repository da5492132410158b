#!/usr/bin/env bash
# One room of 10,000 at a fixed rate, corecast with one iovec segment per frame (A) and
# with a group's frames joined into one segment (B), alternating, each recorded with
# perf for 5 s of an 8 s step: bench-client's verdict, server CPU and the kernel's
# `_copy_from_iter` share of the server's samples.
# Usage (repository root; needs perf):
#   A=<dir with corecast before> B=<dir with corecast after> RATE=190 RUNS=3 \
#     results/<this folder>/ab.sh OUT_DIR
set -u
OUT=$1
RATE=${RATE:-190}
RUNS=${RUNS:-3}
CLIENT=${CLIENT:-target/release/bench-client}
mkdir -p "$OUT/runs"
PORT=9400
run() {
  local label=$1 bin=$2
  "$bin/corecast" --listen=127.0.0.1:$PORT --shards=2 --no-pin --rate-limit=0 --max-connections-per-ip=0 \
    > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$CLIENT" fanout -n 10000 --rooms 1 --publishers 1 --payload 100 --rate "$RATE" \
    --duration 8 --drain 3 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/runs" --scenario "$label" --quiet > "$OUT/$label.fanout.log" 2>&1 &
  local F=$!
  sleep 4
  perf record -F 999 -g -p "$P" -o "$OUT/$label.perf" -- sleep 5 > /dev/null 2>&1
  wait "$F"
  kill "$P"; wait "$P" 2> /dev/null
  perf report -i "$OUT/$label.perf" --stdio --no-children -g none --sort dso,sym --percent-limit 0.7 \
    2> /dev/null | grep -v "^$" | grep -v "^#" | grep "%" > "$OUT/$label.txt"
  rm -f "$OUT/$label.perf"
  printf '%s: %s | %s\n' "$label" "$(grep -o 'p50.*' "$OUT/$label.fanout.log" | head -1)" \
    "$(grep -m1 '_copy_from_iter' "$OUT/$label.txt" | awk '{print "_copy_from_iter " $1}')"
}
for i in $(seq "$RUNS"); do
  run "A-$i" "$A"
  run "B-$i" "$B"
done

#!/usr/bin/env bash
# 1,000 rooms × 10 at 100,000 deliveries/s (10,000 connections, 1,000 publishers, 10,000
# msg/s), corecast A (glommio re-arms its throughput preemption timer on every reactor
# loop) against B (the timer stays armed until it fires), alternating, each recorded with
# perf for 5 s of an 8 s step: bench-client's verdict and server CPU, and the kernel's
# `io_poll_find` share of the server's samples (the cancels' search of pending polls).
# PLACEMENT= (empty) keeps corecast's pinned shards; the default is --no-pin.
# Usage (repository root; needs perf):
#   A=<dir with corecast before> B=<dir with corecast after> RUNS=3 \
#     results/<this folder>/ab.sh OUT_DIR
set -u
OUT=$1
RUNS=${RUNS:-3}
ROOMS=${ROOMS:-1000}
RATE=${RATE:-10000}
CLIENT=${CLIENT:-target/release/bench-client}
mkdir -p "$OUT/runs"
PORT=9400
run() {
  local label=$1 bin=$2
  "$bin/corecast" --listen=127.0.0.1:$PORT --shards=2 ${PLACEMENT---no-pin} --rate-limit=0 --max-connections-per-ip=0 \
    > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$CLIENT" fanout -n 10000 --rooms "$ROOMS" --publishers "$ROOMS" --payload 100 --rate "$RATE" \
    --duration 8 --drain 3 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/runs" --scenario "$label" --quiet > "$OUT/$label.fanout.log" 2>&1 &
  local F=$!
  sleep 4
  perf record -F 999 -g -p "$P" -o "$OUT/$label.perf" -- sleep 5 > /dev/null 2>&1
  wait "$F"
  kill "$P"; wait "$P" 2> /dev/null
  perf report -i "$OUT/$label.perf" --stdio --no-children -g none --sort dso,sym --percent-limit 0.1 \
    2> /dev/null | grep -v "^$" | grep -v "^#" | grep "%" > "$OUT/$label.txt"
  rm -f "$OUT/$label.perf"
  printf '%s: %s | %s | %s\n' "$label" "$(grep -o 'p50.*' "$OUT/$label.fanout.log" | head -1)" \
    "$(grep -m1 'io_poll_find' "$OUT/$label.txt" | awk '{print "io_poll_find " $1}')" \
    "$(grep -m1 '_raw_spin_unlock_irqrestore' "$OUT/$label.txt" | awk '{print "spin_unlock_irqrestore " $1}')"
}
for i in $(seq "$RUNS"); do
  run "A-$i" "$A"
  run "B-$i" "$B"
done

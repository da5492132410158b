#!/bin/sh
# Issue 6: what the history ring costs the fan-out. Runs the same fan-out against a
# fresh server with history on (the default) and off (--history-messages 0), twice each,
# alternating, and leaves one run folder per run in results/.
# Usage (repository root, after `cargo build --release --workspace`): bench/history-cost.sh
set -eu
BIN=target/release
PORT=9410
for round in ${ROUNDS:-1 2}; do
  for mode in on off; do
    if [ "$mode" = off ]; then extra="--history-messages=0"; else extra=""; fi
    $BIN/corecast --listen 127.0.0.1:$PORT --shards 2 --rate-limit=0 --max-connections-per-ip=0 --log=warn $extra &
    pid=$!
    sleep 1
    $BIN/bench-client fanout -n 10000 --rooms 100 --publishers 100 --rate 5000 --duration 10 \
      --payload 100 --connect-rate 10000 --threads 2 --target 127.0.0.1:$PORT --server-pid $pid \
      --scenario "history-$mode-100x100-r$round" --quiet || true
    kill $pid; wait $pid 2>/dev/null || true
    PORT=$((PORT + 1))
  done
done

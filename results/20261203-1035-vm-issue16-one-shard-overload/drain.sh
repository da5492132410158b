#!/usr/bin/env bash
# One room of 10,000 at RATE messages/s (× 10,000 deliveries/s) for 3 s with a 2 s drain, as
# `bench-client compare --shards 1` runs its 6.4 M step: corecast with one shard and the
# ceiling probe with one thread, alternating, RUNS runs each. Every ~0.5 s until the client
# ends it samples the summed socket queues of both ends (`ss`: the server's receive and send
# queues, the client's receive and send queues; receive queues of the server and send queues of
# the client in bytes) and, for corecast, its `/stats` message counters (`deliveries`: frames it
# handed to a connection) and congestion pauses; once more after the client ends.
# Usage (repository root, after `cargo build --release --workspace`):
#   RATE=640 RUNS=3 results/<this folder>/drain.sh OUT_DIR
set -u
R=${BIN:-target/release}
OUT=$1
RATE=${RATE:-640}
RUNS=${RUNS:-3}
mkdir -p "$OUT/runs"
PORT=9400
sample() {
  ss -tnH state established "( sport = :$PORT )" |
    awk '{r+=$1; s+=$2; n++} END {printf "server sockets %d recv-q %d B send-q %.1f MB | ", n, r, s/1e6}'
  ss -tnH state established "( dport = :$PORT )" |
    awk '{r+=$1; s+=$2; n++} END {printf "client sockets %d recv-q %.1f MB send-q %d B\n", n, r/1e6, s}'
}
stats() {
  curl -s "127.0.0.1:$PORT/stats" | python3 -c "import json, sys; s = json.load(sys.stdin); c = s['counters']
print('    /stats messages', s['messages'], 'congestion_pauses', c['congestion_pauses'], 'slow_consumer_closes', c['slow_consumer_closes'])" 2> /dev/null
}
run() {
  local label=$1; shift
  "$@" > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$R/bench-client" fanout -n 10000 --rooms 1 --publishers 1 --payload 100 --rate "$RATE" \
    --duration 3 --drain 2 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/runs" --scenario "d$RATE-$label" --quiet > "$OUT/$label.fanout.log" 2>&1 &
  local F=$!
  local t0; t0=$(date +%s%N)
  while kill -0 "$F" 2> /dev/null; do
    printf '%s t=%.1f s  ' "$label" "$(( $(date +%s%N) - t0 ))e-9" >> "$OUT/queues.txt"; sample >> "$OUT/queues.txt"
    case $label in corecast*) stats >> "$OUT/queues.txt" ;; esac
    sleep 0.5
  done
  case $label in corecast*) printf '%s after the client ended:' "$label" >> "$OUT/queues.txt"; stats >> "$OUT/queues.txt" ;; esac
  kill "$P"; wait "$P" 2> /dev/null
  printf '%s: %s\n' "$label" "$(grep "step 0" "$OUT/$label.fanout.log" | head -1)" >> "$OUT/queues.txt"
}
for i in $(seq "$RUNS"); do
  run "corecast1-$i" "$R/corecast" --listen=127.0.0.1:$PORT --shards=1 --no-pin --rate-limit=0 --max-connections-per-ip=0
  run "ceiling1-$i" "$R/corecast-ceiling" --listen=127.0.0.1:$PORT --threads=1
done

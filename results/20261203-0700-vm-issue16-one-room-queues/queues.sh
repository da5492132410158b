#!/usr/bin/env bash
# One room of 10,000 at RATE messages/s (× 10,000 deliveries/s), corecast (as `bench-client
# compare` starts it) and the ceiling probe alternating, 8 s steps: where the backlog sits
# and where the CPU goes in the middle of a step.
#  * Three samples, a second apart, of the summed socket queues (`ss`): the server's send
#    queues (bytes the client's window has not taken) and the client's receive queues (bytes
#    it has not read).
#  * Over the same 4 s, sched.py: the host's CPU split and each busy thread's time on CPU
#    and time runnable but waiting for a CPU; and the host's TCP counters (`nstat`): bytes
#    and segments sent, and how the receivers coalesced them.
# Usage (repository root, after `cargo build --release --workspace`):
#   RATE=190 RUNS=3 results/<this folder>/queues.sh OUT_DIR
set -u
R=${BIN:-target/release}
HERE=$(dirname "$0")
OUT=$1
RATE=${RATE:-190}
RUNS=${RUNS:-3}
mkdir -p "$OUT/runs"
PORT=9400
sample() {
  ss -tnH state established "( sport = :$PORT )" | awk '{s+=$2; n++} END {printf "server sockets %d send-q %.1f MB  ", n, s/1e6}'
  ss -tnH state established "( dport = :$PORT )" | awk '{r+=$1; n++} END {printf "client sockets %d recv-q %.1f MB\n", n, r/1e6}'
}
run() {
  local label=$1; shift
  "$@" > "$OUT/$label.server.log" 2>&1 &
  local P=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  timeout 120 "$R/bench-client" fanout -n 10000 --rooms 1 --publishers 1 --payload 100 --rate "$RATE" \
    --duration 8 --drain 5 --p99-bound-ms 1000 --connect-rate 20000 --target "127.0.0.1:$PORT" \
    --server-pid "$P" --results "$OUT/runs" --scenario "q$RATE-$label" --quiet > "$OUT/$label.fanout.log" 2>&1 &
  local F=$!
  # Connecting 10,000 takes about a second: the window is seconds 2.5-6.5 of the run.
  sleep 2.5
  nstat -n > /dev/null
  python3 "$HERE/sched.py" 4 > "$OUT/$label.sched.txt" &
  local S=$!
  for t in 1 2 3; do
    sleep 1
    printf '%s t=%s ' "$label" "$t" >> "$OUT/queues.txt"; sample >> "$OUT/queues.txt"
  done
  wait "$S"
  nstat -z IpExtOutOctets TcpOutSegs TcpExtTCPRcvCoalesce TcpExtTCPRcvCollapsed TcpExtPruneCalled > "$OUT/$label.nstat.txt"
  wait "$F"
  kill "$P"; wait "$P" 2> /dev/null
  printf '%s: %s\n' "$label" "$(grep "step 0" "$OUT/$label.fanout.log" | head -1)" >> "$OUT/queues.txt"
}
for i in $(seq "$RUNS"); do
  run "corecast-$i" "$R/corecast" --listen=127.0.0.1:$PORT --shards=2 --no-pin --rate-limit=0 --max-connections-per-ip=0
  run "ceiling-$i" "$R/corecast-ceiling" --listen=127.0.0.1:$PORT --threads=2
done

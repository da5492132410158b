#!/usr/bin/env bash
# Heap profile of corecast holding 15,000 idle connections, each joined to one of 100
# rooms (paced at RATE connects/s, default 5,000), with heaptrack. Needs a build with the system allocator
# (heaptrack does not see mimalloc's heap):
#   cargo build --release --no-default-features --bin corecast   (into SYSBIN)
# Usage (repository root): SYSBIN=<dir with that corecast> heap.sh LABEL OUT_DIR [corecast flags...]
# Writes OUT_DIR/heap-LABEL.zst and OUT_DIR/stacks-LABEL.txt (peak heap by call stack).
set -u
label=$1 out=$2; shift 2
SYSBIN=${SYSBIN:?set SYSBIN to a directory with a --no-default-features corecast}
CLIENT=${CLIENT:-target/release/bench-client}
PORT=19400
mkdir -p "$out"
heaptrack -o "$out/heap-$label" "$SYSBIN/corecast" --listen=127.0.0.1:$PORT --shards=2 --log=warn \
  --rate-limit=0 --max-connections-per-ip=0 "$@" > "$out/heap-$label.log" 2>&1 &
H=$!
for _ in $(seq 300); do curl -sf http://127.0.0.1:$PORT/health > /dev/null && break; sleep 0.1; done
P=$(pgrep -P $H -f corecast || pgrep -f "corecast --listen=127.0.0.1:$PORT" | tail -1)
timeout 120 "$CLIENT" connect -n 15000 --rooms 100 --duration 6 --connect-rate ${RATE:-5000} --threads=2 \
  --quiet --target=127.0.0.1:$PORT --results="$out/client" > "$out/heap-$label.client.txt" 2>&1 &
C=$!
# Once all 15,000 are upgraded (the server's /stats), hold 3 s, then end the server with
# SIGKILL: a graceful shutdown would queue a close frame per connection and make the
# shutdown, not the idle hold, the heap's peak.
for _ in $(seq 600); do
  n=$(curl -sf http://127.0.0.1:$PORT/stats | grep -o '"websockets":[0-9]*' | grep -o '[0-9]*$')
  [ "${n:-0}" -ge 15000 ] && break; sleep 0.1
done
sleep 3
kill -KILL "$P"; wait $C; wait $H
heaptrack_print -f "$out/heap-$label.zst" --flamegraph-cost-type peak -F "$out/stacks-$label.txt" | grep 'peak heap'

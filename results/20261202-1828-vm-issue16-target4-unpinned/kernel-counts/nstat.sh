#!/usr/bin/env bash
# TCP counters (nstat, host-wide) over 5 s of an 8 s fixed-rate step.
# Usage (repository root): OUT=<folder> nstat.sh LABEL ROOMS RATE -- <server listening on 127.0.0.1:9400> (as count.sh)
set -u
label=$1 rooms=$2 rate=$3; shift 4
OUT=${OUT:?set OUT to an output folder}; mkdir -p $OUT/runs
CLIENT=${CLIENT:-target/release/bench-client}
"$@" > $OUT/nstat-$label.server.log 2>&1 &
P=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9400) 2>/dev/null && break; sleep 0.1; done
sleep 0.5
timeout 120 $CLIENT fanout -n 10000 --rooms $rooms --publishers $rooms --payload 100 --rate $rate \
  --duration 8 --drain 3 --p99-bound-ms 1000 --connect-rate 20000 --target 127.0.0.1:9400 \
  --server-pid $P --results $OUT/runs --scenario $label --quiet > $OUT/nstat-$label.fanout.log 2>&1 &
F=$!
sleep 4
nstat -n; sleep 5; nstat > $OUT/nstat-$label.txt
wait $F
kill $P; wait $P 2>/dev/null
echo "$label: $(grep -o 'p50.*' $OUT/nstat-$label.fanout.log | head -1)"

#!/usr/bin/env bash
# Per-delivery kernel event counts for a server at a fixed rate: syscalls, io_uring
# requests and packets sent, counted on the server's threads for 5 s of an 8 s step.
# Usage (repository root; needs perf): OUT=<folder> count.sh LABEL ROOMS RATE -- <server listening on 127.0.0.1:9400>
# e.g. OUT=/tmp/k count.sh cc-1 1000 10000 -- target/release/corecast --listen=127.0.0.1:9400 --shards=2 --no-pin --rate-limit=0 --max-connections-per-ip=0
#      OUT=/tmp/k count.sh ceil-1 1000 10000 -- target/release/corecast-ceiling --listen 127.0.0.1:9400 --threads 2
set -u
label=$1 rooms=$2 rate=$3; shift 4
OUT=${OUT:?set OUT to an output folder}; mkdir -p $OUT/runs
CLIENT=${CLIENT:-target/release/bench-client}
"$@" > $OUT/$label.server.log 2>&1 &
P=$!
for _ in $(seq 100); do curl -sf -m1 http://127.0.0.1:9400/health > /dev/null && break; (exec 3<>/dev/tcp/127.0.0.1/9400) 2>/dev/null && break; sleep 0.1; done
sleep 0.5
timeout 120 $CLIENT fanout -n 10000 --rooms $rooms --publishers $rooms --payload 100 --rate $rate \
  --duration 8 --drain 3 --p99-bound-ms 1000 --connect-rate 20000 --target 127.0.0.1:9400 \
  --server-pid $P --results $OUT/runs --scenario $label --quiet > $OUT/$label.fanout.log 2>&1 &
F=$!
sleep 4
perf stat -x, -e raw_syscalls:sys_enter,io_uring:io_uring_submit_req,net:net_dev_xmit,task-clock,context-switches -p $P -o $OUT/$label.stat -- sleep 5
wait $F
kill $P; wait $P 2>/dev/null
echo "$label: $(grep -o 'p50.*' $OUT/$label.fanout.log | head -1)"
awk -F, -v r=$rate -v rooms=$rooms 'BEGIN{d=r*10000/rooms*5} /^[0-9]/{printf "  %s %.3f per delivery (%s)\n", $3, $1/d, $1}' $OUT/$label.stat

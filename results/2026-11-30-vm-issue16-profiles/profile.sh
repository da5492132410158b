#!/usr/bin/env bash
# Usage: PORT=<port> profile.sh <label> <server command listening on 127.0.0.1:$PORT...>
# e.g.  PORT=9400 profile.sh corecast-uring target/release/corecast --listen=127.0.0.1:9400 --shards=2 --rate-limit=0 --max-connections-per-ip=0 --send-path=uring
# Needs perf and inferno (`cargo install inferno`).
# Runs 100 x 100 at 100K deliveries/s for 8 s and records perf -g for 5 s of it.
set -u
R=target/release
label=$1; shift
PORT=${PORT:-9400}
out=${OUT:-results/profiles}
mkdir -p $out/runs
"$@" > $out/$label.server.log 2>&1 &
P=$!
for i in $(seq 50); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
timeout 100 $R/bench-client fanout -n 10000 --rooms 100 --publishers 100 --payload 100 --rate 1000 --duration 8 --drain 3 --connect-rate 20000 --threads 2 --target 127.0.0.1:$PORT --server-pid $P --results $out/runs --scenario prof-$label --quiet > $out/$label.fanout.log 2>&1 &
F=$!
sleep 4
perf record -F 999 -g -p $P -o $out/$label.perf -- sleep 5 > /dev/null 2>&1
wait $F
kill $P; wait $P 2>/dev/null
perf script -i $out/$label.perf 2>/dev/null | inferno-collapse-perf > $out/$label.folded
inferno-flamegraph --title "$label: 100 x 100 at 100K deliveries/s" < $out/$label.folded > $out/$label.svg
grep step $out/$label.fanout.log

#!/usr/bin/env bash
# one.sh NAME BIN ARGS...: start the server (corecast or corecast-ceiling) with ARGS, run 100 rooms x 100
# at RATE msg/s (these runs: RATE=1000 DUR=60) and print the step's percentiles. SLICE=US sets the EEVDF
# slice of every server and client thread 1.5 s after the start (slice.py). From the repository root:
#   RATE=1000 DUR=60 SLICE=300 RES=/tmp/x results/20261201-032848-vm-issue16-sustained-timeline/slice/one.sh sl300 corecast --shards=2 --no-pin
set -u
name=$1; shift; bin=$1; shift
port=$((20000 + RANDOM % 20000))
B=target/release
case $bin in
  corecast) $B/corecast --listen=127.0.0.1:$port --log=warn --rate-limit=0 --max-connections-per-ip=0 "$@" > ${RES:-.}/$name.server.log 2>&1 & ;;
  *) $B/$bin --listen=127.0.0.1:$port "$@" > ${RES:-.}/$name.server.log 2>&1 & ;;
esac
spid=$!
for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
$B/bench-client fanout -n 10000 --rooms 100 --publishers 100 --payload 100 --rate ${RATE:-500} --duration ${DUR:-8} --drain 3 --p99-bound-ms 2 --connect-rate 20000 --threads=2 --quiet --target=127.0.0.1:$port --server-pid=$spid --results=${RES:-.} --scenario=$name > ${RES:-.}/$name.client.log 2>&1 &
bc=$!; if [ -n "${SLICE:-}" ]; then sleep 1.5; for p in $spid $bc $(pgrep -P $bc); do python3 $(dirname $0)/slice.py $SLICE $p; done; grep -h "se.slice" /proc/$spid/task/*/sched /proc/$bc/task/*/sched | sort | uniq -c >&2; fi; wait $bc
if [ "$bin" = corecast ]; then curl -s 127.0.0.1:$port/stats > ${RES:-.}/$name.stats.json; fi
kill $spid; wait $spid 2>/dev/null
d=$(ls -td ${RES:-.}/*-$name | head -1)
python3 - "$d" "$name" <<'PY'
import json,sys
d=json.load(open(sys.argv[1]+'/summary.json'));s=d['steps'][0];l=s['latency_ms'];c=s['cpu'];v=s['verdict']
print(sys.argv[2], 'p50',l['p50'],'p90',l['p90'],'p99',l['p99'],'p999',l['p99_9'],'max',l['max'],'cli%',round(c['client_pct']),'srv%',round(c['server_pct']),'lost',v['lost'])
PY

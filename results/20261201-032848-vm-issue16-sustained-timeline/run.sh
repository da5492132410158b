#!/usr/bin/env bash
# Issue 16 target 6: 10 minutes at 100,000 deliveries/s in 100 rooms × 100 (1,000 msg/s of 100 bytes),
# corecast with its defaults plus `--no-pin` (the load generator shares the 2 cores), server RSS sampled
# every 5 s into rss.tsv. `SERVER=ceiling` runs the ceiling probe (2 threads) instead, as the reference,
# and `SERVER=tokio` the mainstream peer (tokio + tokio-tungstenite, 2 worker threads).
# Variants: SHARDS (corecast's shards, default 2), SERVER_THREADS (the probe's or the peer's, default 2),
# CLIENT_THREADS (bench-client's engine threads, default 2), DURATION (s, default 600), TAG (name suffix),
# SERVER_ARGS (more corecast flags).
# Usage (repository root, after `cargo build --release --workspace`):
#   results/<this folder>/run.sh results/<this folder>
#   SERVER=ceiling results/<this folder>/run.sh results/<this folder>
set -u
B=${BIN:-target/release}
OUT=$1
port=$((20000 + RANDOM % 20000))
server=${SERVER:-corecast}
name=$server${TAG:+-$TAG}
if [ "$server" = ceiling ]; then
  $B/corecast-ceiling --listen=127.0.0.1:$port --threads=${SERVER_THREADS:-2} > $OUT/$name-server.log 2>&1 &
elif [ "$server" = tokio ]; then
  $B/corecast-tokio-peer --listen=127.0.0.1:$port --threads=${SERVER_THREADS:-2} > $OUT/$name-server.log 2>&1 &
else
  $B/corecast --listen=127.0.0.1:$port --shards=${SHARDS:-2} --log=warn --rate-limit=0 --max-connections-per-ip=0 --no-pin ${SERVER_ARGS:-} \
    > $OUT/$name-server.log 2>&1 &
fi
spid=$!
trap 'kill $spid 2>/dev/null' EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
( t0=$(date +%s); echo -e "secs\trss_kib" > $OUT/$name-rss.tsv
  while kill -0 $spid 2>/dev/null; do
    echo -e "$(( $(date +%s) - t0 ))\t$(awk '/VmRSS/ {print $2}' /proc/$spid/status 2>/dev/null)" >> $OUT/$name-rss.tsv; sleep 5
  done ) &
$B/bench-client fanout -n 10000 --rooms 100 --publishers 100 --payload 100 --rate 1000 --duration ${DURATION:-600} --drain 5 \
  --p99-bound-ms 5 --connect-rate 20000 --threads=${CLIENT_THREADS:-2} --quiet --target=127.0.0.1:$port --server-pid=$spid \
  --results=$OUT --scenario=sustained-100x100-100k-$name > $OUT/$name-client.log 2>&1
echo "bench-client rc=$?" >> $OUT/$name-client.log
[ "$server" = corecast ] && curl -s 127.0.0.1:$port/stats > $OUT/$name-stats.json

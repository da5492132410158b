#!/usr/bin/env bash
# Idle connections that join no public room (bench/idle-rss.py: a Python client holding
# 15,000 upgraded connections): every connection a new user ("new") or all one user
# ("same"), builds A and B alternating, RUNS rounds (default 3).
# Usage (repository root): A_BIN=dirA B_BIN=dirB [RUNS=3] idle-rss-ab.sh >> summary.txt
set -u
for i in $(seq "${RUNS:-3}"); do
  for b in A B; do
    for mode in new same; do
      bin=$A_BIN; [ $b = B ] && bin=$B_BIN
      "$bin/corecast" --listen=127.0.0.1:19000 --shards=2 --log=warn --rate-limit=0 --max-connections-per-ip=0 > /dev/null 2>&1 &
      P=$!
      for _ in $(seq 100); do curl -sf http://127.0.0.1:19000/health > /dev/null && break; sleep 0.1; done
      if [ $mode = same ]; then out=$(python3 bench/idle-rss.py 19000 15000 $P same); else out=$(python3 bench/idle-rss.py 19000 15000 $P); fi
      echo "$b $mode $i: $out"
      kill $P; wait $P 2> /dev/null
    done
  done
done

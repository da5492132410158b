#!/usr/bin/env bash
# Cluster nodes' RSS per connection, two corecast builds alternating: A (personal rooms made
# with a user's first connection on a node) and B (made by the first frame for the user).
# 60,000 connections in 600 rooms of 100 over 4 nodes and one nats-server, each connection
# a new user, the flags of the million-connection runs. Usage (repository root):
#   RUNS=5 A_BIN=dirA B_BIN=dirB ab.sh OUT_DIR
# where dirA and dirB each hold `corecast` (cargo build --release, one commit each) and
# `bench-client`.
set -u
OUT=$1
RUNS=${RUNS:-5}
export NODE_ARGS="--cluster-room-buckets 64 --presence-events-max-members 10 --cluster-node-timeout 15"
for i in $(seq "$RUNS"); do
  for side in A B; do
    bin=A_BIN; [ $side = B ] && bin=B_BIN
    mkdir -p "$OUT/$side-$i"
    bench/million.sh -n 60000 --nodes 4 --rooms 600 --connect-rate 5000 --bin "${!bin}" --results "$OUT/$side-$i" \
      > "$OUT/$side-$i/run.log" 2>&1
    printf '%s-%s: %s | %s\n' "$side" "$i" "$(grep -o 'corecast nodes RSS:.*' "$OUT/$side-$i/run.log")" \
      "$(grep -o 'connections: [0-9]*/[0-9]* held' "$OUT/$side-$i/run.log")" | tee -a "$OUT/summary.txt"
  done
done

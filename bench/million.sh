#!/usr/bin/env bash
# bench/million.sh: many connections against a corecast cluster on ONE host, in one
# command. A process here may hold at most RLIMIT_NOFILE descriptors (20,000 on the
# reference host), so N corecast nodes (1 shard each, <= --per-node connections each)
# share the load over one nats-server, exactly as a cluster would be deployed.
#
#   bench/million.sh -n 60000                      # 60K idle, one room (4 nodes)
#   bench/million.sh -n 60000 --rooms 600          # 600 rooms of 100
#   bench/million.sh -n 1000000 --duration 60      # the million (56 nodes)
#   bench/million.sh -n 6000 --nodes 3 --dry-run   # only the host checks
#   bench/million.sh -n 1000000 --mode ramp -- --start-rate 1 --factor 2 --max-rate 16
#                                                  # one room of a million, fixed-rate steps
#
# Options:
#   -n N               total connections (default 60000)
#   --rooms R          rooms to spread them over (default 1)
#   --nodes K          corecast nodes (default: ceil(N / per-node))
#   --per-node C       connections per node (default 18000; must stay under RLIMIT_NOFILE)
#   --mode M           bench-client mode: connect (idle hold, default), ramp or fanout;
#                      arguments after `--` go to bench-client as they are
#   --duration S       seconds to hold them all (connect mode; default 15)
#   --ping-interval S  the nodes' --ping-interval (default 20): shorter than the hold, so
#                      every connection is pinged and must answer during it
#   --connect-rate X   connection attempts per second, all workers (default 5000)
#   --single           one corecast node without NATS (the baseline a cluster node's
#                      cost per connection is compared with; N <= --per-node)
#   --shared-port      all nodes on one port (SO_REUSEPORT across processes) instead of a
#                      port each; the kernel's hash then decides the split per node
#   --bin DIR          where corecast and bench-client are (default target/release)
#   --results DIR      run folders go there (default results)
#   --dry-run          run the host checks, print the plan, start nothing
#   --kill-node-after S  SIGKILL the last node S seconds after bench-client's first
#                      publishing step begins (--mode connect: once it has connected,
#                      during the hold), as it reports in its progress log; bench-client
#                      gets --failover, so the node's connections reconnect to the other
#                      nodes and recover there. The kill is recorded in cluster.txt
#   --profile S        5 s after the load is on (as for --kill-node-after), record a
#                      host-wide CPU profile for S seconds (`perf record -a -g`, when
#                      perf is on PATH): profile.txt (CPU by process, hottest symbols)
#                      and profile.folded (folded stacks for a flamegraph; the raw
#                      `perf script` text without inferno-collapse-perf) in the run folder
#   NODE_ARGS="…"      (environment) extra flags for every corecast node, e.g.
#                      NODE_ARGS="--cluster-room-buckets 64" for many rooms
#
# It checks the host first and refuses (exit 2) with the reason when the target cannot
# be reached: available memory, fs.file-max, the per-process descriptor limit, the
# ephemeral port range, the binaries and nats-server. It starts nats-server and the
# nodes on loopback, waits until every node sees all the others, runs `bench-client
# connect`, samples the RSS of every node and of nats-server while the connections are
# held, and stops only the processes it started (by PID), also when interrupted.
# Why a script rather than a bench-client mode: bench/README section in
# bench-client/README.md ("A cluster on one host").
set -euo pipefail

N=60000 ROOMS=1 NODES=0 PER_NODE=18000 DURATION=15 RATE=5000 SHARED=0 DRY=0 SINGLE=0 MODE=connect PING=20 KILL_AFTER=-1 PROFILE=0
BC_EXTRA=()
BIN=${BIN:-target/release} RESULTS=results
# Estimated bytes per connection, all components (server and client sockets' kernel
# memory, corecast, bench-client, NATS), for the memory check: measured figures in
# bench-client/README.md. Override with BYTES_PER_CONN=….
BYTES_PER_CONN=${BYTES_PER_CONN:-14000}

die() { printf 'million: %s\n' "$*" >&2; exit 2; }
while (($#)); do
    case $1 in
        -n) N=$2; shift ;;
        --rooms) ROOMS=$2; shift ;;
        --nodes) NODES=$2; shift ;;
        --per-node) PER_NODE=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connect-rate) RATE=$2; shift ;;
        --shared-port) SHARED=1 ;;
        --single) SINGLE=1 NODES=1 ;;
        --bin) BIN=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        --dry-run) DRY=1 ;;
        --mode) MODE=$2; shift ;;
        --ping-interval) PING=$2; shift ;;
        --kill-node-after) KILL_AFTER=$2; shift ;;
        --profile) PROFILE=$2; shift ;;
        --) shift; BC_EXTRA=("$@"); break ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
((NODES > 0)) || NODES=$(((N + PER_NODE - 1) / PER_NODE))
SHOWN_EXTRA=("${BC_EXTRA[@]}") run_flags=''
if ((KILL_AFTER >= 0)); then
    ((!SINGLE && NODES >= 2)) || die "--kill-node-after needs a cluster of at least 2 nodes"
    BC_EXTRA=(--failover "${BC_EXTRA[@]}")
    run_flags=" --kill-node-after $KILL_AFTER"
fi
((PROFILE == 0)) || run_flags+=" --profile $PROFILE"
PER=$(((N + NODES - 1) / NODES))
suffix='' shared_flag='' layout='a port per node'
if ((SHARED)); then suffix=-shared shared_flag=' --shared-port' layout='one shared port (SO_REUSEPORT)'; fi
if ((SINGLE)); then suffix=-single shared_flag=' --single' layout='one node, no NATS'; fi

# ---- host checks: refuse before starting anything ----------------------------------
problems=()
[[ -x $BIN/corecast && -x $BIN/bench-client ]] || problems+=("no $BIN/corecast or $BIN/bench-client: cargo build --release --workspace")
((SINGLE)) || command -v nats-server >/dev/null || problems+=("nats-server not on PATH (Debian package nats-server)")
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
need_kb=$((N * BYTES_PER_CONN / 1024 + 1024 * 1024))
((avail_kb >= need_kb)) || problems+=("memory: $((avail_kb / 1024)) MiB available, $((need_kb / 1024)) MiB needed ($BYTES_PER_CONN B per connection + 1 GiB)")
file_max=$(cat /proc/sys/fs/file-max)
((file_max >= 2 * N + 100000)) || problems+=("fs.file-max is $file_max, needs >= $((2 * N + 100000)) (a client and a server socket per connection)")
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] || ((nofile >= PER + 512)) || problems+=("RLIMIT_NOFILE (hard) is $nofile: $PER connections per node need $((PER + 512)); use more nodes (--per-node)")
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
ports=$((hi - lo + 1))
((ports >= 5000)) || problems+=("ip_local_port_range $lo-$hi has $ports ports; bench-client needs >= 5000 per source address")
if [[ -r /proc/sys/net/netfilter/nf_conntrack_count ]] && (($(cat /proc/sys/net/netfilter/nf_conntrack_count) > 0)); then
    ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
    ((ct_max >= N + 10000)) || problems+=("connection tracking is active and nf_conntrack_max is $ct_max (< $N connections)")
fi
((NODES <= 200)) || problems+=("$NODES nodes: more than 200, raise --per-node")

printf 'plan: %d connections, %d room(s), %d nodes x ~%d, %s, hold %ss\n' "$N" "$ROOMS" "$NODES" "$PER" \
    "$layout" "$DURATION"
printf 'host: %d MiB available, fs.file-max %s, nofile %s, ports %s-%s, %s CPUs\n' \
    $((avail_kb / 1024)) "$file_max" "$nofile" "$lo" "$hi" "$(nproc)"
if [[ -x tuning/check ]]; then
    # For information: tuning/check describes a single process holding a million; the
    # checks above are the ones this cluster layout needs.
    tuning/check | sed 's/^/  tuning\/check: /' || true
fi
if ((${#problems[@]})); then
    printf 'million: refusing to start:\n' >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 2
fi
if ((DRY)); then echo 'dry run: checks passed, nothing started'; exit 0; fi

# ---- start: nats-server and the nodes; stop only those on exit ---------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/million.XXXXXX")
pids=()
# Still running (a zombie, dead but not yet reaped, does not count).
# No subprocess per check: the cleanup checks ~120 PIDs ten times a second, and forking
# awk for each made it take minutes on a host saturated by a million connections.
running() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    [[ ${stat##*) } != Z* ]]
}
cleanup() {
    # A signal during the cleanup must not cut it short: that left 58 nodes running when
    # a run was stopped while they were still shutting down. It takes at most ~20 s.
    trap - EXIT
    trap '' INT TERM
    if ((${#pids[@]})); then
        kill "${pids[@]}" 2>/dev/null || true
        # Graceful first (a node says 1001 to its clients within its shutdown timeout);
        # whatever still runs after 20 s (e.g. a node starved by memory pressure) is killed.
        for ((t = 0; t < 200; t++)); do
            alive=0
            for p in "${pids[@]}"; do running "$p" && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

nats_port=$(free_port) nats_mon=$(free_port)
cluster_args=(--nats-url "nats://127.0.0.1:$nats_port")
if ((SINGLE)); then
    cluster_args=() nats=$$   # nothing to sample: this shell stands in, its RSS is constant
else
    nats-server -a 127.0.0.1 -p "$nats_port" -m "$nats_mon" >"$work/nats.log" 2>&1 &
    nats=$!
    pids+=("$nats")
fi
base=$(free_port)
targets=() node_pids=() node_ports=()
for ((i = 0; i < NODES; i++)); do
    # A free port each (base + i could be taken by someone else's socket).
    port=$base
    if ((!SHARED && i > 0)); then port=$(free_port); fi
    node_ports+=("$port")
    # abuse limits lifted as for every load test; --no-pin lets the scheduler spread the
    # single-shard nodes over every CPU (pinning would put each on the first CPU).
    "$BIN/corecast" --listen "127.0.0.1:$port" --shards 1 --no-pin --rate-limit=0 --ping-interval "$PING" \
        --max-connections-per-ip=0 --log="${LOG:-warn}" "${cluster_args[@]}" \
        --node-name "n$i" ${NODE_ARGS:-} >"$work/node$i.log" 2>&1 &
    node_pids+=($!)
    pids+=($!)
    if ((!SHARED || i == 0)); then targets+=("127.0.0.1:$port"); fi
done

# Every node must see all the others before anyone joins (otherwise rooms are sequenced
# twice for a moment, and the run measures that instead).
deadline=$((SECONDS + 30 + NODES / 2))
for ((i = 0; i < NODES; i++)); do
    port=${node_ports[i]}
    want="\"nodes\":$NODES[,}]"
    ((SINGLE)) && want='"bus":"off"'
    until curl -sf "127.0.0.1:$port/health" 2>/dev/null | grep -q "$want"; do
        for ((j = 0; j < NODES; j++)); do
            kill -0 "${node_pids[j]}" 2>/dev/null || die "node $j exited: $(tail -3 "$work/node$j.log")"
        done
        ((SECONDS < deadline)) || die "node $i does not see all $NODES nodes after $((30 + NODES / 2)) s: $(curl -s "127.0.0.1:$port/health")"
        sleep 0.2
    done
    if ((SHARED)); then break; fi
done
sleep 1

node_list=$(IFS=,; echo "${node_pids[*]}")
# Kernel memory the sockets cost: the socket slab caches (TCP, sock_inode_cache, filp,
# eventpoll_*) plus TCP buffer pages. Slab as a whole is not used: compiles and other
# work on the host move the dentry and kmalloc caches by hundreds of MiB.
kernel_kb() {
    local slab pages
    slab=$(awk '$1 ~ /^(TCP|TCPv6|sock_inode_cache|filp|eventpoll_epi|eventpoll_pwq)$/ {s += $2 * $4} END {print int(s / 1024)}' /proc/slabinfo 2>/dev/null || echo 0)
    pages=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
    echo $((${slab:-0} + ${pages:-0} * 4))
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
kernel_base=$(kernel_kb)
nats_ticks0=$(cpu_ticks "$nats") t0=$SECONDS
nats_base=$(rss_kb "$nats")
nodes_base=0
for p in "${node_pids[@]}"; do nodes_base=$((nodes_base + $(rss_kb "$p"))); done

# Peak RSS (nodes, nats-server) and NATS subscriptions while the connections are held,
# sampled once a second.
subs() { curl -sf "127.0.0.1:$nats_mon/subsz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_subscriptions"])' 2>/dev/null || echo 0; }
# The nodes' heartbeat and congestion counters, summed over the nodes that answer within
# $1 seconds each: "<websockets open> <name value>... (<answered> of <nodes> nodes answered)".
node_counters() {
    for port in "${node_ports[@]}"; do curl -sf -m "$1" "127.0.0.1:$port/stats" || true; echo; done | python3 -c '
import json, sys
t = {"heartbeat_pings": 0, "pongs_received": 0, "heartbeat_closes": 0, "heartbeat_closes_deferred": 0, "congestion_pauses": 0, "sweeps_late": 0, "reactor_lost_wakes": 0}
ws = n = 0
for line in sys.stdin:
    if line.strip():
        s = json.loads(line)
        n += 1
        ws += s.get("connections", {}).get("websockets", 0)
        for k in t: t[k] += s.get("counters", {}).get(k, 0)
print(ws, " ".join(f"{k} {v}" for k, v in t.items()), f"({n} of {sys.argv[1]} nodes answered)")' "${#node_ports[@]}" 2>/dev/null || echo 0
}
(
    peak_nodes=0 peak_nats=0 peak_subs=0 peak_kernel=0 peak_ws=0
    while sleep 1; do
        # The nodes' heartbeat counters, summed, as they stood the last time the most
        # connections were open: the end of the hold, before bench-client's teardown
        # (after it, nodes rightly close the sockets it no longer answers on).
        sample=$(node_counters 2)
        ws=${sample%% *}
        if ((ws > 0 && ws >= peak_ws)); then peak_ws=$ws; echo "${sample#* } (at $ws connections)" >"$work/beats"; fi
        s=0
        for p in "${node_pids[@]}"; do s=$((s + $(rss_kb "$p"))); done
        n=$(rss_kb "$nats") u=$(subs) k=$(kernel_kb)
        ((s > peak_nodes)) && peak_nodes=$s
        ((n > peak_nats)) && peak_nats=$n
        ((u > peak_subs)) && peak_subs=$u
        ((k > peak_kernel)) && peak_kernel=$k
        echo "$peak_nodes $peak_nats $peak_subs $peak_kernel" >"$work/peak"
    done
) &
sampler=$!
pids+=("$sampler")

scenario="million-${N}c-${ROOMS}r-${NODES}n$suffix"
mkdir -p "$RESULTS"
target_list=$(IFS=,; echo "${targets[*]}")
# The pids are only given per target when there is a port each: bench-client divides
# each server's growth by its own share of connections.
pid_arg=$node_list
# bench-client's own hard bound assumes the requested connect rate is reached; dozens of
# nodes and the client on two cores connect slower than that, so allow three times the
# planned connect time (a bound, not a wait).
bound=$((3 * N / RATE + DURATION + 300))
[[ $MODE == connect ]] || bound=$((3 * N / RATE + 1800)) # ramp steps: bench-client stops them itself
mode_args=()
[[ $MODE == connect ]] && mode_args=(--duration "$DURATION")
# The node kill and the profile start when bench-client says the load is on: its progress
# log (kept in the work folder, not shown) names the start of each step. Asking the nodes
# instead took minutes per round on a saturated host, and the asking slowed the connects.
progress=$work/progress.log
: >"$progress"
bc_args=("$MODE" -n "$N" --rooms "$ROOMS" --target "$target_list" --server-pid "$pid_arg" "${mode_args[@]}"
    --connect-rate "$RATE" --timeout "$bound" --results "$RESULTS" --scenario "$scenario")
if ((KILL_AFTER >= 0 || PROFILE > 0)); then
    "$BIN/bench-client" "${bc_args[@]}" "${BC_EXTRA[@]}" 2> >(tee "$progress" | grep -v '^\[\|^bench-client: ' >&2) &
else
    "$BIN/bench-client" "${bc_args[@]}" --quiet "${BC_EXTRA[@]}" &
fi
bc=$!
pids+=("$bc")
# Returns once the load is on: the first publishing step has begun (bench-client's
# "step 0" line), or in connect mode all connections are up ("connected"), or
# bench-client is gone.
load_mark='^bench-client: step 0:'
[[ $MODE != connect ]] || load_mark='^bench-client: connected '
wait_for_load() {
    until grep -q "$load_mark" "$progress"; do
        running "$bc" || return 0
        sleep 1
    done
}
if ((KILL_AFTER >= 0)); then
    # The node kill: S seconds after the load is on, SIGKILL the last node, as a crash would.
    (
        victim=${node_pids[NODES - 1]}
        wait_for_load
        running "$bc" || exit 0
        sleep "$KILL_AFTER"
        if running "$victim" && kill -KILL "$victim"; then
            echo "node n$((NODES - 1)) (pid $victim) killed with SIGKILL at $(date -u +%H:%M:%S) UTC, $KILL_AFTER s after bench-client's \"$(grep -m1 "$load_mark" "$progress" | sed 's/^bench-client: //')\"" >"$work/killed"
        fi
    ) &
    pids+=($!)
fi
if ((PROFILE > 0)); then
    if command -v perf >/dev/null; then
        # The profile of the limit: the whole host (nodes, nats-server, bench-client and
        # the kernel's loopback work) while the first publishing step runs.
        (
            wait_for_load
            running "$bc" || exit 0
            sleep 5
            perf record -a -g -F 99 -o "$work/perf.data" -- sleep "$PROFILE" >"$work/perf.log" 2>&1 || true
        ) &
        profiler=$!
        pids+=("$profiler")
    else
        echo "million: --profile: skipped: perf not on PATH" >&2
    fi
fi
rc=0
wait "$bc" || rc=$?
# A profile still recording (bench-client ended early) is finished, not cut: S seconds at most.
[[ -z ${profiler:-} ]] || wait "$profiler" 2>/dev/null || true

read -r peak_nodes peak_nats peak_subs peak_kernel <"$work/peak" || { peak_nodes=0 peak_nats=0 peak_subs=0 peak_kernel=0; }
nats_secs=$(( ($(cpu_ticks "$nats") - nats_ticks0) / $(getconf CLK_TCK) )) wall=$((SECONDS - t0))
# Bus traffic of the whole run: messages nats-server received from the nodes and
# delivered to them (one published message counts once per receiving subscription).
nats_msgs=$(curl -sf "127.0.0.1:$nats_mon/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("in {:,}, out {:,} ({:,} MiB out)".format(v["in_msgs"], v["out_msgs"], v["out_bytes"] // 1048576))' 2>/dev/null || echo unavailable)
beats=$(cat "$work/beats" 2>/dev/null || echo unavailable)
# The same counters once bench-client has finished (they only grow): the closes of the
# publishing steps are in them. Asked with a long timeout, as saturated nodes answer late,
# and the answering nodes are counted (during the run a sample misses nodes that are slow).
beats_last=$(node_counters 30)
if [[ $beats_last == *" "* ]]; then beats_last=${beats_last#* }; else beats_last=unavailable; fi
held=$N
run=$(ls -dt "$RESULTS"/*"$scenario" 2>/dev/null | head -1 || true)
if [[ -n $run && -f $run/summary.json ]]; then
    held=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); c=s.get("connect",{}); print(c.get("held", c.get("connected", 0)) or sys.argv[2])' "$run/summary.json" "$N" 2>/dev/null || echo "$N")
fi
((held > 0)) || held=$N
cat >"${run:-$work}/cluster.txt" <<EOF
cluster: $N connections requested, $held held; $NODES nodes, $ROOMS room(s)
corecast nodes RSS: $((nodes_base / 1024)) MiB at start, peak $((peak_nodes / 1024)) MiB, $(((peak_nodes - nodes_base) * 1024 / held)) B per connection
nats-server RSS:    $((nats_base / 1024)) MiB at start, peak $((peak_nats / 1024)) MiB, $(((peak_nats - nats_base) * 1024 / held)) B per connection
nats subscriptions: $peak_subs at peak
nats-server CPU:    ${nats_secs} s over ${wall} s
nats messages:      $nats_msgs
kernel (socket slab caches + TCP buffers): $((kernel_base / 1024)) MiB at start, peak $((peak_kernel / 1024)) MiB, $(((peak_kernel - kernel_base) * 1024 / held)) B per connection (a client and a server socket)
heartbeats (nodes' counters at the end of the hold, --ping-interval $PING): $beats
heartbeats (every node's counters after bench-client finished): $beats_last
node kill: $(cat "$work/killed" 2>/dev/null || echo none)
command: ${NODE_ARGS:+NODE_ARGS='$NODE_ARGS' }$0 -n $N --rooms $ROOMS --nodes $NODES --mode $MODE --duration $DURATION --ping-interval $PING --connect-rate $RATE$shared_flag$run_flags${SHOWN_EXTRA[*]:+ -- ${SHOWN_EXTRA[*]}}
EOF
cat "${run:-$work}/cluster.txt"
[[ -z $run ]] || cp "$work"/*.log "$run/" 2>/dev/null || true
if [[ -n $run && -s $work/perf.data ]]; then
    {
        echo "# CPU samples by process name, then the hottest symbols (perf report, flat)"
        perf report -i "$work/perf.data" --no-children --sort comm -g none --stdio 2>/dev/null | grep -v '^$' | head -60
        perf report -i "$work/perf.data" --no-children --sort comm,dso,sym -g none --stdio 2>/dev/null | grep -v '^$' | head -150
    } >"$run/profile.txt" || true
    perf script -i "$work/perf.data" 2>/dev/null | { command -v inferno-collapse-perf >/dev/null && inferno-collapse-perf || cat; } >"$run/profile.folded" 2>/dev/null || true
fi
[[ -n $run ]] && echo "run folder: $run"
exit "$rc"

#!/usr/bin/env bash
# Issue 17: what permessage-deflate costs and saves on the fan-out. One room of N members,
# 2 KiB JSON `data` payloads (records like an application's documents, `--payload-json`;
# `--kind text` sends them unquoted in `text` instead), the same server (`--compression on`)
# driven twice per size: receivers that do not offer deflate ("off": the server sends the
# frame as it is) and receivers that do ("on": the server compresses each message once per
# shard and every member gets the same compressed frame). The rate is chosen per size so
# that every size runs at the same deliveries/s, which makes server CPU per delivery
# comparable across sizes: with one compression per message and shard, the compression
# cost per delivery falls as the room grows, so CPU per delivery with deflate should stay
# flat (or fall) as N grows.
#
# Usage (repository root, after `cargo build --release --workspace`):
#   bench/compression.sh [--sizes 500,2000,8000] [--deliveries 20000] [--duration 15]
#                        [--payload 2048] [--kind data|text] [--reps 3] [--out results]
# Writes one folder RESULTS/<stamp>-<host>-compression with a bench-client run folder per
# (rep, size, mode), compression.json (every run's figures) and compression.md (medians of the
# reps with their spread). Every server is started fresh and stopped by PID.
set -euo pipefail
command_line="$0 $*"

sizes=500,2000,8000
deliveries=20000
duration=15
payload=2048
kind=data
reps=3
out=results
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift 2 ;;
    --deliveries) deliveries=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --payload) payload=$2; shift 2 ;;
    --kind) kind=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

BIN=${BIN:-target/release}
for b in corecast bench-client; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run cargo build --release --workspace" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "curl is needed to read /stats" >&2; exit 1; }

stamp=$(date -u +%Y%m%d-%H%M%S)
dir="$out/$stamp-$(hostname -s)-compression"
mkdir -p "$dir/runs"
runs="$dir/runs.jsonl"
: > "$runs"

server=""
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

IFS=, read -r -a size_list <<< "$sizes"
for rep in $(seq 1 "$reps"); do
  for n in "${size_list[@]}"; do
    rate=$(python3 -c "print(round($deliveries / $n, 3))")
    for mode in off on; do
      port=$(free_port)
      "$BIN/corecast" --listen "127.0.0.1:$port" --shards 2 --rate-limit 0 --max-connections-per-ip 0 \
        --compression on --log warn > "$dir/runs/server-r$rep-n$n-$mode.log" 2>&1 &
      server=$!
      for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
        kill -0 "$server" 2>/dev/null || { echo "server exited, see $dir/runs/server-r$rep-n$n-$mode.log" >&2; exit 1; }
        sleep 0.1
      done
      flag=""; [ "$mode" = on ] && flag="--deflate"
      if [ "$kind" = data ]; then size="--data-bytes $payload"; else size="--payload $payload"; fi
      scenario="compression-$mode-n$n-r$rep"
      "$BIN/bench-client" fanout --target "127.0.0.1:$port" -n "$n" --rooms 1 --publishers 1 \
        $size --payload-json --rate "$rate" --duration "$duration" \
        --server-pid "$server" --results "$dir/runs" --scenario "$scenario" --quiet $flag \
        > "$dir/runs/$scenario.out" 2>&1 || echo "bench-client exited non-zero: $dir/runs/$scenario.out" >&2
      curl -sf "http://127.0.0.1:$port/stats" > "$dir/runs/$scenario-stats.json" || echo '{}' > "$dir/runs/$scenario-stats.json"
      kill "$server"; wait "$server" 2>/dev/null || true; server=""
      run=$(ls -d "$dir"/runs/*-"$scenario" | tail -1)
      python3 - "$run/summary.json" "$dir/runs/$scenario-stats.json" "$rep" "$n" "$mode" "$rate" >> "$runs" <<'PY'
import json, sys
summary, stats, rep, n, mode, rate = sys.argv[1:]
s = json.load(open(summary))
st = json.load(open(stats))
step = s["steps"][0]
comp = st.get("compression", {})
delivered = step["verdict"]["delivered"]
print(json.dumps({
    "rep": int(rep), "members": int(n), "mode": mode, "rate": float(rate),
    "deliveries": delivered,
    "deliveries_per_sec": step["deliveries_per_sec"],
    "lost": step["verdict"]["lost"], "duplicates": step["verdict"]["duplicates"],
    "reordered": step["verdict"]["reordered"], "clean": step["clean"],
    "p50_ms": step["latency_ms"]["p50"], "p99_ms": step["latency_ms"]["p99"],
    "server_cpu_secs": step["cpu"]["server_secs"], "client_cpu_secs": step["cpu"]["client_secs"],
    "wall_secs": step["cpu"]["wall_secs"],
    "server_us_per_delivery": 1e6 * step["cpu"]["server_secs"] / max(1, delivered),
    "client_us_per_delivery": 1e6 * step["cpu"]["client_secs"] / max(1, delivered),
    "wire_bytes_per_delivery": step["counts"]["wire_bytes"] / max(1, delivered),
    "compressed_frames": comp.get("frames", 0),
    "compress_bytes_in": comp.get("bytes_in", 0), "compress_bytes_out": comp.get("bytes_out", 0),
    "compress_ratio": comp.get("ratio", 0), "compress_ms": comp.get("time_ms", 0),
    "run": summary.rsplit("/", 2)[-2],
}))
PY
      tail -1 "$runs"
    done
  done
done

python3 - "$runs" "$dir" "$command_line" <<'PY'
import json, statistics, sys
runs_path, out, command = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
json.dump(runs, open(f"{out}/compression.json", "w"), indent=1)
def cell(vals, fmt):
    m = statistics.median(vals)
    return f"{fmt.format(m)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
rows = ["| members | mode | msg/s | deliveries/s | wire bytes/delivery | server µs/delivery | client µs/delivery | p99 ms | compressing µs/message·shard | compressing µs/delivery | clean |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for n in sorted({r["members"] for r in runs}):
    for mode in ("off", "on"):
        rs = [r for r in runs if r["members"] == n and r["mode"] == mode]
        if not rs:
            continue
        comp = [1000 * r["compress_ms"] / r["compressed_frames"] for r in rs if r["compressed_frames"]]
        per_delivery = [1000 * r["compress_ms"] / r["deliveries"] for r in rs if r["compressed_frames"]]
        rows.append("| {} | {} | {:g} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            n, mode, rs[0]["rate"],
            cell([r["deliveries_per_sec"] for r in rs], "{:,.0f}"),
            cell([r["wire_bytes_per_delivery"] for r in rs], "{:,.0f}"),
            cell([r["server_us_per_delivery"] for r in rs], "{:.2f}"),
            cell([r["client_us_per_delivery"] for r in rs], "{:.2f}"),
            cell([r["p99_ms"] for r in rs], "{:.1f}"),
            cell(comp, "{:.1f}") if comp else "–",
            cell(per_delivery, "{:.3f}") if per_delivery else "–",
            f"{sum(r['clean'] for r in rs)}/{len(rs)}"))
text = f"""# permessage-deflate on/off, one room

Command: `{command}` (repository root, release build). Median of {max(r['rep'] for r in runs)} runs,
(min–max) in brackets. "off": receivers do not offer deflate; "on": every receiver negotiated it
and the server compresses each message once per shard. Wire bytes/delivery: what the
receivers read from their sockets while the step was open (frame headers included, as sent:
compressed or not), divided by deliveries. "compressing" is the server's own deflate time (`/stats` `compression.time_ms`):
per compressed message and shard, and spread over every delivery. Server and client
share the host's 2 cores.

""" + "\n".join(rows) + "\n"
open(f"{out}/compression.md", "w").write(text)
print(text)
PY
echo "== $dir"

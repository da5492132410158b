#!/usr/bin/env python3
"""The table of README.md from a queues.sh output folder: python3 table.py DIR"""
import re, sys, pathlib
d = pathlib.Path(sys.argv[1])
q = (d / "queues.txt").read_text().splitlines()
print("| run | p99 (ms) | client on CPU / waiting for one | server threads on CPU (sum) | host idle (of 200 %) | server send-q, client recv-q at t=3 (MB) |")
print("|---|---|---|---|---|---|")
for label in [f"{s}-{i}" for i in (1, 2, 3) for s in ("corecast", "ceiling")]:
    step = next((l for l in q if l.startswith(label + ":")), None)
    if step is None:
        continue
    p99 = re.search(r"p99 ([0-9.]+)", step).group(1)
    t3 = next(l for l in q if l.startswith(label + " t=3"))
    sq, rq = re.findall(r"([0-9.]+) MB", t3)
    s = (d / f"{label}.sched.txt").read_text().splitlines()
    host = s[0]
    idle = float(re.search(r"idle +([0-9.]+)", host).group(1)) + float(re.search(r"iowait +([0-9.]+)", host).group(1))
    client = next(l for l in s if "engine-" in l)
    con, cw = re.findall(r"(?:on-cpu|runq-wait) +([0-9.]+)", client)
    srv = sum(float(re.search(r"on-cpu +([0-9.]+)", l).group(1)) for l in s if re.search(r" (shard-|ceiling-)\d", l))
    print(f"| {label} | {float(p99):,.0f} | {con} % / {cw} % | {srv:.1f} % | {idle:.1f} % | {sq}, {rq} |")

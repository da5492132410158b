#!/usr/bin/env python3
"""Where the host's CPU went over a window: /proc/stat's split (user, system, idle,
iowait, softirq) and, for every thread on CPU at least 2 % of it, its time on CPU, its
time runnable but waiting for a CPU (schedstat) and its context switches.
Usage: python3 sched.py SECONDS"""
import os, sys, time
def snap(pids):
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
                run, wait, slices = map(int, open(f"/proc/{pid}/task/{tid}/schedstat").read().split())
                st = open(f"/proc/{pid}/task/{tid}/status").read()
                vol = int(st.split("voluntary_ctxt_switches:")[1].split()[0])
                invol = int(st.split("nonvoluntary_ctxt_switches:")[1].split()[0])
                out[(pid, tid)] = (comm, run, wait, slices, vol, invol)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out
def cpustat():
    f = open("/proc/stat").readline().split()[1:8]
    return list(map(int, f))
secs = float(sys.argv[1])
pids = [p for p in os.listdir("/proc") if p.isdigit()]
c0 = cpustat(); a = snap(pids); time.sleep(secs); b = snap(pids); c1 = cpustat()
hz = os.sysconf("SC_CLK_TCK")
names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq"]
print("host: " + "  ".join(f"{n} {100*(y-x)/hz/secs:5.1f}%" for n, x, y in zip(names, c0, c1)))
for k in sorted(b):
    if k not in a: continue
    c, r0, w0, s0, v0, i0 = a[k]; _, r1, w1, s1, v1, i1 = b[k]
    if r1 - r0 < secs * 1e9 * 0.02: continue
    print(f"pid {k[0]} {c:16s} on-cpu {100*(r1-r0)/secs/1e9:5.1f}%  runq-wait {100*(w1-w0)/secs/1e9:5.1f}%  vol-cs {(v1-v0)/secs:8.0f}/s  invol-cs {(i1-i0)/secs:8.0f}/s")

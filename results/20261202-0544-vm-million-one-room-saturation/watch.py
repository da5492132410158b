#!/usr/bin/env python3
"""Beside bench/million.sh: every second, for each corecast shard thread whose CPU time did not
advance for >= STALL s, log its state, syscall, wchan and run-queue wait; dump its kernel stack
once per 20 s. Also counts per second how many shard threads are in each (state, syscall, wchan)."""
import os, sys, time, glob, collections
OUT, STALL, DUR = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def rd(p):
    try:
        with open(p) as f: return f.read()
    except Exception as e: return ""
hist = {}; dumped = {}
end = time.time() + DUR
with open(OUT, "a") as f:
    while time.time() < end:
        now = time.time(); summary = collections.Counter(); nstall = 0
        for comm in glob.glob("/proc/[0-9]*/comm"):
            pid = comm.split('/')[2]
            if rd(comm).strip() != "corecast": continue
            for t in glob.glob(f"/proc/{pid}/task/*"):
                tid = os.path.basename(t); c = rd(t + "/comm").strip()
                if not (c.startswith("shard-") or c == "corecast-bus"): continue
                ss = rd(t + "/schedstat").split()
                if len(ss) < 3: continue
                ex, wait = int(ss[0]), int(ss[1])
                if ex < 100_000_000: continue  # glommio's idle helper thread of the same name
                st = rd(t + "/stat"); state = st[st.rfind(')') + 2:][:1] if st else "?"
                sc = rd(t + "/syscall").split(' ')[0].strip(); wc = rd(t + "/wchan").strip()
                h = hist.get(tid)
                if h is None or h[0] != ex:
                    hist[tid] = (ex, now, wait); continue
                idle = now - h[1]
                if idle >= STALL:
                    nstall += 1
                    summary[(c[:5], state, sc, wc)] += 1
                    if now - dumped.get(tid, 0) > 20:
                        dumped[tid] = now
                        f.write(f"{time.strftime('%H:%M:%S')} STALL pid {pid} tid {tid} {c} idle {idle:.1f}s state {state} syscall {rd(t + '/syscall').strip()[:80]} wchan {wc} waitdelta {(wait - h[2])/1e9:.2f}s\n")
                        f.write("  stack: " + rd(t + "/stack").replace("\n", " | ")[:400] + "\n")
        if summary:
            f.write(f"{time.strftime('%H:%M:%S')} stalled {nstall}: " + ", ".join(f"{k}={v}" for k, v in summary.most_common(6)) + "\n")
        f.flush()
        time.sleep(max(0, 1 - (time.time() - now)))

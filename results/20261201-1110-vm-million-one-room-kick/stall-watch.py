#!/usr/bin/env python3
"""Run beside bench/million.sh: python3 stall-watch.py OUT.txt [STALL_S=6] [FOR_S]. Watch every corecast shard thread; when one is not scheduled for >= STALL s while in
io_uring_enter, dump its kernel stack, syscall args and the fdinfo of its io_uring fds."""
import os, sys, time, glob, re
OUT = sys.argv[1]
STALL = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
END = time.time() + float(sys.argv[3]) if len(sys.argv) > 3 else time.time() + 3600
last = {}      # tid -> (slices, since)
dumped = {}    # tid -> last dump time
def rd(p):
    try:
        with open(p) as f: return f.read()
    except Exception as e: return f"<{e}>"
def dump(pid, tid, why, f):
    f.write(f"==== {time.strftime('%H:%M:%S')} pid {pid} tid {tid} {why}\n")
    f.write("cmdline: " + rd(f"/proc/{pid}/cmdline").replace('\0', ' ')[:300] + "\n")
    f.write("syscall: " + rd(f"/proc/{pid}/task/{tid}/syscall"))
    f.write("wchan: " + rd(f"/proc/{pid}/task/{tid}/wchan") + "\n")
    f.write("stat: " + rd(f"/proc/{pid}/task/{tid}/stat"))
    f.write("stack:\n" + rd(f"/proc/{pid}/task/{tid}/stack"))
    for t in glob.glob(f"/proc/{pid}/task/*"):
        f.write(f"  thread {os.path.basename(t)} {rd(t + '/comm').strip()} syscall {rd(t + '/syscall').split(' ')[0].strip()} schedstat {rd(t + '/schedstat').strip()}\n")
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try: target = os.readlink(fd)
        except Exception: continue
        if "eventfd" in target:
            f.write(f"  eventfd fd {os.path.basename(fd)}: " + rd(f"/proc/{pid}/fdinfo/{os.path.basename(fd)}").replace('\n', ' ') + "\n")
            continue
        if "io_uring" not in target: continue
        info = rd(f"/proc/{pid}/fdinfo/{os.path.basename(fd)}")
        lines = info.splitlines()
        polls = sum(1 for l in lines if l.strip().startswith("op=") or "PollList" in l)
        head = [l for l in lines if re.match(r"(Sq|Cq|CachedSq|CachedCq|SQEs|CQEs)", l)]
        tail_i = [i for i, l in enumerate(lines) if l.startswith("CqOverflowList")]
        f.write(f"  ring fd {os.path.basename(fd)}: " + " ".join(h.replace('\t', '') for h in head) + f" lines={len(lines)}\n")
        if tail_i:
            f.write("    " + "\n    ".join(lines[tail_i[0]:tail_i[0] + 10]) + "\n")
        pl = [i for i, l in enumerate(lines) if l.startswith("PollList")]
        if pl:
            end = tail_i[0] if tail_i else len(lines)
            entries = lines[pl[0] + 1:end]
            f.write(f"    PollList entries: {len(entries)}\n")
            if len(entries) < 20:
                f.write("      " + "\n      ".join(entries) + "\n")
    f.flush()
with open(OUT, "a") as f:
    f.write(f"watch start {time.strftime('%H:%M:%S')} stall>={STALL}s\n"); f.flush()
    healthy_dumped = False
    while time.time() < END:
        now = time.time()
        for comm in glob.glob("/proc/[0-9]*/comm"):
            pid = comm.split('/')[2]
            if rd(comm).strip() != "corecast": continue
            for t in glob.glob(f"/proc/{pid}/task/*"):
                tid = os.path.basename(t)
                if not rd(t + "/comm").startswith("shard-"): continue
                sc = rd(t + "/syscall").split(' ')[0].strip()
                if sc not in ("426", "running"): continue
                ss = rd(t + "/schedstat").split()
                if len(ss) < 3: continue
                slices = ss[2]
                prev = last.get(tid)
                if prev is None or prev[0] != slices:
                    last[tid] = (slices, now)
                    continue
                idle = now - prev[1]
                if idle >= STALL and now - dumped.get(tid, 0) > 30:
                    dumped[tid] = now
                    dump(pid, tid, f"not scheduled for {idle:.1f}s (syscall {sc})", f)
                    if not healthy_dumped:
                        # one healthy shard for comparison
                        for tid2, (s2, since2) in last.items():
                            if now - since2 < 2:
                                p2 = [p for p in glob.glob(f"/proc/[0-9]*/task/{tid2}")]
                                if p2:
                                    dump(p2[0].split('/')[2], tid2, "healthy, for comparison", f); healthy_dumped = True
                                    break
        time.sleep(2)

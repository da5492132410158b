#!/usr/bin/env python3
# slice.py US PID...: set the EEVDF slice (sched_attr.sched_runtime) of every thread of each PID
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_sched_setattr = 314
us = int(sys.argv[1])
for pid in sys.argv[2:]:
    for tid in os.listdir(f"/proc/{pid}/task"):
        # struct sched_attr: u32 size, u32 policy, u64 flags, s32 nice, u32 prio, u64 runtime, deadline, period (VER0 = 48)
        attr = struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, us * 1000, 0, 0)
        buf = ctypes.create_string_buffer(attr)
        r = libc.syscall(SYS_sched_setattr, int(tid), buf, 0)
        if r != 0:
            print("tid", tid, "errno", ctypes.get_errno(), file=sys.stderr)

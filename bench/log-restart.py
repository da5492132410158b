#!/usr/bin/env python3
"""Issue 18: how long a start takes to replay a big log.

Writes a --data-dir whose log holds N messages (default 1,000,000) in R rooms (default
1000, so the default --history-messages 1000 keeps every one), in the log's format
(docs/DURABILITY.md), then starts the server on it and measures the time until it
listens, and the replay time the server logs. Prints one line per figure.

Usage (repository root, after `cargo build --release -p corecast`):
    bench/log-restart.py [--messages N] [--rooms R] [--bin target/release/corecast]
"""
import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib


def record(body):
    return struct.pack("<II", len(body), zlib.crc32(body) & 0xFFFFFFFF) + body


def frame_record(room, epoch, seq, ts, text):
    payload = ('{"type":"message","room":"%s","seq":%d,"user":"bench","text":"%s","ts":%d}'
               % (room, seq, text, ts)).encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, n])
    else:
        head = bytes([0x81, 126]) + struct.pack(">H", n)
    name = room.encode()
    body = bytes([1]) + struct.pack("<H", len(name)) + name + struct.pack("<QQQ", epoch, seq, ts) + head + payload
    return record(body)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--bin", default="target/release/corecast")
    p.add_argument("--shards", type=int, default=2)
    a = p.parse_args()
    d = tempfile.mkdtemp(prefix="corecast-replay-")
    try:
        seg = os.path.join(d, "shard-0")
        os.makedirs(seg)
        per_room = a.messages // a.rooms
        text = "x" * 100
        t0 = time.time()
        written = 0
        with open(os.path.join(seg, "%020d.log" % 1), "wb") as f:
            for seq in range(1, per_room + 1):
                buf = bytearray()
                for r in range(a.rooms):
                    buf += frame_record("room-%d" % r, 1000 + r, seq, 1_700_000_000_000 + seq, text)
                f.write(buf)
                written += len(buf)
        print("log: %d messages in %d rooms, %d bytes, written in %.1f s"
              % (per_room * a.rooms, a.rooms, written, time.time() - t0))
        start = time.time()
        proc = subprocess.Popen(
            [a.bin, "--listen", "127.0.0.1:0", "--shards", str(a.shards), "--no-pin", "--log", "info",
             "--data-dir", d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, NO_COLOR="1"))
        replay_ms = None
        for line in proc.stdout:
            if "log replayed" in line:
                for part in line.split():
                    if part.startswith("took_ms="):
                        replay_ms = int(part.split("=")[1])
            if "ws://" in line:
                break
        listening = time.time() - start
        print("start to listening: %.2f s (replay and compaction as logged: %s ms)" % (listening, replay_ms))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

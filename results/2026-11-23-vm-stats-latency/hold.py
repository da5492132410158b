"""Holds N WebSocket connections, each joined to one of R rooms, for S seconds.

Usage: python3 hold.py N R S PORT   (connections spread over source addresses 127.0.0.2-51)
"""
import asyncio, os, struct, sys

N, R, S, PORT = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

def frame(text: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(text)]) if len(text) < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(text))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))

held = []

async def one(i: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(f"127.0.0.{2 + i % 50}", 0))
    w.write(b"GET /ws?name=u%d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (i, KEY))
    await r.readuntil(b"\r\n\r\n")
    w.write(frame(b'{"type":"join","room":"room-%d"}' % (i % R)))
    await w.drain()
    held.append((r, w))

async def drain(r) -> None:
    try:
        while await r.read(65536):
            pass
    except Exception:
        pass

async def main() -> None:
    sem = asyncio.Semaphore(400)
    async def guarded(i):
        async with sem:
            await one(i)
    await asyncio.gather(*(guarded(i) for i in range(N)))
    readers = [asyncio.create_task(drain(r)) for r, _ in held]
    print(f"held {len(held)}", flush=True)
    await asyncio.sleep(S)

asyncio.run(main())

"""A room message reaches permessage-deflate and plain members on both shards, and
every one of them decodes the same text.

Run by tests/it/compression.rs with the websockets package of tests/python/.venv
(tests/python/requirements.txt):

    python deflate_members.py HOST:PORT

Connects clients with compression (websockets' default permessage-deflate offer) and
without, until each of the server's two shards has both kinds, joins them to one room,
publishes a 2 KiB JSON-heavy text from one of them and checks what each receives.
Prints one JSON line with what it saw; exits 1 on any mismatch.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect

ROOM = "zipped"
TEXT = json.dumps([{"id": i, "user": "member-%d" % i, "status": "online"} for i in range(40)])[:2048]


async def recv_json(ws, kind):
    """The next frame of type `kind`, skipping room traffic (presence events)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if msg.get("type") == kind:
            return msg


async def main(addr):
    members = []  # (ws, shard, deflate)
    wanted = {(s, d) for s in (0, 1) for d in (True, False)}
    for i in range(80):
        deflate = i % 2 == 0
        ws = await connect(
            "ws://%s/ws?name=m%d" % (addr, i),
            compression="deflate" if deflate else None,
            max_size=1 << 20,
        )
        welcome = await recv_json(ws, "welcome")
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        if deflate != ("permessage-deflate" in extensions):
            print(json.dumps({"error": "negotiation", "deflate": deflate, "extensions": extensions}))
            return 1
        key = (welcome["shard"], deflate)
        if key in wanted:
            wanted.discard(key)
            members.append((ws, welcome["shard"], deflate, extensions))
        else:
            await ws.close()
        if not wanted:
            break
    if wanted:
        print(json.dumps({"error": "could not place members", "missing": sorted(wanted)}))
        return 1
    for ws, _, _, _ in members:
        await ws.send(json.dumps({"type": "join", "room": ROOM}))
        await recv_json(ws, "joined")
    await members[0][0].send(json.dumps({"type": "message", "room": ROOM, "text": TEXT}))
    seen = []
    ok = True
    for ws, shard, deflate, extensions in members:
        msg = await recv_json(ws, "message")
        same = msg.get("text") == TEXT
        ok = ok and same
        seen.append({"shard": shard, "deflate": deflate, "extensions": extensions, "same_text": same})
    for ws, _, _, _ in members:
        await ws.close()
    print(json.dumps({"ok": ok, "text_bytes": len(TEXT), "members": seen}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))

// The reconnect policy per close code, over a fake WebSocket that says `welcome` and then
// closes with the code under test: no retry after a protocol violation (1002, 1003, 1007,
// 1009) or an application close (4000–4999, unless asked), a retry after going away,
// restart or overload (1001, 1012, 1013) and after an abnormal end (1006), and after 1008
// only when the token expired and a fresh one can be fetched.

import assert from 'node:assert/strict';
import test from 'node:test';

import { Corecast } from '../dist/index.js';

/** A WebSocket double: opens, sends `welcome`, then closes with `code`/`reason`. */
function closingWith(code, reason) {
  return class FakeWebSocket {
    static OPEN = 1;
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      setImmediate(() => {
        this.readyState = 1;
        this.onopen?.({});
        this.onmessage?.({ data: JSON.stringify({ type: 'welcome', user: 'u', conn: '0-1', shard: 0 }) });
        setImmediate(() => {
          this.readyState = 3;
          this.onclose?.({ code, reason });
        });
      });
    }
    send() {}
    close() {}
  };
}

/** Connects over the double and returns the first `disconnected` event. */
async function firstDisconnect(code, reason = '', options = {}) {
  const client = new Corecast('ws://fake.invalid/ws', {
    name: 'policy',
    WebSocket: closingWith(code, reason),
    backoff: { baseMs: 60_000, capMs: 60_000, minMs: 60_000 },
    ...options,
  });
  const event = new Promise((resolve) => client.on('disconnected', resolve));
  client.connect().catch(() => {});
  const ev = await event;
  client.close();
  return ev;
}

for (const code of [1002, 1003, 1007, 1009]) {
  test(`no retry after ${code}`, async () => {
    assert.equal((await firstDisconnect(code)).willReconnect, false);
  });
}

for (const code of [1001, 1006, 1011, 1012, 1013]) {
  test(`retry after ${code}`, async () => {
    assert.equal((await firstDisconnect(code)).willReconnect, true);
  });
}

test('no retry after an application close (4000–4999) unless asked', async () => {
  assert.equal((await firstDisconnect(4000)).willReconnect, false);
  assert.equal((await firstDisconnect(4999)).willReconnect, false);
  assert.equal((await firstDisconnect(4321, '', { reconnectOnAppClose: true })).willReconnect, true);
});

test('1008: a retry only for an expired token with getToken', async () => {
  assert.equal((await firstDisconnect(1008, 'token expired')).willReconnect, false, 'no way to get a new token');
  const getToken = async () => 'a.b.c';
  assert.equal((await firstDisconnect(1008, 'token expired', { getToken })).willReconnect, true);
  assert.equal((await firstDisconnect(1008, 'rate limit exceeded repeatedly', { getToken })).willReconnect, false);
});

/** A WebSocket double whose n-th connection says `welcome` and closes with `codes[n]`. */
function closingInTurn(codes) {
  let n = 0;
  return class FakeWebSocket {
    static OPEN = 1;
    constructor(url) {
      const code = codes[Math.min(n++, codes.length - 1)];
      return new (closingWith(code, ''))(url);
    }
  };
}

test('1012 (restart with state kept) starts the backoff afresh: the next attempt is the first', async () => {
  const client = new Corecast('ws://fake.invalid/ws', {
    name: 'policy',
    WebSocket: closingInTurn([1006, 1006, 1006, 1012]),
    backoff: { baseMs: 1, capMs: 1, stableMs: 60_000 },
  });
  const attempts = [];
  const done = new Promise((resolve) =>
    client.on('disconnected', (d) => {
      if (d.code === 1012) resolve();
    }),
  );
  client.on('reconnecting', (r) => attempts.push(r.attempt));
  client.connect().catch(() => {});
  await done;
  await new Promise((r) => setImmediate(r));
  client.close();
  assert.deepEqual(attempts.slice(0, 4), [1, 2, 3, 1], `attempts ${attempts}`);
});

// Publishes made while disconnected (queued, bounded, or rejected), request timeouts and
// the reconnect backoff, over a scripted fake WebSocket (no server needed: the timing
// and the answers are the test's).

import assert from 'node:assert/strict';
import test from 'node:test';

import { Corecast, CorecastError } from '../dist/index.js';

/** A fake WebSocket the test opens and answers by hand. `sockets` lists every instance. */
function scripted() {
  const sockets = [];
  class Fake {
    static OPEN = 1;
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
      this.onsend?.(this.sent.at(-1));
    }
    close() {}
    /** Opens and says welcome. */
    welcome() {
      this.readyState = 1;
      this.onopen?.({});
      this.push({ type: 'welcome', user: 'u', conn: '0-1', shard: 0 });
    }
    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    closeWith(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { Fake, sockets };
}

/** Waits (bounded) until `cond()` holds, yielding to the event loop in between. */
async function until(cond, what) {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

test('publishes made before connecting are queued and sent after welcome, in order', async () => {
  const { Fake, sockets } = scripted();
  const client = new Corecast('ws://fake.invalid/ws', { name: 'q', WebSocket: Fake });
  const first = client.room('r').publish('one');
  const second = client.room('r').publish('two');
  client.connect().catch(() => {});
  await until(() => sockets.length === 1, 'the socket');
  const ws = sockets[0];
  let seq = 40;
  ws.onsend = (f) => {
    // Answers arrive later, as from a real socket (never inside send()).
    if (f.type === 'message') {
      const ack = { type: 'ack', ref: f.id, room: f.room, seq: ++seq };
      setImmediate(() => ws.push(ack));
    }
  };
  ws.welcome();
  assert.deepEqual(await Promise.all([first, second]), [41, 42]);
  assert.deepEqual(
    ws.sent.filter((f) => f.type === 'message').map((f) => f.text),
    ['one', 'two'],
  );
  client.close();
});

test('the offline queue is bounded by maxQueue (queue_full), or off with offline: reject', async () => {
  const { Fake } = scripted();
  const bounded = new Corecast('ws://fake.invalid/ws', { name: 'b', WebSocket: Fake, maxQueue: 2 });
  const queued = [bounded.room('r').publish('1'), bounded.room('r').publish('2')];
  await assert.rejects(bounded.room('r').publish('3'), (e) => e instanceof CorecastError && e.code === 'queue_full');
  bounded.close();
  for (const q of queued) await assert.rejects(q, (e) => e instanceof CorecastError);

  const strict = new Corecast('ws://fake.invalid/ws', { name: 's', WebSocket: Fake, offline: 'reject' });
  await assert.rejects(strict.room('r').publish('x'), (e) => e instanceof CorecastError && e.code === 'offline');
  strict.close();
});

test('a request the server never answers rejects with timeout', async () => {
  const { Fake, sockets } = scripted();
  const client = new Corecast('ws://fake.invalid/ws', { name: 't', WebSocket: Fake });
  const connected = client.connect();
  await until(() => sockets.length === 1, 'the socket');
  sockets[0].welcome();
  await connected;
  await assert.rejects(
    client.request({ type: 'presence', room: 'r' }, { timeoutMs: 30 }),
    (e) => e instanceof CorecastError && e.code === 'timeout',
  );
  client.close();
});

test('backoff: full jitter under an exponential, capped ceiling; reset after a stable connection', async () => {
  for (const [stableMs, expectCeiling] of [
    [60_000, (attempt) => Math.min(40, 5 * 2 ** (attempt - 1))],
    [0, () => 5],
  ]) {
    const { Fake, sockets } = scripted();
    const client = new Corecast('ws://fake.invalid/ws', {
      name: 'j',
      WebSocket: Fake,
      backoff: { baseMs: 5, capMs: 40, stableMs },
    });
    const delays = [];
    client.on('reconnecting', (ev) => delays.push(ev));
    client.connect().catch(() => {});
    // Each connection says welcome and then drops abnormally (1006), eight times.
    for (let i = 0; i < 8; i++) {
      await until(() => sockets.length === i + 1, `connection ${i + 1}`);
      sockets[i].welcome();
      sockets[i].closeWith(1006);
    }
    client.close();
    assert.ok(delays.length >= 8, `${delays.length} reconnects`);
    for (const { delay, attempt } of delays.slice(0, 8)) {
      assert.ok(delay >= 0 && delay <= expectCeiling(attempt), `delay ${delay} at attempt ${attempt} (stableMs ${stableMs})`);
    }
    if (stableMs > 0) assert.equal(delays[7].attempt, 8, 'attempts grow while connections do not last');
    else assert.ok(delays.every((d) => d.attempt === 1), 'a stable connection resets the backoff');
  }
});

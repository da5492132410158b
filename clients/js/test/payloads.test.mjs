// Structured payloads, volatile messages, skip_self, and the server subscribing and
// unsubscribing a connection, against the real server.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Corecast } from '../dist/index.js';
import { WebSocket, next, startServer, waitFor } from './helpers.mjs';

const API_KEY = 'test-api-key-0123456789';
let server;
const clients = [];
async function connected(name) {
  const c = new Corecast(server.url, { name, WebSocket });
  clients.push(c);
  await c.connect();
  return c;
}
function api(path, body) {
  return fetch(`${server.http}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  }).then((r) => r.json());
}

before(async () => {
  server = await startServer(['--api-key', API_KEY]);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test('data with an event, volatile messages and skipSelf', { timeout: 30_000 }, async () => {
  const alice = await connected('alice');
  const bob = await connected('bob');
  const ra = alice.room('dash');
  const rb = bob.room('dash');
  await ra.join();
  await rb.join();
  const got = next(rb, 'message');
  const seq = await ra.publish({ home: 2, away: 1 }, { event: 'score' });
  const m = await got;
  assert.equal(seq, 1);
  assert.deepEqual([m.seq, m.event, m.data, m.text], [1, 'score', { home: 2, away: 1 }, undefined]);
  // Volatile: the room's `volatile` event, no seq, and the sender skips its own copy.
  const typing = next(rb, 'volatile');
  const own = [];
  ra.on('volatile', (v) => own.push(v));
  const acked = await ra.publish({ typing: true }, { volatile: true, skipSelf: true });
  const v = await typing;
  assert.ok(Number.isNaN(acked), 'a volatile message has no seq');
  assert.deepEqual([v.seq, v.volatile, v.data], [undefined, true, { typing: true }]);
  // The next sequenced message reaches alice too; her own volatile one never did.
  const mine = next(ra, 'message');
  await rb.publish('after');
  assert.equal((await mine).seq, 2);
  assert.deepEqual(own, []);
  // Tags from a server-side publish.
  const tagged = next(rb, 'message');
  await api('/api/publish', { room: 'dash', data: [1], tags: { source: 'ops' } });
  assert.deepEqual((await tagged).tags, { source: 'ops' });
});

test('the server subscribes and unsubscribes a connection', { timeout: 30_000 }, async () => {
  const carol = await connected('carol');
  const subscribed = next(carol, 'subscribed');
  assert.deepEqual(await api('/api/subscribe', { user: 'carol', room: 'news' }), { connections: 1, refused: 0 });
  const room = await subscribed;
  assert.equal(room.name, 'news');
  assert.equal(room.status, 'joined');
  const got = next(room, 'message');
  await api('/api/publish', { room: 'news', text: 'hello' });
  assert.equal((await got).text, 'hello');
  const left = next(room, 'left');
  await api('/api/unsubscribe', { user: 'carol', room: 'news' });
  assert.deepEqual(await left, { reason: 'unsubscribed by the server' });
  await waitFor(() => room.status === 'idle', 'the room is no longer joined');
});

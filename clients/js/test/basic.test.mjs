// Join, publish and receive on two clients; presence and history across pages; pushes,
// broadcasts, leave; connection state events. Against the real server.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Corecast } from '../dist/index.js';
import { WebSocket, next, startServer, waitFor } from './helpers.mjs';

const API_KEY = 'test-api-key-0123456789';
let server;
const clients = [];
function client(name, opts = {}) {
  const c = new Corecast(server.url, { name, WebSocket, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  server = await startServer(['--api-key', API_KEY]);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test('two clients join, publish and receive; publish resolves with the seq from ack', { timeout: 30_000 }, async () => {
  const alice = client('alice');
  const bob = client('bob');
  const states = [];
  alice.on('connecting', () => states.push('connecting'));
  alice.on('connected', () => states.push('connected'));
  const welcome = await alice.connect();
  assert.equal(welcome.user, 'alice');
  assert.equal(alice.state, 'connected');
  assert.deepEqual(states, ['connecting', 'connected']);
  await bob.connect();
  const ra = alice.room('chat');
  const rb = bob.room('chat');
  const joined = await ra.join();
  assert.equal(joined.members, 1);
  const joins = [];
  ra.on('join', (e) => joins.push(e.user));
  await rb.join();
  await waitFor(() => joins.includes('bob'), 'alice sees bob join');
  const got = [];
  rb.on('message', (m) => got.push(m));
  const seq1 = await ra.publish('hello bob');
  const seq2 = await ra.publish('second');
  assert.equal(seq2, seq1 + 1);
  await waitFor(() => got.length === 2, 'bob receives both');
  assert.deepEqual(
    got.map((m) => [m.user, m.text, m.seq]),
    [
      ['alice', 'hello bob', seq1],
      ['alice', 'second', seq2],
    ],
  );
  assert.equal(typeof got[0].ts, 'number');
  const leaves = [];
  ra.on('leave', (e) => leaves.push(e.user));
  await rb.leave();
  await waitFor(() => leaves.includes('bob'), 'alice sees bob leave');
  assert.equal(rb.status, 'idle');
});

test('presence and history iterate across pages', { timeout: 60_000 }, async () => {
  const names = ['p-anna', 'p-ben', 'p-cleo', 'p-dan', 'p-eve'];
  const cs = names.map((n) => client(n));
  await Promise.all(cs.map((c) => c.connect()));
  await Promise.all(cs.map((c) => c.room('paged').join()));
  const room = cs[0].room('paged');
  const pages = [];
  for await (const page of room.presencePages({ limit: 2 })) pages.push(page);
  assert.deepEqual(
    pages.map((p) => p.users),
    [['p-anna', 'p-ben'], ['p-cleo', 'p-dan'], ['p-eve']],
  );
  assert.ok(pages.every((p) => p.count === 5));
  assert.equal(pages[2].next, undefined);

  const seqs = [];
  for (let i = 1; i <= 23; i++) seqs.push(await room.publish(`m${i}`));
  const history = [];
  let pageCount = 0;
  for await (const page of room.historyPages({ limit: 10 })) {
    pageCount += 1;
    assert.ok(page.messages.length <= 10);
    history.push(...page.messages);
  }
  assert.equal(pageCount, 3);
  assert.deepEqual(
    history.map((m) => m.seq),
    [...seqs].reverse(),
  );
  assert.equal(history[0].text, 'm23');
  const one = await room.history({ before: seqs[5], limit: 2 });
  assert.deepEqual(
    one.messages.map((m) => m.text),
    ['m5', 'm4'],
  );
});

test('personal pushes and broadcasts surface as their own events', { timeout: 30_000 }, async () => {
  const carol = client('carol');
  await carol.connect();
  const pushes = [];
  const broadcasts = [];
  carol.on('push', (m) => pushes.push(m));
  carol.on('broadcast', (m) => broadcasts.push(m));
  const post = (body) =>
    fetch(`${server.http}/api/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }).then((r) => assert.equal(r.status, 200));
  await post({ users: ['carol'], text: 'just for you' });
  await post({ broadcast: true, text: 'for everyone' });
  await waitFor(() => pushes.length === 1 && broadcasts.length === 1, 'push and broadcast');
  assert.equal(pushes[0].room, '@user:carol');
  assert.equal(pushes[0].text, 'just for you');
  assert.equal(broadcasts[0].room, '@all');
  assert.equal(broadcasts[0].text, 'for everyone');
});

test('a fatal close (1009, message too big) is not retried', { timeout: 30_000 }, async () => {
  const dan = client('dan');
  await dan.connect();
  await dan.room('big').join();
  const gone = next(dan, 'disconnected');
  dan.room('big').publish('x'.repeat(70 * 1024)).catch(() => {});
  const d = await gone;
  assert.equal(d.code, 1009);
  assert.equal(d.willReconnect, false);
  assert.equal(dan.state, 'closed');
});

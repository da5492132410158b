// Reconnect with exact recovery: the recovery-under-fire run (connections killed every
// 250 ms while 2,000 messages are published), a quiet recovery with replay, and a resync
// when the server no longer holds the missed messages.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Corecast } from '../dist/index.js';
import { WebSocket, next, startProxy, startServer, waitFor } from './helpers.mjs';

const TOTAL = 2_000;
let server;
let proxy;
const clients = [];
function client(name, url, opts = {}) {
  const c = new Corecast(url, { name, WebSocket, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  // No rate limit: one publisher sends 2,000 messages. History deep enough for the runs
  // below: the test is about the client's recovery, not the server's history bound
  // (the resync test uses its own room with a short history).
  server = await startServer(['--rate-limit', '0', '--history-messages', '5000']);
  proxy = await startProxy(server.addr);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
});

test('recovery under fire: 2,000 messages exactly once, in seq order, while connections die', { timeout: 180_000 }, async () => {
  const publisher = client('publisher', server.url);
  const receiver = client('receiver', proxy.url, { backoff: { baseMs: 20, capMs: 200 } });
  await publisher.connect();
  await receiver.connect();
  const pubRoom = publisher.room('fire');
  const recvRoom = receiver.room('fire');
  await pubRoom.join();
  await recvRoom.join();
  const got = [];
  let recovered = 0;
  let resyncs = 0;
  let connects = 0;
  recvRoom.on('message', (m) => got.push(m));
  recvRoom.on('recovered', () => (recovered += 1));
  recvRoom.on('resync', () => (resyncs += 1));
  receiver.on('connected', () => (connects += 1));

  let kills = 0;
  const killer = setInterval(() => {
    kills += proxy.killAll();
  }, 250);
  const acked = [];
  try {
    // Paced (20 messages every 40 ms or slower), so that the 2,000 span many kills.
    for (let i = 0; i < TOTAL; i += 20) {
      const batch = Array.from({ length: Math.min(20, TOTAL - i) }, (_, j) => pubRoom.publish(`m${i + j}`));
      acked.push(...(await Promise.all(batch)));
      await new Promise((r) => setTimeout(r, 40));
    }
    // Keep killing until the receiver has caught up at least once more under fire.
    await waitFor(() => got.length > 0 && got[got.length - 1].seq >= acked[acked.length - 1], 'the receiver to catch up', 120_000);
  } finally {
    clearInterval(killer);
  }
  assert.equal(acked.length, TOTAL);
  assert.equal(got.length, TOTAL, `received ${got.length} messages`);
  assert.deepEqual(
    got.map((m) => m.seq),
    acked,
    'every seq once, in order',
  );
  assert.deepEqual(
    got.map((m) => m.text),
    Array.from({ length: TOTAL }, (_, i) => `m${i}`),
  );
  assert.equal(resyncs, 0, 'every rejoin recovered');
  assert.ok(kills >= 5 && connects >= 5, `connections were killed (${kills}) and re-established (${connects})`);
  assert.ok(recovered >= 1, `recovered events: ${recovered}`);
  console.log(`recovery under fire: ${kills} connections killed, ${connects} reconnects, ${recovered} recovered rejoins`);
});

test('a quiet reconnect replays what was missed; rejoin carries since', { timeout: 60_000 }, async () => {
  const publisher = client('quiet-pub', server.url);
  const receiver = client('quiet-recv', server.url);
  await publisher.connect();
  await receiver.connect();
  await publisher.room('quiet').join();
  const room = receiver.room('quiet');
  await room.join();
  const got = [];
  room.on('message', (m) => got.push(m.text));
  await publisher.room('quiet').publish('before');
  await waitFor(() => got.length === 1, 'the first message');
  await receiver.close();
  for (const t of ['a', 'b', 'c']) await publisher.room('quiet').publish(t);
  const rec = next(room, 'recovered');
  const joined = next(room, 'joined');
  await receiver.connect();
  const r = await rec;
  assert.equal(r.replayed, 3);
  const info = await joined;
  assert.equal(info.recovered, true);
  assert.equal(info.rejoin, true);
  await publisher.room('quiet').publish('after');
  await waitFor(() => got.length === 5, 'the live message');
  assert.deepEqual(got, ['before', 'a', 'b', 'c', 'after']);
});

test('resync when the missed messages are gone from history', { timeout: 60_000 }, async () => {
  const small = await startServer(['--rate-limit', '0', '--history-messages', '5']);
  try {
    const publisher = client('rs-pub', small.url);
    const receiver = client('rs-recv', small.url);
    await publisher.connect();
    await receiver.connect();
    await publisher.room('short').join();
    const room = receiver.room('short');
    const first = await room.join();
    await receiver.close();
    for (let i = 0; i < 12; i++) await publisher.room('short').publish(`x${i}`);
    const resync = next(room, 'resync');
    await receiver.connect();
    const r = await resync;
    assert.equal(r.previousSeq, first.seq);
    assert.equal(r.seq, first.seq + 12);
    assert.equal(room.seq, r.seq);
    await Promise.all([receiver.close(), publisher.close()]);
  } finally {
    await small.stop();
  }
});

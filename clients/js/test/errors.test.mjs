// A typed CorecastError for every error code of docs/PROTOCOL.md that a client can
// provoke (clients/js/README.md lists the one it cannot: `unavailable`).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Corecast, CorecastError } from '../dist/index.js';
import { WebSocket, next, rejection, startServer } from './helpers.mjs';

let server;
const clients = [];
async function connected(name, opts = {}) {
  const c = new Corecast(server.url, { name, WebSocket, ...opts });
  clients.push(c);
  await c.connect();
  return c;
}

before(async () => {
  // Default rate limit (20/s, burst 40) on purpose; few rooms per connection.
  server = await startServer(['--max-rooms-per-conn', '3', '--max-text-bytes', '100', '--max-data-bytes', '100']);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

async function expectCode(promise, code) {
  const err = await rejection(promise);
  assert.ok(err instanceof CorecastError, `a CorecastError, got ${err}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.fromServer, true);
  return err;
}

test('request errors carry the server code', { timeout: 60_000 }, async () => {
  const c = await connected('erin');
  await expectCode(c.request({ type: 'no-such-type' }), 'unknown_type');
  await expectCode(c.request({ type: 'join' }), 'missing_field');
  // A field of the wrong shape: the server still echoes the request's id, so the
  // request itself rejects with the server's code.
  await expectCode(c.request({ type: 'join', room: 5 }), 'invalid_field');
  await expectCode(c.room('@reserved').join(), 'invalid_room');
  await expectCode(c.room('not-joined').publish('hi'), 'not_member');
  await c.room('r1').join();
  await expectCode(c.request({ type: 'join', room: 'r1' }), 'already_joined');
  await expectCode(c.request({ type: 'leave', room: '@user:erin' }), 'forbidden');
  await expectCode(c.room('r1').publish('x'.repeat(101)), 'text_too_long');
  await expectCode(c.room('r1').publish({ big: 'x'.repeat(101) }), 'data_too_large');
  await c.room('r2').join();
  await c.room('r3').join();
  await expectCode(c.room('r4').join(), 'too_many_rooms');
  await c.room('r3').leave();
  const second = await connected('erin-two');
  await expectCode(second.room('r1').create(), 'room_exists');
  await expectCode(c.room('never-existed').delete(), 'no_such_room');
  await expectCode(c.request({ type: 'refresh', token: 'not-a-jwt' }), 'invalid_token');
});

test('private rooms: password_required, wrong_password; delete by another user is forbidden', { timeout: 30_000 }, async () => {
  const owner = await connected('owner');
  const other = await connected('other');
  await owner.room('vault', { password: 'open sesame' }).create();
  await expectCode(other.room('vault').join(), 'password_required');
  await expectCode(other.room('vault', { password: 'wrong' }).join(), 'wrong_password');
  const joined = await other.room('vault', { password: 'open sesame' }).join();
  assert.equal(joined.private, true);
  await expectCode(other.room('vault').delete(), 'forbidden');
  const deleted = next(other.room('vault'), 'deleted');
  await owner.room('vault').delete();
  await deleted;
});

test('rate_limited: each dropped publish rejects with the server code', { timeout: 30_000 }, async () => {
  const c = await connected('rapid');
  await c.room('fast').join();
  const results = await Promise.allSettled(
    Array.from({ length: 60 }, (_, i) => c.room('fast').publish(`m${i}`, { timeoutMs: 20_000 })),
  );
  const rejected = results.filter((r) => r.status === 'rejected');
  assert.ok(rejected.length > 0, 'some publishes were rate limited');
  for (const r of rejected) {
    assert.ok(r.reason instanceof CorecastError);
    assert.equal(r.reason.code, 'rate_limited');
    assert.equal(r.reason.fromServer, true);
  }
  const acked = results.filter((r) => r.status === 'fulfilled');
  assert.equal(acked.length + rejected.length, 60, 'every publish answered');
});

test('an error answering no request (bad_json) is an error event', { timeout: 30_000 }, async () => {
  let socket;
  class Spy extends WebSocket {
    constructor(...args) {
      super(...args);
      socket = this;
    }
  }
  const c = await connected('raw', { WebSocket: Spy });
  const event = next(c, 'error');
  socket.send('{not json');
  const err = await event;
  assert.ok(err instanceof CorecastError);
  assert.equal(err.code, 'bad_json');
});

// Tokens: getToken on connect and before expiry (sent with `refresh`), one fresh token
// and a reconnect after a 1008 "token expired", and no retry after other 1008 closes.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Corecast } from '../dist/index.js';
import { WebSocket, hs256, next, startServer, waitFor } from './helpers.mjs';

const SECRET = 'a-test-secret-that-is-long-enough-0123456789';
const now = () => Math.floor(Date.now() / 1000);
let server;
const clients = [];

before(async () => {
  server = await startServer(['--jwt-secret', SECRET, '--jwt-leeway', '0']);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test('getToken is called on connect and before expiry; refresh keeps the connection', { timeout: 60_000 }, async () => {
  let calls = 0;
  const c = new Corecast(server.url, {
    WebSocket,
    getToken: () => {
      calls += 1;
      return hs256(SECRET, { sub: 'tina', exp: now() + 4 });
    },
    refreshBeforeMs: 2_500,
  });
  clients.push(c);
  const drops = [];
  c.on('disconnected', (d) => drops.push(d));
  const refreshed = [];
  c.on('token', (t) => refreshed.push(t));
  const welcome = await c.connect();
  assert.equal(welcome.user, 'tina');
  assert.equal(calls, 1);
  await c.room('t').join();
  await waitFor(() => refreshed.length >= 3, 'three refreshes', 30_000);
  assert.ok(calls >= 4);
  assert.ok(refreshed.every((t) => typeof t.exp === 'number'));
  assert.deepEqual(drops, [], 'never disconnected');
  assert.ok((await c.room('t').publish('still here')) > 0);
});

test('a 1008 "token expired" triggers one fresh token and a reconnect that rejoins', { timeout: 60_000 }, async () => {
  let calls = 0;
  const c = new Corecast(server.url, {
    WebSocket,
    getToken: () => {
      calls += 1;
      // The first token expires at once; refreshing only after expiry lets the server close.
      return hs256(SECRET, { sub: 'ursula', exp: now() + (calls === 1 ? 2 : 600) });
    },
    refreshBeforeMs: -600_000,
  });
  clients.push(c);
  await c.connect();
  const room = c.room('exp');
  await room.join();
  const dropped = next(c, 'disconnected', 30_000);
  const rejoined = next(room, 'joined', 30_000);
  const d = await dropped;
  assert.equal(d.code, 1008);
  assert.match(d.reason, /expired/);
  assert.equal(d.willReconnect, true);
  const info = await rejoined;
  assert.equal(info.rejoin, true);
  assert.equal(calls, 2);
  assert.equal(c.state, 'connected');
});

test('a 1008 with a fixed token is not retried', { timeout: 60_000 }, async () => {
  const c = new Corecast(server.url, { WebSocket, token: hs256(SECRET, { sub: 'vic', exp: now() + 2 }) });
  clients.push(c);
  await c.connect();
  const d = await next(c, 'disconnected', 30_000);
  assert.equal(d.code, 1008);
  assert.equal(d.willReconnect, false);
  assert.equal(c.state, 'closed');
});

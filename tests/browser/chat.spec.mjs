#!/usr/bin/env node
// End-to-end test of the web client in headless Chromium, driven by playwright-core.
//
//   node tests/browser/chat.spec.mjs http://127.0.0.1:8080/     (or CORECAST_URL=…)
//
// Needs a running corecast server (tests/it/browser.rs starts one in-process), Debian's
// `chromium` (CORECAST_CHROMIUM overrides /usr/bin/chromium) and `npm ci` in this folder.
// Screenshots go to CORECAST_BROWSER_OUT (default: <repo>/target/browser). Exits 0 when
// every check passes, 1 otherwise, and prints one line per check.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.argv[2] || process.env.CORECAST_URL;
if (!base) {
  console.error('usage: node chat.spec.mjs <server http url>   (or set CORECAST_URL)');
  process.exit(2);
}
const executablePath = process.env.CORECAST_CHROMIUM || '/usr/bin/chromium';
const outDir = process.env.CORECAST_BROWSER_OUT || path.join(here, '..', '..', 'target', 'browser');
mkdirSync(outDir, { recursive: true });

const ROOM = 'e2e';
const XSS = '<img src=x onerror=alert(1)>';
const STEP_TIMEOUT_MS = 30_000; // a bound, generous for a loaded host: steps end when their event happens

let passed = 0;
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
  } catch (err) {
    console.log(`not ok - ${name}`);
    throw err;
  }
  passed += 1;
  console.log(`ok ${passed} - ${name} (${Date.now() - started} ms)`);
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/**
 * Opens the client in a fresh context (own storage) and records anything alarming. With
 * `proxy`, the page's WebSockets run through Playwright so the test can read what the
 * page sends, hold frames back, and drop the connection.
 */
async function openUser(browser, name, options, { proxy = false } = {}) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = { dialogs: [], errors: [] };
  /** @type {Array<{ws: any, server: any, sent: string[], held: string[]|null}>} */
  const sockets = [];
  if (proxy) {
    await page.routeWebSocket(/\/ws\?/, (ws) => {
      const server = ws.connectToServer();
      const link = { ws, server, sent: [], held: null };
      ws.onMessage((frame) => {
        link.sent.push(frame);
        if (link.held) link.held.push(frame);
        else server.send(frame);
      });
      sockets.push(link);
    });
  }
  page.on('dialog', (dialog) => {
    problems.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (err) => problems.errors.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.errors.push(`console error: ${msg.text()}`);
  });
  page.on('requestfailed', (req) => problems.errors.push(`request failed: ${req.url()} ${req.failure()?.errorText}`));
  await page.goto(base);
  return { name, context, page, problems, sockets };
}

const messages = (room) => `.messages[data-room="${room}"]`;

/** Resolves when the page shows a message from `user` whose text is exactly `text`. */
async function waitForMessage(page, room, user, text) {
  await page.waitForFunction(
    ([sel, u, t]) =>
      [...document.querySelectorAll(`${sel} li.msg`)].some(
        (li) => li.dataset.user === u && li.querySelector('.text')?.textContent === t && !li.classList.contains('pending'),
      ),
    [messages(room), user, text],
  );
}

async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

async function presence(page) {
  return page.$$eval('#presence-list li', (lis) => lis.map((li) => li.dataset.user));
}

async function main() {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    // Playwright gives every launch a fresh temporary user-data-dir and removes it after.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  console.log(`# chromium ${browser.version()}, server ${base}`);
  const users = [];
  try {
    const viewport = { width: 1280, height: 800 };
    const alice = await openUser(browser, 'alice', { viewport, colorScheme: 'light' }, { proxy: true });
    const bob = await openUser(browser, 'bob', { viewport, colorScheme: 'dark' });
    users.push(alice, bob);

    await check('the page asks for a name and connects', async () => {
      await alice.page.waitForSelector('#name-input');
      await alice.page.screenshot({ path: path.join(outDir, 'welcome.png') });
      for (const u of users) {
        await u.page.waitForSelector('#name-input');
        assert(await u.page.isVisible('#name-input'), 'name form visible');
        await u.page.fill('#name-input', u.name);
        await u.page.press('#name-input', 'Enter');
        await u.page.waitForSelector('#conn[data-state="online"]');
        assert((await u.page.textContent('#me-name')) === u.name, 'own name shown');
        // A first visit starts in the lobby.
        await u.page.waitForSelector(`${messages('lobby')} .notice`);
      }
    });

    await check(`both join #${ROOM} and see each other in the presence list`, async () => {
      for (const u of users) {
        await u.page.fill('#join-input', ROOM);
        await u.page.press('#join-input', 'Enter');
        await u.page.waitForSelector(`.room-item.current[data-room="${ROOM}"]`);
      }
      for (const u of users) {
        await u.page.waitForFunction(() => document.querySelectorAll('#presence-list li').length === 2);
        const names = await presence(u.page);
        assert(names.includes('alice') && names.includes('bob'), `${u.name} sees both users, got ${names}`);
        assert((await u.page.textContent('#presence-count')) === '2', 'count is 2');
        assert(await u.page.isVisible('#presence-list li[data-user="alice"]'), 'presence list visible');
      }
      // Alice was there first, so she is told that bob joined.
      await alice.page.waitForFunction(
        (sel) => [...document.querySelectorAll(`${sel} .notice`)].some((n) => n.textContent === 'bob joined'),
        messages(ROOM),
      );
    });

    await check('a message from alice reaches bob; alice sees it confirmed', async () => {
      await say(alice.page, 'Hi bob! Welcome to the e2e room.');
      await waitForMessage(bob.page, ROOM, 'alice', 'Hi bob! Welcome to the e2e room.');
      await waitForMessage(alice.page, ROOM, 'alice', 'Hi bob! Welcome to the e2e room.');
      const own = await alice.page.$eval(`${messages(ROOM)} li.msg.own`, (li) => ({
        seq: li.dataset.seq,
        time: li.querySelector('time').textContent,
      }));
      assert(/^\d+$/.test(own.seq ?? ''), `own message has its seq, got ${own.seq}`);
      assert(own.time.length > 0, 'own message shows a time');
      assert((await bob.page.$$(`${messages(ROOM)} li.msg.own`)).length === 0, "alice's message is not bob's own");
      assert((await alice.page.inputValue('#composer-input')) === '', 'composer cleared');
    });

    await check('HTML in a message is shown as text, never run', async () => {
      await say(alice.page, XSS);
      await waitForMessage(bob.page, ROOM, 'alice', XSS);
      await waitForMessage(alice.page, ROOM, 'alice', XSS);
      await bob.page.waitForTimeout(300); // give a would-be onerror handler time to fire
      for (const u of users) {
        const imgs = await u.page.$$eval('#message-area img', (els) => els.length);
        assert(imgs === 0, `${u.name}: no <img> in the message list (found ${imgs})`);
        const texts = await u.page.$$eval(`${messages(ROOM)} li.msg .text`, (els) => els.map((e) => e.textContent));
        assert(texts.includes(XSS), `${u.name}: the literal text is shown`);
        assert(u.problems.dialogs.length === 0, `${u.name}: no dialog, got ${u.problems.dialogs}`);
      }
    });

    await check('replies, multi-line text and unread counters', async () => {
      await say(bob.page, 'Hey alice 👋 that image tag stayed harmless text.');
      await waitForMessage(alice.page, ROOM, 'bob', 'Hey alice 👋 that image tag stayed harmless text.');
      await bob.page.fill('#composer-input', 'Two lines:');
      await bob.page.press('#composer-input', 'Shift+Enter');
      await bob.page.type('#composer-input', 'Shift+Enter adds a line, Enter sends.');
      await bob.page.press('#composer-input', 'Enter');
      await waitForMessage(alice.page, ROOM, 'bob', 'Two lines:\nShift+Enter adds a line, Enter sends.');
      // Bob posts in the lobby; alice, looking at the e2e room, gets an unread badge.
      await bob.page.click('.room-item[data-room="lobby"] .room-link');
      await say(bob.page, 'Anyone in the lobby?');
      await alice.page.waitForSelector('.room-item[data-room="lobby"] .badge:not([hidden])');
      assert((await alice.page.textContent('.room-item[data-room="lobby"] .badge')) === '1', 'one unread');
      await bob.page.click(`.room-item[data-room="${ROOM}"] .room-link`);
      await say(alice.page, 'Looks great in both light and dark mode.');
      await waitForMessage(bob.page, ROOM, 'alice', 'Looks great in both light and dark mode.');
    });

    await check('typing shows on the other side as a volatile message, and clears with the message', async () => {
      await alice.page.fill('#composer-input', 'I am typing this');
      await bob.page.waitForFunction(() => document.getElementById('typing')?.textContent === 'alice is typing…');
      await alice.page.press('#composer-input', 'Enter');
      await waitForMessage(bob.page, ROOM, 'alice', 'I am typing this');
      await bob.page.waitForFunction(() => document.getElementById('typing')?.hidden === true);
      assert((await alice.page.$eval('#typing', (e) => e.hidden)) === true, 'nobody shows their own typing');
    });

    await check('a data-only message shows its event badge and compact JSON', async () => {
      // A dashboard bot publishes structured data from its own connection.
      await bob.page.evaluate(async (room) => {
        const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws?name=dashbot`);
        await new Promise((resolve) => (ws.onopen = resolve));
        const joined = new Promise((resolve) => (ws.onmessage = (e) => JSON.parse(e.data).type === 'joined' && resolve()));
        ws.send(JSON.stringify({ type: 'join', room }));
        await joined;
        ws.send('{"type":"message","room":"' + room + '","event":"score","data":{"home":2,"away":1,"note":"<b>x</b>"}}');
        ws.close(); // after the message: the server reads them in order
      }, ROOM);
      for (const u of [alice, bob]) {
        const row = await u.page.waitForSelector(`${messages(ROOM)} li.msg[data-user="dashbot"]`);
        const [badge, json] = await row.$$eval('.event-badge, .data', (els) => els.map((e) => e.textContent));
        assert(badge === 'score', `badge ${badge}`);
        assert(json === '{"home":2,"away":1,"note":"<b>x</b>"}', `json ${json}`);
        assert((await row.$$('b')).length === 0, 'markup inside data stays text');
      }
    });

    await check('screenshots', async () => {
      await alice.page.screenshot({ path: path.join(outDir, 'chat.png') });
      await bob.page.screenshot({ path: path.join(outDir, 'chat-dark.png') });
      await bob.page.setViewportSize({ width: 390, height: 760 });
      await bob.page.waitForTimeout(400); // let the drawers settle into their closed state
      await bob.page.screenshot({ path: path.join(outDir, 'chat-phone.png') });
      await bob.page.click('#rooms-toggle');
      await bob.page.waitForTimeout(300);
      await bob.page.screenshot({ path: path.join(outDir, 'chat-phone-rooms.png') });
      await bob.page.keyboard.press('Escape');
      await bob.page.setViewportSize(viewport);
      console.log(`# screenshots in ${outDir}`);
    });

    await check('a reload remembers the name and rejoins the rooms', async () => {
      await alice.page.reload();
      await alice.page.waitForSelector('#conn[data-state="online"]');
      await alice.page.waitForSelector(`.room-item.current[data-room="${ROOM}"]`);
      await alice.page.waitForFunction(() => document.querySelectorAll('#presence-list li').length === 2);
      await say(alice.page, 'back again');
      await waitForMessage(bob.page, ROOM, 'alice', 'back again');
    });

    await check('own messages carry an id and show as pending until the server answers', async () => {
      const link = alice.sockets.at(-1);
      link.held = [];
      await say(alice.page, 'wait for it');
      const pending = await alice.page.waitForSelector(`${messages(ROOM)} li.msg.own.pending`);
      assert((await pending.$eval('.status', (e) => e.textContent)) === 'Sending…', 'pending status shown');
      const frame = JSON.parse(link.held[0]);
      assert(frame.type === 'message' && frame.room === ROOM && typeof frame.id === 'string', `frame ${link.held[0]}`);
      for (const held of link.held) link.server.send(held);
      link.held = null;
      await waitForMessage(alice.page, ROOM, 'alice', 'wait for it');
      assert((await pending.getAttribute('class')).split(' ').includes('pending') === false, 'no longer pending');
      assert(/^\d+$/.test((await pending.getAttribute('data-seq')) ?? ''), 'confirmed with its seq');
    });

    await check('a dropped connection reconnects, rejoins with since {epoch, seq} and recovers what it missed', async () => {
      const link = alice.sockets.at(-1);
      const before = alice.sockets.length;
      const lastSeq = await alice.page.$eval(messages(ROOM), (list) =>
        Math.max(...[...list.querySelectorAll('li.msg[data-seq]')].map((li) => Number(li.dataset.seq))),
      );
      const firstJoin = link.sent.map((f) => JSON.parse(f)).find((m) => m.type === 'join' && m.room === ROOM);
      assert(firstJoin && firstJoin.since === undefined, 'a fresh join carries no since');
      await link.ws.close({ code: 1001, reason: 'test: connection dropped' });
      link.server.close();
      await alice.page.waitForSelector('#conn[data-state="reconnecting"]');
      assert(/^Reconnecting/.test(await alice.page.textContent('#conn-text')), 'indicator says reconnecting');
      // Bob speaks while alice is away; she must get it once, from the replay or live.
      await say(bob.page, 'said while you were away');
      await alice.page.waitForSelector('#conn[data-state="online"]');
      assert(alice.sockets.length === before + 1, 'one new connection');
      const rejoin = alice.sockets
        .at(-1)
        .sent.map((f) => JSON.parse(f))
        .find((m) => m.type === 'join' && m.room === ROOM);
      assert(rejoin, `rejoined ${ROOM}`);
      assert(typeof rejoin.since?.epoch === 'string' && rejoin.since.seq === lastSeq, `since ${JSON.stringify(rejoin.since)}, last seq ${lastSeq}`);
      await waitForMessage(alice.page, ROOM, 'bob', 'said while you were away');
      await alice.page.waitForFunction(() => document.querySelectorAll('#presence-list li').length === 2);
      await say(bob.page, 'still there?');
      await waitForMessage(alice.page, ROOM, 'bob', 'still there?');
      const texts = await alice.page.$eval(messages(ROOM), (list) =>
        [...list.querySelectorAll('li.msg')].map((li) => li.textContent),
      );
      assert(texts.filter((t) => t.includes('said while you were away')).length === 1, 'the missed message appears exactly once');
      const warned = await alice.page.$eval(messages(ROOM), (list) =>
        [...list.querySelectorAll('.notice.warn')].some((n) => /missed/.test(n.textContent)),
      );
      assert(!warned, 'recovered: no "you may have missed messages" notice');
    });

    await check('leaving a room removes it and tells the others', async () => {
      await bob.page.click(`.room-item[data-room="${ROOM}"] .room-leave`);
      await alice.page.waitForFunction(() => document.querySelectorAll('#presence-list li').length === 1);
      assert((await bob.page.$$(`.room-item[data-room="${ROOM}"]`)).length === 0, 'room gone from the sidebar');
      await alice.page.waitForFunction(
        (sel) => [...document.querySelectorAll(`${sel} .notice`)].some((n) => n.textContent === 'bob left'),
        messages(ROOM),
      );
    });

    await check('no errors in the pages', async () => {
      for (const u of users) {
        assert(u.problems.errors.length === 0, `${u.name}: ${u.problems.errors.join('; ')}`);
        assert(u.problems.dialogs.length === 0, `${u.name}: dialogs ${u.problems.dialogs}`);
      }
    });
  } finally {
    await browser.close();
  }
}

main().then(
  () => {
    console.log(`${passed} passed, 0 failed`);
    process.exit(0);
  },
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    console.log(`${passed} passed, 1 failed`);
    process.exit(1);
  },
);

// Test helpers: the real corecast binary on an ephemeral port, a connection-killing TCP
// proxy, HS256 tokens, and bounded waits. Every wait has a deadline; nothing sleeps and
// then checks.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export { WebSocket };

const here = path.dirname(fileURLToPath(import.meta.url));
const workspace = path.resolve(here, '..', '..', '..');

/** The corecast binary: $CORECAST_BIN, else the newest of the workspace's release and debug builds. */
export function serverBinary() {
  if (process.env.CORECAST_BIN) return process.env.CORECAST_BIN;
  const targets = [process.env.CARGO_TARGET_DIR, path.join(workspace, 'target')].filter(Boolean);
  const found = targets
    .flatMap((t) => ['release', 'debug'].map((p) => path.resolve(workspace, t, p, 'corecast')))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (found.length === 0) {
    throw new Error('no corecast binary: set CORECAST_BIN or run `cargo build --bin corecast` in the workspace');
  }
  return found[0];
}

/** Starts corecast on 127.0.0.1:0 with two unpinned shards and `args`; resolves with {url, http, stop}. */
export async function startServer(args = []) {
  const bin = serverBinary();
  const child = spawn(bin, ['--listen', '127.0.0.1:0', '--shards', '2', '--no-pin', '--log', 'info', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  child.stderr.on('data', (d) => lines.push(String(d)));
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`corecast did not print its address within 30 s:\n${lines.join('')}`)), 30_000);
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      lines.push(line);
      const rest = line.split('ws://')[1];
      if (rest) {
        clearTimeout(timer);
        resolve(rest.split(/[\s/]/)[0]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`corecast exited (${code}) before listening:\n${lines.join('\n')}`));
    });
  });
  child.stdout.resume();
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 8_000);
    await exited;
    clearTimeout(timer);
  };
  return { addr, url: `ws://${addr}/ws`, http: `http://${addr}`, stop };
}

/**
 * A TCP proxy in front of `target` ("host:port"). `killAll()` destroys every proxied
 * connection abruptly (both sides), as a network failure would.
 */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: local } = server.address();
  return {
    url: `ws://127.0.0.1:${local}/ws`,
    killAll() {
      let n = 0;
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.destroy();
        n += 1;
      }
      pairs.clear();
      return n;
    },
    close() {
      this.killAll();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** An HS256 JWT for `claims`, signed with `secret`. */
export function hs256(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** Resolves when `cond()` is true; rejects with `what` after `ms`. Polls every 10 ms. */
export async function waitFor(cond, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the next `event` of `emitter`, or rejects after `ms`. */
export function next(emitter, event, ms = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${String(event)} event within ${ms} ms`));
    }, ms);
    const off = emitter.once(event, (payload) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

/** The promise's rejection (fails when it resolves instead). */
export async function rejection(promise) {
  let value;
  try {
    value = await promise;
  } catch (err) {
    return err;
  }
  throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
}

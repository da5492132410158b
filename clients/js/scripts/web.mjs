#!/usr/bin/env node
// The web client (web/ in the workspace, embedded in the server binary) uses this
// library's built ESM file, committed as web/corecast-client.js so that `cargo build`
// needs no JavaScript toolchain.
//
//   node scripts/web.mjs write   copy dist/index.js to web/corecast-client.js
//   node scripts/web.mjs check   exit 1 when the committed file differs from dist/index.js
// Run `npm run build` first.

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const built = path.join(here, '..', 'dist', 'index.js');
const committed = path.join(here, '..', '..', '..', 'web', 'corecast-client.js');

const mode = process.argv[2];
if (mode === 'write') {
  writeFileSync(committed, readFileSync(built));
  console.log(`wrote ${committed}`);
} else if (mode === 'check') {
  if (!readFileSync(built).equals(readFileSync(committed))) {
    console.error(`${committed} is stale: run \`npm run build:web\` in clients/js and commit it`);
    process.exit(1);
  }
} else {
  console.error('usage: node scripts/web.mjs write|check');
  process.exit(2);
}

// The web client's copy of the library (web/corecast-client.js) is the current build.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

test('web/corecast-client.js is the current build of src/index.ts', () => {
  // `npm test` builds first; rebuild anyway so this test stands on its own.
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  const built = readFileSync(new URL('../dist/index.js', import.meta.url));
  const committed = readFileSync(new URL('../../../web/corecast-client.js', import.meta.url));
  assert.ok(built.equals(committed), 'web/corecast-client.js is stale: run `npm run build:web` in clients/js and commit it');
});

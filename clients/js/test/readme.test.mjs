// The README's examples type-check (tsc --noEmit).

import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

test('README examples pass tsc --noEmit', { timeout: 120_000 }, () => {
  execFileSync(process.execPath, [new URL('../scripts/readme.mjs', import.meta.url).pathname], { stdio: 'inherit' });
});

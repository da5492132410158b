#!/usr/bin/env node
// Type-checks every ```ts block of README.md (tsc --noEmit against src/ and the dev
// dependencies' types), so the documented examples keep compiling.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, '.readme-check');
const blocks = [...readFileSync(path.join(root, 'README.md'), 'utf8').matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
if (blocks.length === 0) throw new Error('no ts blocks in README.md');
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const files = blocks.map((code, i) => {
  const file = `example${i + 1}.ts`;
  writeFileSync(path.join(out, file), `${code}\nexport {};\n`);
  return file;
});
writeFileSync(
  path.join(out, 'tsconfig.json'),
  JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module: 'ES2022',
      moduleResolution: 'bundler',
      lib: ['ES2022', 'DOM'],
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ['node'],
      typeRoots: [path.join(root, 'node_modules/@types')],
      paths: { 'corecast-client': [path.join(root, 'src/index.ts')] },
    },
    files,
  }),
);
execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', path.join(out, 'tsconfig.json')], {
  stdio: 'inherit',
});
console.log(`tsc --noEmit: ${files.length} README examples type-check`);

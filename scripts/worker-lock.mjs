#!/usr/bin/env node
// The worker image installs with `npm ci` from functions/worker/package-lock.json (functions/worker/Dockerfile),
// because npm never packs the root package-lock.json: without a packed lock, the construct installed from the registry
// would build its image from package.json's ranges, not from the tested lock. This keeps that copy identical to the
// root lock: run by `prepack` (so a packed tarball always carries the current lock) and by hand after changing
// dependencies (`node scripts/worker-lock.mjs`); `--check` only reports (exit 1) a copy that differs.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'package-lock.json');
const copy = join(root, 'functions', 'worker', 'package-lock.json');

const want = readFileSync(source);
let have;
try {
  have = readFileSync(copy);
} catch {
  have = undefined;
}
if (have && want.equals(have)) process.exit(0);
if (process.argv.includes('--check')) {
  console.error(
    'worker-lock: functions/worker/package-lock.json differs from package-lock.json: run node scripts/worker-lock.mjs',
  );
  process.exit(1);
}
// Written beside and renamed, so an interrupted copy never leaves a truncated lock to be packed.
const tmp = `${copy}.${process.pid}.tmp`;
writeFileSync(tmp, want);
renameSync(tmp, copy);
console.error('worker-lock: functions/worker/package-lock.json updated from package-lock.json');

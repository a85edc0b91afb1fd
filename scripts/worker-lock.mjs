#!/usr/bin/env node
// The worker image installs the runtime package (the CLI and the worker, this repository's root package without its
// workspaces) with `npm ci` from functions/worker/package.json and functions/worker/package-lock.json
// (functions/worker/Dockerfile). The construct package (infra/, a workspace) carries them in its build context, because
// npm never packs a package-lock.json: without them the image would resolve package.json's ranges, not the tested lock.
//
// The root lock cannot serve: it lists the infra workspace, and the workspace's aws-cdk-lib/constructs peers lose their
// `dev` flag there, so `npm prune --omit=dev` would keep them in the image. This writes the runtime manifest (the root
// package.json minus `workspaces`) and lets npm derive its lock from the root lock (`npm install --package-lock-only`,
// which keeps every locked version and recomputes the flags), then checks that every package of the derived lock is
// the root lock's own version, source and integrity: the image installs exactly what the repository tests.
// Run by `prepack` of both packages and by hand after changing dependencies (`node scripts/worker-lock.mjs`);
// `--check` only reports (exit 1) copies that differ.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, 'functions', 'worker');
const NAMES = ['package.json', 'package-lock.json'];

/** The runtime manifest: the root package.json without its workspaces. */
function runtimeManifest() {
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  delete manifest.workspaces;
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** npm's settings of a parent npm run (prepack) must not leak into the child: it would act on the workspace. */
function childEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_')));
}

/** The runtime lock, derived by npm from the root lock in a scratch directory. */
function deriveLock(manifest) {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-worker-lock-'));
  try {
    writeFileSync(join(dir, 'package.json'), manifest);
    writeFileSync(join(dir, 'package-lock.json'), readFileSync(join(root, 'package-lock.json')));
    execFileSync(
      'npm',
      ['install', '--package-lock-only', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'],
      { cwd: dir, env: childEnv(), stdio: ['ignore', 'ignore', 'inherit'] },
    );
    return readFileSync(join(dir, 'package-lock.json'), 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Packages of the derived lock whose version, source or integrity is not the root lock's (none, or npm re-resolved). */
function offLock(derived) {
  const tested = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')).packages;
  return Object.entries(JSON.parse(derived).packages)
    .filter(([key]) => key !== '')
    .filter(([key, p]) => ['version', 'resolved', 'integrity'].some((f) => tested[key]?.[f] !== p[f]))
    .map(([key, p]) => `${key} ${p.version} (root lock: ${tested[key]?.version ?? 'absent'})`);
}

const manifest = runtimeManifest();
const lock = deriveLock(manifest);
const drift = offLock(lock);
if (drift.length) {
  console.error(`worker-lock: npm resolved packages the root lock does not hold:\n  ${drift.join('\n  ')}`);
  process.exit(1);
}
const want = { 'package.json': manifest, 'package-lock.json': lock };
const stale = NAMES.filter((name) => {
  try {
    return readFileSync(join(target, name), 'utf8') !== want[name];
  } catch {
    return true;
  }
});
if (stale.length === 0) process.exit(0);
if (process.argv.includes('--check')) {
  console.error(`worker-lock: functions/worker/${stale.join(', ')} out of date: run node scripts/worker-lock.mjs`);
  process.exit(1);
}
for (const name of stale) {
  // Written beside and renamed, so an interrupted run never leaves a truncated file to be packed.
  const tmp = join(target, `${name}.${process.pid}.tmp`);
  writeFileSync(tmp, want[name]);
  renameSync(tmp, join(target, name));
}
console.error(`worker-lock: functions/worker/${stale.join(', ')} updated (the runtime package's manifest and lock)`);

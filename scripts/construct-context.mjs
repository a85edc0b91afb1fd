#!/usr/bin/env node
// The construct package's copy of the worker image's build context (infra/worker-context/, packed beside dist/):
// `stage` copies what functions/worker/Dockerfile.dockerignore lets into the context from the repository root, the
// same files in the same places, so the installed construct builds the image a checkout builds (same asset hash);
// `clean` removes it (the construct's postpack: a checkout's synth uses the repository root, never a stale copy).
// The runtime package's manifest and lock come along (functions/worker/package.json, package-lock.json: the prepack
// runs scripts/worker-lock.mjs first), so the image's `npm ci` installs the tested versions.
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, 'infra', 'worker-context');
const ignoreFile = join(root, 'functions', 'worker', 'Dockerfile.dockerignore');

/** The allow-list's shapes this copy understands; anything else fails rather than being copied differently. */
function rules() {
  const lines = readFileSync(ignoreFile, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const allow = [];
  const deny = [];
  for (const line of lines) {
    if (line === '*') continue;
    if (line.startsWith('!')) allow.push(line.slice(1).replace(/\/\*\*$/, ''));
    else if (/^\*\*\/[^*/]+$/.test(line)) deny.push((name) => name === line.slice(3));
    else if (/^\*\*\/\*[^*/]+$/.test(line)) deny.push((name) => name.endsWith(line.slice(4)));
    else throw new Error(`construct-context: ${ignoreFile}: a pattern this copy does not implement: ${line}`);
  }
  if (lines[0] !== '*') throw new Error(`construct-context: ${ignoreFile} must start with * (an allow-list)`);
  return { allow, denied: (name) => deny.some((d) => d(name)) };
}

function copy(rel, denied) {
  const from = join(root, rel);
  if (rel.split(sep).some(denied)) return;
  if (statSync(from).isDirectory()) {
    for (const name of readdirSync(from)) copy(join(rel, name), denied);
  } else {
    mkdirSync(dirname(join(target, rel)), { recursive: true });
    cpSync(from, join(target, rel));
  }
}

const mode = process.argv[2];
rmSync(target, { recursive: true, force: true });
if (mode === 'stage') {
  const { allow, denied } = rules();
  for (const rel of allow) {
    if (!existsSync(join(root, rel))) throw new Error(`construct-context: ${rel} (Dockerfile.dockerignore) is missing`);
    copy(rel, denied);
  }
  for (const need of ['functions/worker/package.json', 'functions/worker/package-lock.json']) {
    if (!existsSync(join(target, need))) throw new Error(`construct-context: ${need} is not in the staged context`);
  }
  console.error(`construct-context: staged ${relative(root, target)}`);
} else if (mode !== 'clean') {
  console.error('usage: construct-context.mjs stage|clean');
  process.exit(2);
}

#!/usr/bin/env node
// Runs the compiled CLI in dist/ (`npm run build`, which `npm ci` runs as `prepare`): compiling the TypeScript at every
// start through tsx costs seconds, the compiled JS starts in a fraction of that. A development checkout without a
// build, or whose sources changed after it, runs the sources through tsx's loader instead, so edits take effect at once.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// The AWS SDK warns on every run that its 2027 releases need Node 22; the README states the Node requirements once.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const root = fileURLToPath(new URL('../', import.meta.url));
const compiled = new URL('../dist/lib/cli/main.js', import.meta.url);

/** The first source of the CLI edited after the build, if any (an installed package ships them with one mtime). */
function newerSource(builtAt) {
  for (const dir of ['lib', 'functions']) {
    if (!existsSync(root + dir)) continue;
    for (const entry of readdirSync(root + dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !/\.(ts|json)$/.test(entry.name)) continue;
      const path = `${entry.parentPath}/${entry.name}`;
      if (statSync(path).mtimeMs > builtAt) return path.slice(root.length);
    }
  }
  return undefined;
}

/** Why the sources run instead of dist/, or undefined when dist/ is current. */
function reasonForSources() {
  if (!existsSync(compiled)) return 'no build in dist/';
  const edited = newerSource(statSync(compiled).mtimeMs);
  return edited && `${edited} is newer than the build in dist/`;
}

const reason = reasonForSources();
let main;
if (!reason) {
  ({ main } = await import(compiled.href));
} else {
  process.stderr.write(`mlm-filter: running the TypeScript sources through tsx (${reason}; npm run build)\n`);
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../lib/cli/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));

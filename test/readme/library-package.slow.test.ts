/**
 * Slow (npm pack and tsc: ~1 min; runs with MLMF_SLOW=1): the library entry point as a user installs it. The packed
 * tarball (what `files` ships) is unpacked into a project's node_modules, its dependencies beside it; the README's
 * library example runs there by the package name, and type-checks as TypeScript against the shipped .d.ts files,
 * where a misspelt option fails the check. Needs the dist/ of `npm run build`; skips only without one.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import { noBuild, PKG, ROOT, typecheck } from '../helpers/package-consumer.ts';
import { readmeBlock } from './readme-blocks.ts';

const run = promisify(execFile);
const skip = process.env.MLMF_SLOW === '1' ? noBuild : 'slow suite: set MLMF_SLOW=1';

test('the packed package runs and type-checks the README library example', { skip }, async (t) => {
  const app = mkdtempSync(join(tmpdir(), 'mlmf-packed-'));
  t.after(() => rmSync(app, { recursive: true, force: true }));
  // Scripts off: the build is the dist/ already there, and prepack's lock copy must not touch the checkout.
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', app], {
    cwd: ROOT,
    maxBuffer: 64 * 1024 * 1024,
  });
  const tarball = join(app, (JSON.parse(stdout) as { filename: string }[])[0]!.filename);
  const pkg = join(app, 'node_modules', PKG.name);
  mkdirSync(pkg, { recursive: true });
  await run('tar', ['xzf', tarball, '-C', pkg, '--strip-components=1']);
  // The dependencies as npm would install them beside the package (this checkout's copies).
  symlinkSync(join(ROOT, 'node_modules'), join(pkg, 'node_modules'), 'dir');
  mkdirSync(join(app, 'node_modules', '@types'), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules', '@types', 'node'), join(app, 'node_modules', '@types', 'node'), 'dir');
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer-app', private: true, type: 'module' }));

  const example = readmeBlock('## Library (Node API)', 'js');
  writeFileSync(join(app, 'example.mjs'), example);
  const ran = await run(process.execPath, [join(app, 'example.mjs')], { cwd: ROOT, timeout: 120_000 });
  const lines = ran.stdout.trimEnd().split('\n');
  assert.equal(lines.length, 14, ran.stdout);
  assert.match(lines[0]!, /^sample-0 (accept|reject) /);

  const compilerOptions = {
    target: 'ES2022',
    module: 'NodeNext',
    strict: true,
    noEmit: true,
    types: ['node'],
    skipLibCheck: true,
  };
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['example.ts'] }));
  writeFileSync(join(app, 'example.ts'), example);
  const good = await typecheck(app);
  assert.equal(good.code, 0, good.output);
  writeFileSync(join(app, 'example.ts'), example.replace('thresholds:', 'threshold:'));
  const bad = await typecheck(app);
  assert.notEqual(bad.code, 0, 'tsc accepted an option openFilter does not have');
  assert.match(bad.output, /'threshold' does not exist/);
});

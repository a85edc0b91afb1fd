/**
 * Issue 13: the CDK construct is consumable from another CDK app as compiled JS + .d.ts through the package's exports
 * map, with aws-cdk-lib and constructs as the app's own (peer) copies. Builds nothing: it checks the dist/ that
 * `npm run build` (npm ci's `prepare`) left, and skips only when there is none. The consumer's type check of the
 * .d.ts files is package-types.slow.test.ts (tsc over aws-cdk-lib's types takes minutes).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PKG, ROOT, consumerProject, exportTargets, noBuild } from '../helpers/package-consumer.ts';

const run = promisify(execFile);

test('every target of the exports map is in dist/ and shipped by the files list', { skip: noBuild }, () => {
  const targets = exportTargets();
  assert.ok(
    targets.some((t) => t.subpath === './construct' && t.condition === 'types'),
    JSON.stringify(PKG.exports),
  );
  for (const { subpath, condition, target } of targets) {
    assert.ok(existsSync(join(ROOT, target)), `exports["${subpath}"].${condition}: ${target} does not exist`);
    const rel = target.replace(/^\.\//, '');
    const shipped =
      rel === 'package.json' || PKG.files.some((f) => rel === f || rel.startsWith(f.replace(/\/?$/, '/')));
    assert.ok(shipped, `${target} is not in package.json "files" (${PKG.files.join(', ')})`);
  }
});

test('a CDK app outside the checkout imports the construct through the exports map', { skip: noBuild }, async (t) => {
  const app = consumerProject(['aws-cdk-lib', 'constructs']);
  t.after(() => rmSync(app, { recursive: true, force: true }));
  // What the app sees: the resolved file, the export, whether it is a Construct of the app's own constructs package,
  // and that files outside the exports map stay private.
  const probe = `
    import { Construct } from 'constructs';
    const resolved = import.meta.resolve('${PKG.name}/construct');
    const m = await import('${PKG.name}/construct');
    let deep = 'imported';
    try { await import('${PKG.name}/dist/lib/cli/main.js'); } catch (err) { deep = err.code; }
    console.log(JSON.stringify({
      resolved,
      exports: Object.keys(m),
      isConstruct: typeof m.MlmFilterPipeline === 'function' && m.MlmFilterPipeline.prototype instanceof Construct,
      deep,
    }));
  `;
  writeFileSync(join(app, 'probe.js'), probe);
  const { stdout } = await run(process.execPath, ['probe.js'], { cwd: app });
  const seen = JSON.parse(stdout) as { resolved: string; exports: string[]; isConstruct: boolean; deep: string };
  assert.ok(seen.resolved.endsWith('/dist/infra/lib/pipeline.js'), seen.resolved);
  assert.ok(seen.exports.includes('MlmFilterPipeline'), seen.exports.join(', '));
  assert.equal(seen.isConstruct, true, 'MlmFilterPipeline is not a Construct of the consumer app');
  assert.equal(seen.deep, 'ERR_PACKAGE_PATH_NOT_EXPORTED');
});

test('aws-cdk-lib and constructs are optional peers: the runtime dependencies (the worker image) leave them out', () => {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { dev?: boolean; devOptional?: boolean }>;
  };
  for (const name of ['aws-cdk-lib', 'constructs']) {
    assert.equal(PKG.dependencies[name], undefined, `${name} is a runtime dependency`);
    assert.equal(PKG.peerDependencies[name], PKG.devDependencies[name], `${name}: peer and dev ranges differ`);
    assert.equal(PKG.peerDependenciesMeta?.[name]?.optional, true, `${name}: a CLI user would have to install it`);
    // `npm prune --omit=dev` (functions/worker/Dockerfile) removes exactly the lock's dev packages.
    assert.equal(lock.packages[`node_modules/${name}`]?.dev, true, `${name} is not dev-only in package-lock.json`);
  }
});

test("the worker image's lock (functions/worker/package-lock.json, packed) is the root lock byte for byte", () => {
  // npm never packs the root package-lock.json; the Dockerfile's `npm ci` reads this copy (scripts/worker-lock.mjs).
  const copy = join(ROOT, 'functions', 'worker', 'package-lock.json');
  assert.ok(existsSync(copy), 'functions/worker/package-lock.json is missing: run node scripts/worker-lock.mjs');
  assert.ok(
    readFileSync(copy).equals(readFileSync(join(ROOT, 'package-lock.json'))),
    'functions/worker/package-lock.json differs from package-lock.json: run node scripts/worker-lock.mjs',
  );
  assert.ok(PKG.files.includes('functions/'), 'functions/ (the lock copy) is not packed');
  assert.match(JSON.stringify(PKG.scripts), /"prepack":"node scripts\/worker-lock\.mjs"/);
  const dockerfile = readFileSync(join(ROOT, 'functions', 'worker', 'Dockerfile'), 'utf8');
  assert.match(dockerfile, /^COPY functions\/worker\/package-lock\.json \.\/package-lock\.json$/m);
  assert.match(dockerfile, /^RUN .*\bnpm ci\b/m);
  assert.doesNotMatch(dockerfile, /npm install/, 'the image must not resolve ranges');
});

/**
 * Issues 13 and 22: two packages from one repository. The construct package (infra/, `mlm-filter-stream-construct`)
 * is consumable from another CDK app as compiled JS + .d.ts through its exports map, with aws-cdk-lib and constructs
 * as the app's own (peer) copies and nothing else: no worker runtime (onnxruntime-node, sharp, kafkajs, the AWS SDK),
 * no install script. The runtime package (the root: the CLI and the worker) is the image's, installed from its own
 * lock. Builds nothing: the compiled checks read the infra/dist/ that `npm run build` (npm ci's `prepare`) left, and
 * skip only when there is none. The consumer's type check of the .d.ts files is package-types.slow.test.ts, the
 * packed construct in an outside app consumer-app.slow.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bareImports, foreignImports } from '../../scripts/construct-build.ts';
import {
  CONSTRUCT,
  CONSTRUCT_DIR,
  PKG,
  ROOT,
  consumerProject,
  exportTargets,
  noBuild,
} from '../helpers/package-consumer.ts';

const run = promisify(execFile);
const INSTALL_SCRIPTS = ['preinstall', 'install', 'postinstall', 'prepare'];

type Lock = {
  packages: Record<string, { version?: string; resolved?: string; integrity?: string; dev?: boolean }>;
};
const readJson = <T>(...parts: string[]) => JSON.parse(readFileSync(join(ROOT, ...parts), 'utf8')) as T;

test(
  'every target of the construct exports map is in infra/dist/ and shipped by its files list',
  { skip: noBuild },
  () => {
    const targets = exportTargets();
    assert.ok(
      targets.some((t) => t.subpath === '.' && t.condition === 'types'),
      JSON.stringify(CONSTRUCT.exports),
    );
    for (const { subpath, condition, target } of targets) {
      assert.ok(
        existsSync(join(CONSTRUCT_DIR, target)),
        `exports["${subpath}"].${condition}: ${target} does not exist`,
      );
      const rel = target.replace(/^\.\//, '');
      const shipped =
        rel === 'package.json' || CONSTRUCT.files.some((f) => rel === f || rel.startsWith(f.replace(/\/?$/, '/')));
      assert.ok(shipped, `${target} is not in infra/package.json "files" (${CONSTRUCT.files.join(', ')})`);
    }
  },
);

test('a CDK app outside the checkout imports the construct through the exports map', { skip: noBuild }, async (t) => {
  const app = consumerProject(['aws-cdk-lib', 'constructs']);
  t.after(() => rmSync(app, { recursive: true, force: true }));
  // What the app sees: the resolved file, the export, whether it is a Construct of the app's own constructs package,
  // and that files outside the exports map stay private.
  const probe = `
    import { Construct } from 'constructs';
    const resolved = import.meta.resolve('${CONSTRUCT.name}');
    const m = await import('${CONSTRUCT.name}');
    let deep = 'imported';
    try { await import('${CONSTRUCT.name}/dist/infra/lib/props.js'); } catch (err) { deep = err.code; }
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
  assert.ok(seen.resolved.endsWith('/infra/dist/infra/lib/pipeline.js'), seen.resolved);
  assert.ok(seen.exports.includes('MlmFilterPipeline'), seen.exports.join(', '));
  assert.equal(seen.isConstruct, true, 'MlmFilterPipeline is not a Construct of the consumer app');
  assert.equal(seen.deep, 'ERR_PACKAGE_PATH_NOT_EXPORTED');
});

test('the construct package depends on its peers only, runs no install script, and is publishable', () => {
  assert.equal(CONSTRUCT.private, undefined, 'infra/package.json is private');
  assert.deepEqual(CONSTRUCT.dependencies ?? {}, {}, 'the construct has runtime dependencies');
  assert.deepEqual(Object.keys(CONSTRUCT.peerDependencies).sort(), ['aws-cdk-lib', 'constructs']);
  for (const name of ['aws-cdk-lib', 'constructs']) {
    // The repository develops and tests the construct on the root's dev copies: the same ranges.
    assert.equal(CONSTRUCT.peerDependencies[name], PKG.devDependencies[name], `${name}: peer and dev ranges differ`);
    assert.equal(PKG.dependencies[name], undefined, `${name} is a runtime dependency of the worker`);
  }
  for (const script of INSTALL_SCRIPTS) assert.equal(CONSTRUCT.scripts[script], undefined, `infra: ${script} script`);
  assert.deepEqual(CONSTRUCT.files.sort(), ['dist/', 'worker-context/']);
  assert.equal(PKG.private, undefined, 'the runtime package (root) is private');
  assert.deepEqual(PKG.workspaces, ['infra']);
});

test('the compiled construct imports nothing but aws-cdk-lib, constructs and node: builtins', { skip: noBuild }, () => {
  assert.deepEqual(foreignImports(join(CONSTRUCT_DIR, 'dist')), []);
  // The check itself sees every import form tsc emits.
  const code = `import * as a from 'kafkajs';\nimport { b } from "sharp";\nexport { c } from '@aws-sdk/client-s3';
import 'onnxruntime-node';\nconst d = await import('undici');\nimport { e } from './local.js';\nimport * as f from 'node:fs';`;
  assert.deepEqual(bareImports(code).sort(), [
    '@aws-sdk/client-s3',
    'kafkajs',
    'node:fs',
    'onnxruntime-node',
    'sharp',
    'undici',
  ]);
  for (const name of ['topic-provisioner', 'lag-probe']) {
    const bundle = join(CONSTRUCT_DIR, 'dist', 'lambda', name, 'index.mjs');
    assert.ok(existsSync(bundle), `${bundle}: the Lambda is not pre-bundled`);
    assert.match(readFileSync(bundle, 'utf8'), /KafkaJS|kafkajs/, `${name}: kafkajs is not inside the bundle`);
  }
});

test("the worker image's manifest and lock are the runtime package's, at the root lock's versions", async () => {
  // Derived by npm from the root lock (scripts/worker-lock.mjs); --check regenerates in a scratch directory.
  await run(process.execPath, [join(ROOT, 'scripts', 'worker-lock.mjs'), '--check'], { cwd: ROOT });
  const manifest = readJson<typeof PKG>('functions', 'worker', 'package.json');
  const { workspaces: _workspaces, ...runtime } = PKG;
  assert.deepEqual(manifest, runtime, 'functions/worker/package.json is not the root manifest without workspaces');
  const tested = readJson<Lock>('package-lock.json').packages;
  const lock = readJson<Lock>('functions', 'worker', 'package-lock.json').packages;
  const differ = Object.entries(lock)
    .filter(([key]) => key !== '')
    .filter(([key, p]) => p.version !== tested[key]?.version || p.integrity !== tested[key]?.integrity)
    .map(([key]) => key);
  assert.deepEqual(differ, []);
  assert.ok(!Object.keys(lock).some((key) => key === 'infra' || key.endsWith(`/${CONSTRUCT.name}`)), 'workspace kept');
  // `npm prune --omit=dev` (functions/worker/Dockerfile) removes exactly the runtime lock's dev packages.
  for (const name of ['aws-cdk-lib', 'constructs']) {
    assert.equal(lock[`node_modules/${name}`]?.dev, true, `${name} is not dev-only in the worker's lock`);
  }
  const dockerfile = readFileSync(join(ROOT, 'functions', 'worker', 'Dockerfile'), 'utf8');
  assert.match(dockerfile, /^COPY functions\/worker\/package\.json \.\/package\.json$/m);
  assert.match(dockerfile, /^COPY functions\/worker\/package-lock\.json \.\/package-lock\.json$/m);
  assert.match(dockerfile, /^RUN .*\bnpm ci\b/m);
  assert.doesNotMatch(dockerfile, /npm install/, 'the image must not resolve ranges');
  assert.match(CONSTRUCT.scripts.prepack!, /worker-lock\.mjs/);
});

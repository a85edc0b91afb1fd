/**
 * Slow (the construct's build and pack, then a full `npm ci` of the runtime's dependency tree, about two minutes with
 * npm's cache). Issue 22: the worker image installs exactly the tested lock. No Docker engine runs here, so this
 * replays the build stage of functions/worker/Dockerfile as far as a plain shell can: the construct package is packed
 * (`npm pack -w infra`, what the registry serves), its worker-context/ is the image's build context (what the installed
 * construct hands to Docker), and the Dockerfile's own ARG, ENV and COPY instructions up to
 * its npm install step, then that RUN command itself, are applied in a temporary /app. Every package left in
 * node_modules must have the root lock's version (the tested one) at the lock's path, and every package the runtime's
 * lock needs on this platform must be there. The other RUN steps (apt, the CUDA wheels, tsc) are not replayed. npm may use its local cache
 * (prefer-offline) but nothing else differs from the image's build.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { ROOT, childEnv, packConstruct } from '../helpers/package-consumer.ts';

const run = promisify(execFile);
const DOCKERFILE = 'functions/worker/Dockerfile';

type Lock = { packages: Record<string, { version?: string; optional?: boolean; link?: boolean; os?: string[] }> };

/** The installed construct's worker build context, from the packed tarball. */
async function packedContext(work: string): Promise<string> {
  const tarball = await packConstruct(work);
  const unpacked = path.join(work, 'construct');
  fs.mkdirSync(unpacked);
  await run('tar', ['-xzf', tarball, '-C', unpacked, '--strip-components=1']);
  return path.join(unpacked, 'worker-context');
}

/** The build stage's instructions up to its npm install RUN, continuation lines joined. */
function installSteps(dockerfile: string): { op: string; args: string }[] {
  const lines = dockerfile.replace(/\\\n/g, ' ').split('\n');
  const steps: { op: string; args: string }[] = [];
  let stage = -1;
  for (const line of lines) {
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, op, args] = m as unknown as [string, string, string];
    if (op === 'FROM') stage++;
    if (stage > 0) break;
    steps.push({ op, args: args.trim() });
    if (op === 'RUN' && /\bnpm (ci|install)\b/.test(args)) return steps;
  }
  throw new Error(`${DOCKERFILE}: no RUN with npm ci / npm install in the build stage`);
}

/** Applies ARG, ENV and COPY (from the context) and runs the npm RUN step in `app`, as the build stage would. */
async function replayInstall(context: string, app: string): Promise<{ code: number; output: string }> {
  fs.mkdirSync(app, { recursive: true });
  const env = childEnv({ npm_config_prefer_offline: 'true' });
  let command = '';
  for (const { op, args } of installSteps(fs.readFileSync(path.join(context, DOCKERFILE), 'utf8'))) {
    if (op === 'ARG' || op === 'ENV') {
      for (const [, k, v] of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?/g)) {
        // An ARG's default applies unless a build arg (here: the environment) gives the value.
        if (v !== undefined && !(op === 'ARG' && k! in env)) env[k!] = v.replace(/^"|"$/g, '');
      }
    } else if (op === 'COPY') {
      assert.ok(!args.startsWith('--'), `COPY flags are not replayed: ${args}`);
      const parts = args.split(/\s+/);
      const dest = parts.pop()!;
      for (const src of parts) {
        // A trailing `*` is Docker's "copy when present" (the old Dockerfile's optional lock).
        const file = src.replace(/\*$/, '');
        if (src.endsWith('*') && !fs.existsSync(path.join(context, file))) continue;
        const target = dest.endsWith('/') ? path.join(app, dest, path.basename(file)) : path.join(app, dest);
        fs.cpSync(path.join(context, file), target, { recursive: true });
      }
    } else if (op === 'RUN') {
      command = args.replace(/--mount=\S+\s*/g, '');
    }
  }
  try {
    const r = await run('sh', ['-ec', command], { cwd: app, env, maxBuffer: 64 << 20 });
    return { code: 0, output: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, output: e.stdout + e.stderr };
  }
}

/** Every installed package directory under node_modules (nested ones too), as the lock's `packages` keys. */
function installed(app: string): Map<string, string> {
  const found = new Map<string, string>();
  const walk = (dir: string, rel: string) => {
    if (!fs.existsSync(dir)) return;
    for (const name of fs.readdirSync(dir)) {
      if (name.startsWith('.')) continue;
      if (name.startsWith('@')) {
        walk(path.join(dir, name), `${rel}${name}/`);
        continue;
      }
      const pkgDir = path.join(dir, name);
      const manifest = path.join(pkgDir, 'package.json');
      if (!fs.existsSync(manifest)) continue;
      const key = `${rel}${name}`;
      found.set(key, (JSON.parse(fs.readFileSync(manifest, 'utf8')) as { version: string }).version);
      walk(path.join(pkgDir, 'node_modules'), `${key}/node_modules/`);
    }
  };
  walk(path.join(app, 'node_modules'), 'node_modules/');
  return found;
}

describe('the worker image installs the tested lock (functions/worker/Dockerfile replayed without Docker)', () => {
  let work: string;
  let context: string;
  let lock: Lock;
  let tested: Lock;

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-image-install-'));
    context = await packedContext(work);
    lock = JSON.parse(fs.readFileSync(path.join(context, 'functions', 'worker', 'package-lock.json'), 'utf8')) as Lock;
    tested = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as Lock;
  });
  after(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('every installed package has the lock version, and every package the lock needs here is installed', async () => {
    const app = path.join(work, 'app');
    const r = await replayInstall(context, app);
    assert.equal(r.code, 0, r.output);
    const have = installed(app);
    const differ = [...have]
      .filter(([key, version]) => tested.packages[key]?.version !== version)
      .map(([key, version]) => `${key}: installed ${version}, tested ${tested.packages[key]?.version ?? '(absent)'}`);
    assert.deepEqual(differ, [], 'installed versions that are not the lock’s');
    // Optional entries are the other platforms' binaries (sharp, esbuild): the lock lists them, this host skips them.
    const missing = Object.entries(lock.packages)
      .filter(([key, p]) => key.startsWith('node_modules/') && !p.optional && !p.link && !have.has(key))
      .map(([key]) => key);
    assert.deepEqual(missing, [], 'lock entries that were not installed');
    assert.ok(have.size > 100, `only ${have.size} packages installed`);
  });

  test('a package.json that the lock does not match fails the install instead of resolving ranges', async () => {
    const drifted = path.join(work, 'drifted');
    fs.cpSync(context, drifted, { recursive: true });
    const manifest = path.join(drifted, 'functions', 'worker', 'package.json');
    const pkg = JSON.parse(fs.readFileSync(manifest, 'utf8')) as { dependencies: Record<string, string> };
    pkg.dependencies['commander'] = '^13.0.0'; // the lock holds commander 14
    fs.writeFileSync(manifest, JSON.stringify(pkg, null, 2));
    const r = await replayInstall(drifted, path.join(work, 'drifted-app'));
    assert.notEqual(r.code, 0, 'npm installed from a lock that does not match package.json');
    assert.match(r.output, /in sync|Missing: commander|Invalid: lock file's commander/i, r.output);
  });
});

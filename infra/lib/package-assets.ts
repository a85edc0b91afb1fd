import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where the construct finds the files it deploys (the worker's Docker build context, the Lambda entry points): in the
 * installed package, wherever it sits, and never in the cwd of the app that uses the construct. The same code runs as
 * TypeScript from infra/lib/ (tsx, this repository's app and tests) and as JavaScript from dist/infra/lib/ (an
 * installed package), so the package root is found by walking up to this package's own package.json instead of
 * counting `..`.
 */
const PACKAGE_NAME = 'mlm-filter-stream';

const here = path.dirname(fileURLToPath(import.meta.url));
/** `.ts` when this module runs from the sources, `.js` when it runs compiled from dist/. */
const moduleExt = path.extname(fileURLToPath(import.meta.url)) === '.ts' ? '.ts' : '.js';

let cachedRoot: string | undefined;

/** The directory holding this package's package.json. */
export function packageRoot(): string {
  if (cachedRoot) return cachedRoot;
  for (let dir = here; ; dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest) && readName(manifest) === PACKAGE_NAME) return (cachedRoot = dir);
    if (path.dirname(dir) === dir) break;
  }
  throw new Error(
    `${PACKAGE_NAME}: no package.json named ${PACKAGE_NAME} above ${here}; is the package installed whole?`,
  );
}

function readName(manifest: string): string | undefined {
  try {
    return (JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: string }).name;
  } catch {
    return undefined;
  }
}

/** The part of the package this module was loaded from: the sources' root, or dist/ when running compiled. */
function codeRoot(): string {
  const root = packageRoot();
  return path.relative(root, here).split(path.sep)[0] === 'dist' ? path.join(root, 'dist') : root;
}

/**
 * NodejsFunction paths for `functions/lambda/<name>`: the entry beside this module's own code (the `.ts` source under
 * tsx, the compiled `.js` in dist/ of an installed package), the package root as esbuild's project root, and a
 * manifest for the package-manager choice. npm never packs package-lock.json, so an installed package offers
 * package.json instead, which aws-cdk-lib only reads the file name of to pick npm.
 */
export function lambdaEntry(name: string): { entry: string; projectRoot: string; depsLockFilePath: string } {
  const root = packageRoot();
  const entry = path.join(codeRoot(), 'functions', 'lambda', `${name}${moduleExt}`);
  if (!fs.existsSync(entry)) throw new Error(`${PACKAGE_NAME}: Lambda entry ${entry} is missing from the package`);
  const lock = path.join(root, 'package-lock.json');
  return { entry, projectRoot: root, depsLockFilePath: fs.existsSync(lock) ? lock : path.join(root, 'package.json') };
}

/** The worker image's Docker build context (the package root) and its Dockerfile, relative to the context. */
export const WORKER_DOCKERFILE = 'functions/worker/Dockerfile';

/** The worker image's build-context allow-list, shared by Docker (BuildKit) and by CDK's asset hash. */
export function workerDockerIgnore(): string[] {
  const file = path.join(packageRoot(), `${WORKER_DOCKERFILE}.dockerignore`);
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

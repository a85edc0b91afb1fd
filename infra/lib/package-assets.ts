import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where the construct finds the files it deploys (the worker's Docker build context, the Lambda code): in its own
 * package, wherever it is installed, never in the cwd of the app that uses it. Two layouts:
 * - the installed construct package (`mlm-filter-stream-construct`, packed from infra/): the Lambdas pre-bundled in
 *   dist/lambda/<name>/ (scripts/construct-build.ts; kafkajs and the MSK signer inside, so the package needs neither)
 *   and the worker's build context staged in worker-context/ (scripts/construct-context.mjs, at pack time);
 * - this repository's checkout (infra/ inside the runtime package's root): the Lambdas bundled from their sources at
 *   synth, and the repository root as the build context.
 * The package root is found by walking up to the package's own package.json, so the same code works as TypeScript
 * from infra/lib/ (tsx) and as JavaScript from dist/infra/lib/.
 */
const PACKAGE_NAME = 'mlm-filter-stream-construct';
/** The runtime package (the CLI and the worker) whose workspace the construct is in a checkout. */
const RUNTIME_NAME = 'mlm-filter-stream';

const here = path.dirname(fileURLToPath(import.meta.url));

let cachedRoot: string | undefined;

/** The directory holding the construct package's package.json. */
export function packageRoot(): string {
  if (cachedRoot) return cachedRoot;
  for (let dir = here; ; dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest) && readManifest(manifest)?.name === PACKAGE_NAME) return (cachedRoot = dir);
    if (path.dirname(dir) === dir) break;
  }
  throw new Error(
    `${PACKAGE_NAME}: no package.json named ${PACKAGE_NAME} above ${here}; is the package installed whole?`,
  );
}

function readManifest(manifest: string): { name?: string; workspaces?: unknown } | undefined {
  try {
    return JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: string; workspaces?: unknown };
  } catch {
    return undefined;
  }
}

/** The repository root when the construct runs from a checkout (its workspace's parent), else undefined. */
export function checkoutRoot(): string | undefined {
  const parent = path.dirname(packageRoot());
  const manifest = readManifest(path.join(parent, 'package.json'));
  const workspaces = Array.isArray(manifest?.workspaces) ? (manifest.workspaces as unknown[]) : [];
  const isWorkspace = workspaces.includes(path.basename(packageRoot()));
  return manifest?.name === RUNTIME_NAME && isWorkspace ? parent : undefined;
}

/** The code of `functions/lambda/<name>`: its source to bundle (a checkout), or the packed bundle's directory. */
export type LambdaSource =
  | { readonly kind: 'source'; readonly entry: string; readonly projectRoot: string; readonly depsLockFilePath: string }
  | { readonly kind: 'bundle'; readonly directory: string };

export function lambdaSource(name: string): LambdaSource {
  const repo = checkoutRoot();
  if (repo) {
    const entry = path.join(repo, 'functions', 'lambda', `${name}.ts`);
    if (!fs.existsSync(entry)) throw new Error(`${PACKAGE_NAME}: Lambda source ${entry} is missing`);
    return { kind: 'source', entry, projectRoot: repo, depsLockFilePath: path.join(repo, 'package-lock.json') };
  }
  const directory = lambdaBundleDir(packageRoot(), name);
  if (!fs.existsSync(path.join(directory, 'index.mjs'))) {
    throw new Error(`${PACKAGE_NAME}: the Lambda bundle ${directory}/index.mjs is missing from the package`);
  }
  return { kind: 'bundle', directory };
}

/** Where the construct package keeps the pre-bundled `functions/lambda/<name>` (scripts/construct-build.ts). */
export function lambdaBundleDir(constructRoot: string, name: string): string {
  return path.join(constructRoot, 'dist', 'lambda', name);
}

/** The worker image's Dockerfile, relative to its build context. */
export const WORKER_DOCKERFILE = 'functions/worker/Dockerfile';
/** The packed construct's copy of the build context, beside dist/ (scripts/construct-context.mjs). */
export const WORKER_CONTEXT_DIR = 'worker-context';

/** The worker image's Docker build context: the repository root of a checkout, or the packed copy. */
export function workerContext(): string {
  const context = checkoutRoot() ?? path.join(packageRoot(), WORKER_CONTEXT_DIR);
  if (!fs.existsSync(path.join(context, WORKER_DOCKERFILE))) {
    throw new Error(`${PACKAGE_NAME}: the worker build context ${context} has no ${WORKER_DOCKERFILE}`);
  }
  return context;
}

/** The worker image's build-context allow-list, shared by Docker (BuildKit) and by CDK's asset hash. */
export function workerDockerIgnore(): string[] {
  const file = path.join(workerContext(), `${WORKER_DOCKERFILE}.dockerignore`);
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/**
 * The construct package (infra/) as another project sees it: a directory outside the checkout whose node_modules holds
 * it as `npm install <path>` or `npm link` leaves it (a symlink), beside the peers a CDK app brings itself.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface PackageJson {
  name: string;
  private?: boolean;
  workspaces?: string[];
  exports: Record<string, string | Record<string, string>>;
  files: string[];
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  scripts: Record<string, string>;
}

/** The runtime package (the CLI and the worker): the repository root. */
export const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as PackageJson;

/** The construct package: the infra/ workspace. */
export const CONSTRUCT_DIR = join(ROOT, 'infra');
export const CONSTRUCT = JSON.parse(readFileSync(join(CONSTRUCT_DIR, 'package.json'), 'utf8')) as PackageJson;

/** Why the compiled construct cannot be checked here (no build), or false. */
export const noBuild = existsSync(join(CONSTRUCT_DIR, 'dist'))
  ? false
  : 'infra/dist/ is absent: run `npm run build` (npm ci runs it as `prepare`) to check the compiled construct';

/** Every file an exports entry of the construct points at (each condition), relative to its package root. */
export function exportTargets(): { subpath: string; condition: string; target: string }[] {
  return Object.entries(CONSTRUCT.exports).flatMap(([subpath, entry]) =>
    typeof entry === 'string'
      ? [{ subpath, condition: 'default', target: entry }]
      : Object.entries(entry).map(([condition, target]) => ({ subpath, condition, target })),
  );
}

/** A consumer project (ESM) with the construct and the given packages of this checkout linked into node_modules. */
export function consumerProject(peers: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-consumer-'));
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true });
  symlinkSync(CONSTRUCT_DIR, join(dir, 'node_modules', CONSTRUCT.name), 'dir');
  for (const name of peers) symlinkSync(join(ROOT, 'node_modules', name), join(dir, 'node_modules', name), 'dir');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer-app', private: true, type: 'module' }));
  return dir;
}

/** npm's own settings of the parent run (npm test) must not leak into the child npm runs. */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = Object.entries(process.env).filter(([k, v]) => v !== undefined && !k.toLowerCase().startsWith('npm_'));
  return { ...(Object.fromEntries(env) as Record<string, string>), AWS_EC2_METADATA_DISABLED: 'true', ...extra };
}

/** The repository's files the construct's build and pack read (scripts: its build, context and lock scripts). */
const PACK_INPUTS = ['package.json', 'package-lock.json', 'tsconfig.json', 'lib', 'functions', 'infra', 'scripts'];

/**
 * The construct package as the registry would serve it: `npm pack -w infra` (its prepack derives the worker lock,
 * builds, stages the build context) on a copy of the repository, so the checkout's own infra/dist/ is not touched.
 * Returns the tarball's path in `work`.
 */
export async function packConstruct(work: string): Promise<string> {
  const stage = join(work, 'repo');
  for (const entry of PACK_INPUTS) {
    cpSync(join(ROOT, entry), join(stage, entry), {
      recursive: true,
      filter: (src) => !/[\\/]infra[\\/](dist|worker-context)$/.test(src),
    });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(stage, 'node_modules'), 'dir');
  const { stdout } = await promisify(execFile)('npm', ['pack', '-w', 'infra', '--json', '--pack-destination', work], {
    cwd: stage,
    env: childEnv(),
    maxBuffer: 64 << 20,
  });
  const [packed] = JSON.parse(stdout) as { filename: string }[];
  return join(work, packed!.filename);
}

/** tsc's exit status and output on a consumer project (the root's TypeScript). */
export async function typecheck(app: string): Promise<{ code: number; output: string }> {
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    const r = await promisify(execFile)(process.execPath, [tsc, '-p', app], { cwd: app });
    return { code: 0, output: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, output: e.stdout + e.stderr };
  }
}

/**
 * The package as another project sees it: a directory outside the checkout whose node_modules holds this package as
 * `npm install <path>` or `npm link` leaves it (a symlink), beside the peers a CDK app brings itself.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface PackageJson {
  name: string;
  exports: Record<string, string | Record<string, string>>;
  files: string[];
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  scripts: Record<string, string>;
}

export const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as PackageJson;

/** Why the compiled package cannot be checked here (no build), or false. */
export const noBuild = existsSync(join(ROOT, 'dist'))
  ? false
  : 'dist/ is absent: run `npm run build` (npm ci runs it as `prepare`) to check the compiled package';

/** Every file an exports entry points at (each condition of a conditional entry), relative to the package root. */
export function exportTargets(): { subpath: string; condition: string; target: string }[] {
  return Object.entries(PKG.exports).flatMap(([subpath, entry]) =>
    typeof entry === 'string'
      ? [{ subpath, condition: 'default', target: entry }]
      : Object.entries(entry).map(([condition, target]) => ({ subpath, condition, target })),
  );
}

/** A consumer project (ESM) with the package and the given packages of this checkout linked into node_modules. */
export function consumerProject(peers: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-consumer-'));
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true });
  symlinkSync(ROOT, join(dir, 'node_modules', PKG.name), 'dir');
  for (const name of peers) symlinkSync(join(ROOT, 'node_modules', name), join(dir, 'node_modules', name), 'dir');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer-app', private: true, type: 'module' }));
  return dir;
}

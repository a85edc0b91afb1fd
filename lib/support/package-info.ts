/**
 * The installed package's own files: its version (--version, summary.json, each curated sample's .json) and the
 * JSON schemas it publishes in schema/. Found by walking up from this module, so the same code works from the
 * sources (lib/support/) and from the build (dist/lib/support/), where relative paths differ by one level.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'mlm-filter-stream';

let cachedRoot: string | undefined;

/** The directory holding this package's package.json. */
export function packageRoot(): string {
  if (cachedRoot) return cachedRoot;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (
      existsSync(manifest) &&
      (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === PACKAGE_NAME
    ) {
      return (cachedRoot = dir);
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the ${PACKAGE_NAME} package.json above ${import.meta.url}`);
    dir = parent;
  }
}

let cachedVersion: string | undefined;

/** This tool's version, as package.json states it (e.g. `0.1.0`). */
export function toolVersion(): string {
  cachedVersion ??= (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string })
    .version;
  return cachedVersion;
}

/** A published JSON schema, parsed: `name` is its file in schema/, e.g. `filter-config.schema.json`. */
export function publishedSchema(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(packageRoot(), 'schema', name), 'utf8')) as Record<string, unknown>;
}

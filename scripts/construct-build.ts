/**
 * Builds the construct package (infra/, `mlm-filter-stream-construct`) into infra/dist/: `npm run build -w infra`,
 * and its prepack. Run with `node --import tsx scripts/construct-build.ts`.
 * - tsc compiles infra/lib and the contracts it imports (infra/tsconfig.build.json);
 * - every emitted module may import only aws-cdk-lib, constructs and node: builtins (the package's peers): a contract
 *   of lib/ that starts to import kafkajs, sharp, onnxruntime or the AWS SDK fails the build here instead of failing
 *   the user's synth;
 * - the Kafka Lambdas are bundled with esbuild (KAFKA_LAMBDA_BUNDLING, what a checkout's synth does) into
 *   dist/lambda/<name>/index.mjs, so the app needs neither kafkajs nor esbuild nor Docker to synthesise.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { KAFKA_LAMBDA_BUNDLING } from '../infra/lib/kafka-lambda.ts';
import { lambdaBundleDir } from '../infra/lib/package-assets.ts';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const INFRA = path.join(ROOT, 'infra');
const DIST = path.join(INFRA, 'dist');
/** The functions/lambda handlers the construct deploys. */
export const LAMBDAS = ['topic-provisioner', 'lag-probe'];
/** What the compiled construct may import: its peers and Node's builtins. */
const ALLOWED = /^(node:|aws-cdk-lib(\/|$)|constructs$)/;

/** Bare specifiers (not relative) that a compiled module imports, type-only imports already erased by tsc. */
export function bareImports(code: string): string[] {
  const specs = [...code.matchAll(/(?:^|[;\s])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!);
  const side = [...code.matchAll(/(?:^|[;\s])import\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!);
  const dynamic = [...code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]!);
  return [...specs, ...side, ...dynamic].filter((s) => !s.startsWith('.'));
}

/** Modules of the compiled construct importing something else than its peers, as `file: specifier`. */
export function foreignImports(dist: string): string[] {
  const files = fs.readdirSync(dist, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.js'));
  return files
    .filter((f) => !f.startsWith(`lambda${path.sep}`))
    .flatMap((f) => bareImports(fs.readFileSync(path.join(dist, f), 'utf8')).map((s) => `${f}: ${s}`))
    .filter((entry) => !ALLOWED.test(entry.slice(entry.indexOf(': ') + 2)));
}

async function bundleLambda(name: string): Promise<void> {
  const b = KAFKA_LAMBDA_BUNDLING;
  const outdir = lambdaBundleDir(INFRA, name);
  await build({
    entryPoints: [path.join(ROOT, 'functions', 'lambda', `${name}.ts`)],
    outfile: path.join(outdir, 'index.mjs'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: b.target,
    minify: b.minify,
    sourcemap: b.sourceMap,
    external: b.externalModules,
    banner: { js: b.banner! },
    mainFields: ['module', 'main'],
    logLevel: 'warning',
  });
}

async function main(): Promise<void> {
  fs.rmSync(DIST, { recursive: true, force: true });
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(INFRA, 'tsconfig.build.json')], { stdio: 'inherit' });
  const foreign = foreignImports(DIST);
  if (foreign.length) {
    throw new Error(
      `construct-build: the construct imports what its package does not depend on:\n${foreign.join('\n')}`,
    );
  }
  for (const name of LAMBDAS) await bundleLambda(name);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await main();
}

import { IgnoreMode, Stack, Token } from 'aws-cdk-lib';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import type { Construct } from 'constructs';
import { WORKER_DOCKERFILE, workerContext, workerDockerIgnore } from './package-assets.ts';
import type { WorkerImageBuildOptions, WorkerOptions } from './props.ts';

/**
 * The worker's container image: the user's, or the package's own Dockerfile built at deploy time (synth only hashes
 * the build context). The build context is the construct package's copy (or a checkout), not the app's directory.
 */
export function workerImage(scope: Construct, opts: WorkerOptions): ecs.ContainerImage {
  if (opts.image) return opts.image;
  if (opts.imageUri) return registryImage(scope, opts.imageUri);
  return ecs.ContainerImage.fromAsset(workerContext(), {
    file: WORKER_DOCKERFILE,
    exclude: workerDockerIgnore(),
    ignoreMode: IgnoreMode.DOCKER,
    // The GPU instances are x86_64 (g4dn/g5/g6): an arm64 build host (Apple silicon, Graviton CI) must still
    // produce an amd64 image, else every task fails with `exec format error`.
    platform: Platform.LINUX_AMD64,
    // Only the args that are set: the Dockerfile's ARG defaults are the public registries, and an unchanged
    // configuration keeps its asset hash.
    buildArgs: imageBuildArgs(opts.imageBuild),
  });
}

/** The Dockerfile's build args for the set options (functions/worker/Dockerfile's ARG names). */
export function imageBuildArgs(build: WorkerImageBuildOptions | undefined): Record<string, string> | undefined {
  const args = Object.entries({
    NPM_CONFIG_REGISTRY: build?.npmRegistry,
    PIP_INDEX_URL: build?.pipIndexUrl,
    PIP_EXTRA_INDEX_URL: build?.pipExtraIndexUrl,
    BASE_IMAGE: build?.baseImage,
  }).filter((e): e is [string, string] => e[1] !== undefined);
  return args.length ? Object.fromEntries(args) : undefined;
}

/** An ECR repository URI, optionally with a tag and/or a digest. */
const ECR_URI =
  /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)(?::([^@]+))?(?:@(sha256:[0-9a-f]{64}))?$/;

/** Image props that would build or pull something else than asked fail synth (`fail` prefixes the construct path). */
export function validateWorkerImage(worker: WorkerOptions, fail: (msg: string) => void): void {
  if (worker.image && worker.imageUri) fail('worker: give image or imageUri, not both');
  if (worker.imageBuild && (worker.image || worker.imageUri)) {
    fail('worker.imageBuild applies to the image built from the package; a given image or imageUri is not built');
  }
  const uri = worker.imageUri;
  if (uri !== undefined && !Token.isUnresolved(uri)) {
    if (!/^[^\s@]+(@sha256:[0-9a-f]{64})?$/.test(uri)) {
      fail(`worker.imageUri ${JSON.stringify(uri)}: a digest is @sha256: and 64 lowercase hex characters`);
    }
    // Anything else is pulled as a public image: an ECR URI that the pattern misses would lose its pull permission.
    if (/\.dkr\.ecr\./.test(uri) && !ECR_URI.test(uri)) {
      fail(`worker.imageUri ${uri}: not an ECR URI <account>.dkr.ecr.<region>.amazonaws.com/<name>[:tag][@sha256:...]`);
    }
  }
  const build = worker.imageBuild ?? {};
  for (const [name, value] of [
    ['npmRegistry', build.npmRegistry],
    ['pipIndexUrl', build.pipIndexUrl],
    ['pipExtraIndexUrl', build.pipExtraIndexUrl],
  ] as const) {
    if (value !== undefined) validateMirrorUrl(`worker.imageBuild.${name}`, value, fail);
  }
  const base = build.baseImage;
  if (base !== undefined && (Token.isUnresolved(base) || !/^[^\s@]+(@sha256:[0-9a-f]{64})?$/.test(base))) {
    fail(`worker.imageBuild.baseImage ${JSON.stringify(base)}: an image reference, [registry/]name[:tag][@sha256:...]`);
  }
}

/** Build args are written into cdk.out and the image's history: plain http(s) URLs without credentials only. */
function validateMirrorUrl(name: string, value: string, fail: (msg: string) => void): void {
  if (Token.isUnresolved(value)) fail(`${name}: a build arg must be known at synth (not a token)`);
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || !/^https?:$/.test(url.protocol) || /\s/.test(value))
    fail(`${name} ${JSON.stringify(value)}: not an http(s) URL`);
  else if (url.username || url.password) {
    fail(
      `${name}: credentials in the URL would be stored in cdk.out and the image's history; use a mirror without them`,
    );
  }
}

/**
 * An ECR image gets pull permissions on the execution role for exactly its repository; others are public. A digest wins
 * over a tag (as for `docker pull`): the task definition names `<repository>@sha256:...`.
 */
function registryImage(scope: Construct, uri: string): ecs.ContainerImage {
  const m = ECR_URI.exec(uri);
  if (!m) return ecs.ContainerImage.fromRegistry(uri);
  const [, account, region, name, tag, digest] = m;
  const repo = ecr.Repository.fromRepositoryAttributes(scope, 'WorkerRepository', {
    repositoryName: name!,
    repositoryArn: Stack.of(scope).formatArn({
      service: 'ecr',
      account,
      region,
      resource: 'repository',
      resourceName: name,
    }),
  });
  return ecs.ContainerImage.fromEcrRepository(repo, digest ?? tag ?? 'latest');
}

import { IgnoreMode, Stack } from 'aws-cdk-lib';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import type { Construct } from 'constructs';
import { WORKER_DOCKERFILE, packageRoot, workerDockerIgnore } from './package-assets.ts';
import type { WorkerOptions } from './props.ts';

/**
 * The worker's container image: the user's, or the package's own Dockerfile built at deploy time (synth only hashes
 * the build context). The build context is the installed package, not the app's directory.
 */
export function workerImage(scope: Construct, opts: WorkerOptions): ecs.ContainerImage {
  if (opts.image) return opts.image;
  if (opts.imageUri) return registryImage(scope, opts.imageUri);
  return ecs.ContainerImage.fromAsset(packageRoot(), {
    file: WORKER_DOCKERFILE,
    exclude: workerDockerIgnore(),
    ignoreMode: IgnoreMode.DOCKER,
    // The GPU instances are x86_64 (g4dn/g5/g6): an arm64 build host (Apple silicon, Graviton CI) must still
    // produce an amd64 image, else every task fails with `exec format error`.
    platform: Platform.LINUX_AMD64,
  });
}

/** An ECR image gets pull permissions on the execution role for exactly its repository; others are public. */
function registryImage(scope: Construct, uri: string): ecs.ContainerImage {
  const m =
    /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)(?::([^@]+))?(?:@(sha256:[0-9a-f]{64}))?$/.exec(
      uri,
    );
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

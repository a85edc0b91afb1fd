import { OutputFormat, type BundlingOptions } from 'aws-cdk-lib/aws-lambda-nodejs';

/** How the stack's Kafka Lambdas (topic provisioner, lag probe) are bundled. */
export const KAFKA_LAMBDA_BUNDLING: BundlingOptions = {
  // Local esbuild only: synth must work on machines without Docker.
  forceDockerBundling: false,
  format: OutputFormat.ESM,
  target: 'node24',
  minify: true,
  sourceMap: true,
  // The Node.js runtime ships AWS SDK v3; the MSK signer's own SDK deps are bundled with it.
  externalModules: ['@aws-sdk/client-secrets-manager'],
  // ESM bundles of CommonJS deps (kafkajs) need a require().
  banner: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
};

import { Validations } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat, type BundlingOptions } from 'aws-cdk-lib/aws-lambda-nodejs';
import type { Construct } from 'constructs';
import { lambdaSource } from './package-assets.ts';

/** What the stack's Kafka Lambdas (topic provisioner, lag probe) share: bundling, and their managed policies. */

/**
 * Their runtime: the Node.js LTS their code is built for (`target` below) and tested on, pinned rather than "the
 * newest the installed aws-cdk-lib knows", so a user's CDK upgrade does not move a deployed function to a runtime
 * nobody ran it on. cdk-nag's AwsSolutions-L1 (which asks for the newest) is acknowledged with this reason.
 */
export const KAFKA_LAMBDA_RUNTIME = lambda.Runtime.NODEJS_24_X;

/** How they are bundled: at synth in a checkout, at pack time for the construct package (scripts/construct-build.ts). */
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

/**
 * One of `functions/lambda/<name>`'s handler (export `handler`) as a function: in the construct package from its
 * pre-bundled code (built with KAFKA_LAMBDA_BUNDLING when packed: the app needs neither esbuild nor Docker nor kafkajs),
 * in a checkout bundled from the source at synth.
 */
export function kafkaLambda(
  scope: Construct,
  id: string,
  name: string,
  props: Omit<lambda.FunctionProps, 'code' | 'handler' | 'runtime'>,
): lambda.Function {
  const source = lambdaSource(name);
  if (source.kind === 'bundle') {
    const code = lambda.Code.fromAsset(source.directory);
    return new lambda.Function(scope, id, { ...props, code, handler: 'index.handler', runtime: KAFKA_LAMBDA_RUNTIME });
  }
  const { entry, projectRoot, depsLockFilePath } = source;
  return new NodejsFunction(scope, id, {
    ...props,
    entry,
    projectRoot,
    depsLockFilePath,
    handler: 'handler',
    runtime: KAFKA_LAMBDA_RUNTIME,
    bundling: KAFKA_LAMBDA_BUNDLING,
  });
}

/**
 * The AWS managed policies of a Lambda in the brokers' VPC, acknowledged for cdk-nag with what they allow, and its
 * pinned runtime (see KAFKA_LAMBDA_RUNTIME).
 */
export function acknowledgeVpcLambdaPolicies(scope: Construct): void {
  const v = Validations.of(scope);
  v.acknowledge({
    id: 'AwsSolutions-L1',
    reason: `Pinned to ${KAFKA_LAMBDA_RUNTIME.name}, the Node.js LTS the function is bundled for and tested on; a newer runtime is adopted by a release of this construct, not by the app's aws-cdk-lib version.`,
  });
  v.acknowledge({
    id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
    reason:
      'AWSLambdaBasicExecutionRole allows logs:CreateLogGroup, logs:CreateLogStream and logs:PutLogEvents, which Lambda needs to deliver the function log.',
  });
  v.acknowledge({
    id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
    reason:
      "AWSLambdaVPCAccessExecutionRole allows ec2:CreateNetworkInterface, DescribeNetworkInterfaces, DescribeSubnets, DeleteNetworkInterface, AssignPrivateIpAddresses and UnassignPrivateIpAddresses (the function's ENIs in the brokers' VPC) and the log delivery actions.",
  });
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { MlmFilterPipeline, type MlmFilterPipelineProps } from '../../infra/lib/pipeline.ts';

export const MSK_ARN = 'arn:aws:kafka:eu-west-1:111122223333:cluster/crawl/5f2c1d7e-aaaa-bbbb-cccc-0123456789ab-3';
export const MSK_TOPIC_PREFIX =
  'arn:aws:kafka:eu-west-1:111122223333:topic/crawl/5f2c1d7e-aaaa-bbbb-cccc-0123456789ab-3/';
export const MSK_GROUP_PREFIX =
  'arn:aws:kafka:eu-west-1:111122223333:group/crawl/5f2c1d7e-aaaa-bbbb-cccc-0123456789ab-3/';
export const SHA = 'ab'.repeat(32);

export interface Synthesised {
  readonly stack: Stack;
  readonly pipeline: MlmFilterPipeline;
  readonly template: Template;
  readonly outdir: string;
  /** Every violation of every validation plugin (cdk-nag AwsSolutions included), unacknowledged only. */
  readonly violations: { plugin: string; rule: string; paths: string[] }[];
}

export interface SynthOptions {
  /** Run esbuild for the Lambda (slower); otherwise bundling is skipped via the CDK context switch. */
  readonly bundle?: boolean;
  readonly nag?: boolean;
  /** Runs on the built pipeline before synthesis (e.g. to call its grant methods). */
  readonly then?: (pipeline: MlmFilterPipeline, stack: Stack) => void;
}

/** Builds one stack with the pipeline in it (props made from the stack and its VPC), synthesises it, with cdk-nag. */
export function synth(
  build: (stack: Stack) => MlmFilterPipelineProps,
  opts: SynthOptions = {},
  id = 'Pipeline',
): Synthesised {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-infra-'));
  const app = new App({
    outdir,
    context: opts.bundle ? {} : { 'aws:cdk:bundling-stacks': [] },
  });
  const stack = new Stack(app, 'Test', { env: { account: '111122223333', region: 'eu-west-1' } });
  const pipeline = new MlmFilterPipeline(stack, id, build(stack));
  opts.then?.(pipeline, stack);
  if (opts.nag ?? true) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  app.synth();
  return { stack, pipeline, template: Template.fromStack(stack), outdir, violations: readViolations(outdir) };
}

export function readViolations(outdir: string): Synthesised['violations'] {
  const file = path.join(outdir, 'validation-report.json');
  if (!fs.existsSync(file)) return [];
  const report = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    pluginReports: {
      pluginName: string;
      violations: { ruleName: string; violatingConstructs?: { constructPath?: string }[] }[];
    }[];
  };
  return report.pluginReports.flatMap((r) =>
    r.violations.map((v) => ({
      plugin: r.pluginName,
      rule: v.ruleName,
      paths: (v.violatingConstructs ?? []).map((c) => c.constructPath ?? '?'),
    })),
  );
}

export function model(stack: Stack): MlmFilterPipelineProps['model'] {
  return { bucket: s3.Bucket.fromBucketName(stack, 'Models', 'models-bucket'), key: 'mlm/qwen-1.5b.tar', sha256: SHA };
}

export function brokersVpc(stack: Stack): ec2.IVpc {
  return ec2.Vpc.fromVpcAttributes(stack, 'BrokersVpc', {
    vpcId: 'vpc-0123456789abcdef0',
    availabilityZones: ['eu-west-1a', 'eu-west-1b'],
    privateSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
    privateSubnetRouteTableIds: ['rtb-0aaaaaaaaaaaaaaa1', 'rtb-0aaaaaaaaaaaaaaa2'],
  });
}

/** All IAM policy statements of the template, flattened, with the policy's logical id. */
export function statements(
  template: Template,
): { policy: string; Action: string[]; Resource: unknown[]; Condition?: unknown }[] {
  const out: { policy: string; Action: string[]; Resource: unknown[]; Condition?: unknown }[] = [];
  for (const [id, res] of Object.entries(template.findResources('AWS::IAM::Policy'))) {
    const doc = (res as { Properties: { PolicyDocument: { Statement: Record<string, unknown>[] } } }).Properties
      .PolicyDocument;
    for (const s of doc.Statement) {
      const a = s.Action;
      const r = s.Resource;
      out.push({
        policy: id,
        Action: Array.isArray(a) ? (a as string[]) : [a as string],
        Resource: Array.isArray(r) ? r : [r],
        Condition: s.Condition,
      });
    }
  }
  return out;
}

/** The environment of the worker container of the task definition whose logical id contains `name`. */
export function workerEnv(template: Template, name: string): Record<string, unknown> {
  const defs = template.findResources('AWS::ECS::TaskDefinition');
  const entry = Object.entries(defs).find(([id]) => id.includes(name));
  if (!entry) throw new Error(`no task definition matching ${name}: ${Object.keys(defs).join(', ')}`);
  const container = (
    entry[1] as { Properties: { ContainerDefinitions: { Environment: { Name: string; Value: unknown }[] }[] } }
  ).Properties.ContainerDefinitions[0]!;
  return Object.fromEntries(container.Environment.map((e) => [e.Name, e.Value]));
}

/**
 * CDK app behind cdk.json: `npx cdk synth` / `npx cdk deploy -c key=value ...`.
 * Context keys: infra/lib/app-config.ts CONTEXT_KEYS, documented in docs/DEPLOY.md.
 */
import { Annotations, App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { MlmFilterStack, REQUIRED_FOR_DEPLOY, type ContextKey } from '../lib/app-config.ts';

const app = new App();
const ctx = (key: ContextKey): unknown => app.node.tryGetContext(key);
const str = (v: unknown) => (v === undefined || v === null || v === '' ? undefined : String(v));

const account = str(ctx('account'));
const region = str(ctx('region'));
const stack = new MlmFilterStack(app, str(ctx('stackName')) ?? 'MlmFilter', {
  // Env-agnostic unless both are given: no lookups, so synth needs no credentials.
  env: account && region ? { account, region } : undefined,
  context: ctx,
  description: 'MLM filter stream pipeline: GPU workers scoring crawled image-text pairs',
});

const missing = stack.examplesUsed.filter((k) => REQUIRED_FOR_DEPLOY.includes(k));
if (missing.length > 0) {
  Annotations.of(stack).addWarningV2(
    'mlmf:example-config',
    `Synthesised with EXAMPLE values for ${missing.join(', ')}: set them with -c key=value before deploying (docs/DEPLOY.md).`,
  );
}

if (str(ctx('nag')) !== 'false') {
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
}

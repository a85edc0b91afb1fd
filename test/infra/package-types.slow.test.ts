/**
 * Slow (tsc reads aws-cdk-lib's types twice: 1-3 min; runs with MLMF_SLOW=1): a TypeScript CDK app outside the
 * checkout type-checks against the construct's .d.ts files through the exports map's `types` condition (without
 * skipLibCheck), and a misspelt import fails the check. Needs the infra/dist/ of `npm run build`; skips only without one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONSTRUCT, consumerProject, noBuild, typecheck } from '../helpers/package-consumer.ts';

const skip = process.env.MLMF_SLOW === '1' ? noBuild : 'slow suite: set MLMF_SLOW=1';

test('a TypeScript CDK app type-checks against the construct through the exports map', { skip }, async (t) => {
  const app = consumerProject(['aws-cdk-lib', 'constructs', '@types/node']);
  t.after(() => rmSync(app, { recursive: true, force: true }));
  const compilerOptions = { target: 'ES2022', module: 'NodeNext', strict: true, noEmit: true, types: ['node'] };
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['app.ts'] }));
  const source = (names: string) => `
    import { App, Stack } from 'aws-cdk-lib';
    import { ${names} } from '${CONSTRUCT.name}';
    const stack = new Stack(new App(), 'Consumer');
    const props: Partial<MlmFilterPipelineProps> = {};
    export const seen = [stack.node.id, typeof MlmFilterPipeline, props];
  `;
  writeFileSync(join(app, 'app.ts'), source('MlmFilterPipeline, type MlmFilterPipelineProps'));
  const good = await typecheck(app);
  assert.equal(good.code, 0, good.output);

  writeFileSync(join(app, 'app.ts'), source('MlmFilterPipeline, type MlmFilterPipelineProps, NoSuchExport'));
  const bad = await typecheck(app);
  assert.notEqual(bad.code, 0, 'tsc accepted an import the .d.ts files do not declare');
  assert.match(bad.output, /has no exported member 'NoSuchExport'/);
});

/**
 * Nothing phones home: onnxruntime's built-in telemetry (a device id and an event database under
 * $HOME/.cache/Microsoft, a /tmp/mat-debug-<pid>.log, uploads to Microsoft's collector) stays off in every entry
 * point that loads it, unless MLMF_ORT_TELEMETRY=1 opts in. Each run gets a fresh HOME and TMPDIR (onnxruntime
 * writes its debug log under TMPDIR) and the test looks at what appeared there.
 *
 * The CLI runs in a private network namespace (`unshare -n`: even the opt-in run cannot reach anything); the opt-in
 * run shows the files appear, so the check can fail. The worker needs the local Kafka, SQS and S3 servers, so it runs
 * in the host's namespace, telemetry off only (onnxruntime's default is on: without the policy the files appear).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateQueueCommand, DeleteQueueCommand, SQSClient } from '@aws-sdk/client-sqs';
import {
  BROKERS,
  CREDENTIALS,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  closeServiceClients,
  createBucket,
  createTopics,
  needServices,
  openServiceClients,
  uniq,
  type ServiceClients,
} from '../stream/helpers.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const MODEL = join(ROOT, 'test/fixtures/models/tiny-llava-qwen');
const canUnshare = spawnSync('unshare', ['-n', 'true']).status === 0;
// Before any suite starts: the CLI runs below block the event loop, which would time out this probe's sockets.
const skipWorker = await needServices('kafka', 's3', 'sqs');

interface Traces {
  microsoftCache: boolean;
  matDebugLogs: string[];
}

/**
 * onnxruntime keeps its telemetry off by itself where it sees a CI system's variable (CI=true and the like), which
 * would make both checks below pass without our policy: the children run without them.
 */
const CI_MARKERS = [
  'CI',
  'GITHUB_ACTIONS',
  'GITLAB_CI',
  'TF_BUILD',
  'JENKINS_URL',
  'TRAVIS',
  'CIRCLECI',
  'APPVEYOR',
  'BUILDKITE',
  'TEAMCITY_VERSION',
  'CODEBUILD_BUILD_ID',
  'BITBUCKET_BUILD_NUMBER',
];

function childEnv(d: { home: string; tmp: string }, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: d.home, TMPDIR: d.tmp, AWS_EC2_METADATA_DISABLED: 'true' };
  for (const k of [...CI_MARKERS, 'MLMF_ORT_TELEMETRY', 'ORT_DISABLE_TELEMETRY']) delete env[k];
  return { ...env, ...extra };
}

function freshDirs(): { home: string; tmp: string } {
  const base = mkdtempSync(join(tmpdir(), 'mlmf-telemetry-'));
  const dirs = { home: join(base, 'home'), tmp: join(base, 'tmp') };
  for (const d of Object.values(dirs)) spawnSync('mkdir', ['-p', d]);
  return dirs;
}

function traces(d: { home: string; tmp: string }): Traces {
  return {
    microsoftCache: existsSync(join(d.home, '.cache', 'Microsoft')),
    matDebugLogs: readdirSync(d.tmp).filter((f) => f.startsWith('mat-debug-')),
  };
}

/** `mlm-filter filter` on the sample, offline, with a fresh HOME and TMPDIR. */
function runCli(optIn: boolean): Traces {
  const d = freshDirs();
  const out = join(d.tmp, 'out');
  // An operator's ORT_DISABLE_TELEMETRY=0 alone is not an opt-in: only MLMF_ORT_TELEMETRY is.
  const env = childEnv(d, { ORT_DISABLE_TELEMETRY: '0', ...(optIn ? { MLMF_ORT_TELEMETRY: '1' } : {}) });
  const args = ['bin/mlm-filter.js', 'filter', '--input', 'sample/pairs.jsonl', '--out', out, '--model', MODEL];
  const r = spawnSync('unshare', ['-n', process.execPath, ...args, '--progress', 'none'], { cwd: ROOT, env });
  assert.equal(r.status, 0, `filter failed: ${r.stderr}`);
  return traces(d);
}

describe('onnxruntime telemetry: the CLI', { skip: canUnshare ? false : 'needs unshare -n (root)' }, () => {
  it('leaves no device id, event database or debug log by default', () => {
    assert.deepEqual(runCli(false), { microsoftCache: false, matDebugLogs: [] });
  });

  it('MLMF_ORT_TELEMETRY=1 opts in (the traces appear, so the check above can fail)', () => {
    const t = runCli(true);
    assert.equal(t.microsoftCache, true);
    assert.equal(t.matDebugLogs.length, 1);
  });
});

describe('onnxruntime telemetry: the worker container entry', { skip: skipWorker }, () => {
  let c: ServiceClients;
  const sqs = new SQSClient({ endpoint: SQS_ENDPOINT, region: REGION, credentials: CREDENTIALS });
  let queueUrl: string;
  const bucket = uniq('telemetry');
  const audit = uniq('telemetry-audit');
  before(async () => {
    c = await openServiceClients();
    await createBucket(c.s3, bucket);
    await createTopics(c.admin, [{ topic: audit }]);
    queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: uniq('telemetry') }))).QueueUrl!;
  });
  after(async () => {
    await sqs.send(new DeleteQueueCommand({ QueueUrl: queueUrl })).catch(() => undefined);
    sqs.destroy();
    await closeServiceClients(c);
  });

  it('loads the real model with telemetry off: no traces in HOME or TMPDIR', async () => {
    const d = freshDirs();
    const env = childEnv(d, {
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
      MLMF_SQS_QUEUE_URL: queueUrl,
      MLMF_SQS_ENDPOINT: SQS_ENDPOINT,
      MLMF_S3_ENDPOINT: S3_ENDPOINT,
      MLMF_BUCKET: bucket,
      MLMF_BROKERS: BROKERS,
      MLMF_AUDIT_TOPIC: audit,
      MLMF_MODEL_DIR: MODEL,
      MLMF_EXECUTION_PROVIDER: 'cpu',
      MLMF_HEALTH_PORT: '0',
    });
    const child = spawn(process.execPath, ['--import', 'tsx', 'functions/worker/main.ts'], { cwd: ROOT, env });
    let log = '';
    const consuming = new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (b: Buffer) => {
        log += b.toString();
        if (log.includes('worker consuming')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`worker exited ${code} before consuming:\n${log}`)));
    });
    child.stderr.on('data', (b: Buffer) => (log += b.toString()));
    await consuming;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 0, log);
    assert.deepEqual(traces(d), { microsoftCache: false, matDebugLogs: [] });
    rmSync(d.home, { recursive: true, force: true });
  });
});

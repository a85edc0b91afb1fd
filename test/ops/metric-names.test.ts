/**
 * The metric contract between the emitters and the infrastructure: every metric that the synthesised pipelines'
 * dashboards, alarms and scaling policies read must come out of the emitting code itself, i.e. the EMF output of a
 * worker run (runWorker on the local Kafka and S3, FastScorer standing in for the model, the cuda provider with a
 * fake nvidia-smi executable first on PATH) and of the lag probe's handler on the same topic. No test here calls a
 * metrics setter to produce a name the check then finds, except the last one, which only checks that the contract
 * lists no name without an emitting method.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { before, describe, test } from 'node:test';
import type { Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { backlogEmf, probeConfigFromEnv, probeKafka, probeOnce } from '../../functions/lambda/lag-probe.ts';
import { runWorker } from '../../lib/worker/run.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { WorkerMetrics } from '../../lib/metrics/worker-metrics.ts';
import type { Outcome } from '../../lib/types.ts';
import { fakeNvidiaSmi } from '../helpers/fake-nvidia-smi.ts';
import { MSK_ARN, brokersVpc, model, synth } from '../infra/helpers.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  makeRecords,
  needServices,
  openServiceClients,
  closeServiceClients,
  produce,
  uniq,
} from '../stream/helpers.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const NS = 'MlmFilterCheck';
const PIPELINE = 'p1';
const skip = await needServices('kafka', 's3');

/** Metric names of namespace NS anywhere in a template: dashboard bodies, alarms, scaling policies. */
function namesIn(template: Template): Set<string> {
  const names = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (o.Namespace === NS && typeof o.MetricName === 'string') names.add(o.MetricName);
      Object.values(o).forEach(walk);
    }
  };
  for (const r of Object.values(template.toJSON().Resources as Record<string, { Type: string; Properties: unknown }>)) {
    if (r.Type === 'AWS::CloudWatch::Dashboard') {
      // The body is an Fn::Join of strings and tokens; metric names are in the string parts.
      const body = JSON.stringify(r.Properties).replace(/\\+"/g, '"');
      for (const m of body.matchAll(new RegExp(`\\["${NS}","(\\w+)"`, 'g'))) names.add(m[1]!);
      for (const m of body.matchAll(/MetricName="(\w+)"/g)) names.add(m[1]!);
    } else {
      walk(r.Properties);
    }
  }
  return names;
}

/** What the pipelines read, MSK + SQS and self-managed Kafka, as synthesised (bundling and cdk-nag off). */
function pipelineMetricNames(): Set<string> {
  const names = new Set<string>();
  const msk = synth(
    (stack) => ({
      pipelineName: PIPELINE,
      metricsNamespace: NS,
      vpc: brokersVpc(stack),
      brokersAdmitVpc: true,
      kafka: { kind: 'msk-iam', clusterArn: MSK_ARN, bootstrapServers: ['b-1.x:9098'] },
      kafkaSource: { topic: 'crawl' },
      sqsSource: {},
      topics: { audit: 'audit' },
      model: model(stack),
    }),
    { nag: false },
  );
  const selfManaged = synth(
    (stack) => ({
      pipelineName: PIPELINE,
      metricsNamespace: NS,
      vpc: brokersVpc(stack),
      brokersAdmitVpc: true,
      kafka: {
        kind: 'self-managed',
        bootstrapServers: ['k-1.internal:9096'],
        scramSecret: secretsmanager.Secret.fromSecretCompleteArn(
          stack,
          'Scram',
          'arn:aws:secretsmanager:eu-west-1:111122223333:secret:kafka-AbCdEf',
        ),
        securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'KafkaSg', 'sg-0fedcba9876543210'),
      },
      kafkaSource: { topic: 'crawl', minTasks: 1 },
      topics: { audit: 'audit' },
      model: model(stack),
    }),
    { nag: false },
  );
  for (const s of [msk, selfManaged]) for (const n of namesIn(s.template)) names.add(n);
  return names;
}

/** Metric names (and the namespace check) of EMF lines. */
function emfNames(lines: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (const line of lines) {
    const doc = JSON.parse(line) as {
      _aws?: { CloudWatchMetrics: { Namespace: string; Metrics: { Name: string }[] }[] };
    };
    for (const d of doc._aws?.CloudWatchMetrics ?? []) {
      assert.equal(d.Namespace, NS);
      for (const x of d.Metrics) out.add(x.Name);
    }
  }
  return out;
}

/**
 * A real worker run on a Kafka topic (accepts and rejects), EMF every 200 ms, GPU sampling on the cuda provider with
 * a fake nvidia-smi first on PATH, and the lag probe on the same topic; returns every EMF line, once `until` holds for
 * the names emitted so far or the deadline passes.
 */
async function emitterRun(until: (names: Set<string>) => boolean): Promise<{ worker: string[]; probe: string[] }> {
  const clients = await openServiceClients();
  const smi = await fakeNvidiaSmi('64, 20112, 23028\n');
  const savedPath = process.env.PATH;
  const t = uniq('names');
  const worker: string[] = [];
  const probe: string[] = [];
  try {
    const bucket = uniq('curated');
    await createTopics(clients.admin, [{ topic: t, partitions: 2 }, { topic: `${t}-audit` }]);
    await createBucket(clients.s3, bucket);
    await produce(clients.kafka, t, await makeRecords(t, 8), 2);
    const probeConfig = probeConfigFromEnv({
      MLMF_BROKERS: BROKERS,
      MLMF_SOURCE_TOPIC: t,
      MLMF_GROUP_ID: `${t}-group`,
      MLMF_PIPELINE: PIPELINE,
      MLMF_METRICS_NAMESPACE: NS,
    });
    await probeOnce(probeConfig, await probeKafka(probeConfig), (l) => probe.push(l));

    process.env.PATH = smi.path(savedPath);
    const stop = new AbortController();
    const run = runWorker(
      {
        source: 'kafka',
        brokers: [BROKERS],
        sourceTopic: t,
        groupId: `${t}-group`,
        bucket,
        prefix: 'curated/',
        auditTopic: `${t}-audit`,
        s3Endpoint: S3_ENDPOINT,
        healthPort: 0,
        transactionalIdPrefix: `${t}-tx`,
        sourceBatch: 4,
        idleFlushMs: 200,
        thresholds: 'itm>=50',
        scorer: new FastScorer(4),
        executionProvider: 'cuda',
        backlogSampleMs: 200,
        pipeline: PIPELINE,
        metricsNamespace: NS,
      },
      { signal: stop.signal, logger: silentLogger, metricsOut: (l) => worker.push(l), metricsIntervalMs: 200 },
    );
    try {
      await waitFor('every record committed', async () => (await committedTotal(clients.admin, `${t}-group`, t)) === 8);
      await waitFor('the emitted names', async () => until(emfNames([...worker, ...probe])), 20_000).catch(
        () => undefined, // the assertions name what is missing
      );
    } finally {
      stop.abort();
      await run;
    }
  } finally {
    process.env.PATH = savedPath;
    await smi.remove();
    await closeServiceClients(clients);
  }
  return { worker, probe };
}

describe('dashboards, alarms and scaling read only what the worker and the lag probe emit', { skip }, () => {
  let read: Set<string>;
  let emitted: Set<string>;
  let fromProbe: Set<string>;
  before(async () => {
    read = pipelineMetricNames();
    const out = await emitterRun((names) => [...read].every((n) => names.has(n)));
    emitted = emfNames([...out.worker, ...out.probe]);
    fromProbe = emfNames(out.probe);
  });

  test('every metric of the synthesised pipelines is emitted by a running worker or the lag probe', () => {
    // Guard the extraction: these are on the dashboard or drive scaling, so finding none is a broken parser.
    for (const n of [
      METRIC.PairsIn,
      METRIC.RejectsByReason,
      METRIC.ScoreITM,
      METRIC.BatchLatencyMs,
      METRIC.GpuUtilization,
      METRIC.GpuMemoryUtilization,
      METRIC.KafkaBacklog,
      METRIC.KafkaConsumerLag,
    ]) {
      assert.ok(read.has(n), `extraction missed ${n}: found ${[...read].join(', ')}`);
    }
    const missing = [...read].filter((n) => !emitted.has(n));
    assert.deepEqual(
      missing,
      [],
      `read but never emitted: ${missing.join(', ')} (emitted: ${[...emitted].join(', ')})`,
    );
    assert.deepEqual([...fromProbe], [METRIC.KafkaBacklog], 'the probe publishes the backlog, only');
  });

  test('everything emitted is in the contract of lib/metrics/metric-names.ts', () => {
    const known = new Set<string>(Object.values(METRIC));
    assert.deepEqual(
      [...emitted].filter((n) => !known.has(n)),
      [],
    );
  });

  test('every METRIC.* named in infra/lib is emitted by a running worker or the lag probe', async () => {
    const dir = new URL('../../infra/lib/', import.meta.url);
    const referenced = new Set<string>();
    for (const f of (await readdir(dir)).filter((n) => n.endsWith('.ts'))) {
      const src = await readFile(new URL(f, dir), 'utf8');
      for (const m of src.matchAll(/\bMETRIC\.(\w+)/g)) referenced.add(m[1]!);
    }
    assert.ok(referenced.has('PairsIn') && referenced.has('KafkaBacklog'), [...referenced].join(', '));
    const missing = [...referenced].filter((k) => !emitted.has((METRIC as Record<string, string>)[k] ?? k));
    assert.deepEqual(missing, []);
  });
});

test('the contract lists no name without an emitting method (WorkerMetrics reporters, the probe EMF)', () => {
  // Not evidence that anything runs them (the suite above is): only that no contract name is orphaned.
  const lines: string[] = [];
  const m = new WorkerMetrics({ namespace: NS, pipeline: PIPELINE, emit: (l) => lines.push(l), emfIntervalMs: 0 });
  const base: Omit<Outcome, 'id' | 'decision' | 'reasons' | 'scores'> = {
    record: { raw: '{}', origin: { kind: 'file', path: 'x', line: 1 } },
  };
  m.observe({ ...base, id: 'a', decision: 'accept', reasons: [], scores: { itm: 90, odf: 50, ctq: 70, su: 60 } });
  m.observe({ ...base, id: 'b', decision: 'reject', reasons: [{ code: 'duplicate', message: 'dup' }], scores: {} });
  m.observeBatchLatency(100);
  m.setConsumerLag(3);
  m.setSourceQueueDepth(5);
  m.setGpuUtilization(77);
  m.setGpuMemory(1, 2);
  m.countError('scorer_crash');
  m.close();
  const probe = backlogEmf(
    { topic: 't', groupId: 'g', total: 1, partitions: [] },
    { pipeline: PIPELINE, namespace: NS, timestamp: 0 },
  );
  const names = emfNames([...lines, JSON.stringify(probe)]);
  assert.deepEqual([...names].sort(), Object.values(METRIC).sort());
});

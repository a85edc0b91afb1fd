/**
 * The worker entry: configuration from the environment (names shared with infra/), and the health endpoint's
 * states against the local services (200 while consuming, 503 while draining).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Admin } from 'kafkajs';
import { configFromEnv, runWorker, validateConfig } from '../../lib/worker/run.ts';
import { scoredMetrics } from '../../lib/worker/config.ts';
import { FilterError } from '../../lib/types.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  createBucket,
  createTopics,
  kafkaClient,
  makeRecords,
  needServices,
  produce,
  s3Client,
  uniq,
} from './helpers.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

describe('worker configuration from the environment', () => {
  it('reads every variable the infra sets', () => {
    const c = configFromEnv({
      MLMF_SOURCE: 'kafka',
      MLMF_BROKERS: 'b-1:9098, b-2:9098',
      MLMF_SOURCE_TOPIC: 'pairs',
      MLMF_GROUP_ID: 'g',
      MLMF_KAFKA_AUTH: 'iam',
      MLMF_KAFKA_TLS: 'true',
      MLMF_BUCKET: 'curated',
      MLMF_PREFIX: 'v1/',
      MLMF_AUDIT_TOPIC: 'audit',
      MLMF_ACCEPTED_TOPIC: 'accepted',
      MLMF_DLQ_TOPIC: 'dlq',
      MLMF_MODEL_DIR: '/opt/m',
      MLMF_MODEL_S3_URI: 's3://m/model.tar.gz',
      MLMF_MODEL_SHA256: 'ab',
      MLMF_THRESHOLDS: 'itm>=66,odf>=20',
      MLMF_COMBINE: 'and',
      MLMF_METRICS: 'all',
      MLMF_EXECUTION_PROVIDER: 'cuda',
      MLMF_BATCH_SIZE: '16',
      MLMF_HEALTH_PORT: '8080',
      MLMF_METRICS_NAMESPACE: 'Ns',
      AWS_REGION: 'eu-west-1',
    });
    assert.deepEqual(c.brokers, ['b-1:9098', 'b-2:9098']);
    assert.equal(c.kafkaAuth, 'iam');
    assert.equal(c.kafkaTls, true);
    assert.equal(c.batchSize, 16);
    assert.equal(c.region, 'eu-west-1');
    assert.equal(c.dlqTopic, 'dlq');
    assert.equal(c.metrics, 'all');
    validateConfig(c);
  });

  it('MLMF_METRICS: all (default), policy, or a list that covers MLMF_THRESHOLDS', async () => {
    const base = {
      MLMF_SOURCE: 'sqs',
      MLMF_SQS_QUEUE_URL: 'q',
      MLMF_BUCKET: 'b',
      MLMF_AUDIT_TOPIC: 'a',
      MLMF_BROKERS: 'k:9092',
    };
    const all = ['itm', 'odf', 'ctq', 'su'];
    assert.equal(configFromEnv(base).metrics, undefined);
    assert.deepEqual(scoredMetrics(configFromEnv(base)), all);
    assert.deepEqual(scoredMetrics(configFromEnv({ ...base, MLMF_METRICS: '' })), all);
    assert.deepEqual(scoredMetrics(configFromEnv({ ...base, MLMF_METRICS: 'all' })), all);
    // policy: exactly what the thresholds read (default itm>=66,odf>=20).
    assert.equal(configFromEnv({ ...base, MLMF_METRICS: 'policy' }).metrics, 'policy');
    assert.deepEqual(scoredMetrics(configFromEnv({ ...base, MLMF_METRICS: 'policy' })), ['itm', 'odf']);
    assert.deepEqual(
      scoredMetrics(configFromEnv({ ...base, MLMF_METRICS: 'policy', MLMF_THRESHOLDS: 'su>50, ctq>=10' })),
      ['ctq', 'su'],
    );
    // A list: short names or full keys, any order, spaces allowed; scored in the canonical order.
    const list = configFromEnv({ ...base, MLMF_METRICS: ' su, object_detail_fulfillment ,itm' });
    assert.deepEqual(list.metrics, ['itm', 'odf', 'su']);
    assert.deepEqual(scoredMetrics(list), ['itm', 'odf', 'su']);
    validateConfig(list);

    assert.throws(
      () => configFromEnv({ ...base, MLMF_METRICS: 'itm,beauty' }),
      (e: unknown) =>
        e instanceof FilterError &&
        e.code === 'worker_config' &&
        /MLMF_METRICS: unknown metric 'beauty'/.test(e.message),
    );
    // A list without a metric the policy reads stops the worker at start, naming the metric and the fix.
    const missing = (e: unknown) =>
      e instanceof FilterError &&
      e.code === 'worker_config' &&
      /MLMF_METRICS=itm,ctq leaves out odf, which the policy reads \(MLMF_THRESHOLDS itm>=66,odf>=20\)/.test(
        e.message,
      ) &&
      /add odf to MLMF_METRICS \(MLMF_METRICS=itm,odf,ctq\), or use MLMF_METRICS=policy/.test(e.message);
    assert.throws(() => validateConfig(configFromEnv({ ...base, MLMF_METRICS: 'itm,ctq' })), missing);
    // runWorker checks it before it connects to anything or loads a model.
    await assert.rejects(
      runWorker({ ...configFromEnv({ ...base, MLMF_METRICS: 'itm,ctq' }), scorer: new FastScorer() }),
      missing,
    );
    assert.throws(
      () => validateConfig(configFromEnv({ ...base, MLMF_METRICS: 'itm', MLMF_THRESHOLDS: 'itm>=50,su>=10' })),
      /leaves out su/,
    );
  });

  it('names what is missing or malformed', () => {
    assert.throws(
      () => validateConfig(configFromEnv({ MLMF_SOURCE: 'sqs' })),
      (e: unknown) =>
        e instanceof FilterError &&
        e.code === 'worker_config' &&
        /MLMF_BUCKET/.test(e.message) &&
        /MLMF_SQS_QUEUE_URL/.test(e.message),
    );
    assert.throws(() => configFromEnv({ MLMF_KAFKA_AUTH: 'plain' }), /MLMF_KAFKA_AUTH must be one of/);
    assert.throws(() => configFromEnv({ MLMF_BATCH_SIZE: 'x' }), /MLMF_BATCH_SIZE must be a non-negative integer/);
    assert.throws(() => configFromEnv({ MLMF_KAFKA_TLS: 'maybe' }), /MLMF_KAFKA_TLS must be true or false/);
    // A per-slot id read as a prefix would give each worker its own ids, and nothing would fence a partition's owner.
    assert.throws(
      () => configFromEnv({ MLMF_TRANSACTIONAL_ID: 'mlmf-g-host1' }),
      (e: unknown) =>
        e instanceof FilterError && e.code === 'worker_config' && /MLMF_TRANSACTIONAL_ID_PREFIX/.test(e.message),
    );
    assert.throws(() => configFromEnv({ MLMF_TRANSACTIONAL_ID_PREFIX: 'a b' }), /MLMF_TRANSACTIONAL_ID_PREFIX must be/);
    assert.equal(configFromEnv({ MLMF_TRANSACTIONAL_ID_PREFIX: 'team.a-1' }).transactionalIdPrefix, 'team.a-1');
  });
});

describe('Kafka connection settings', () => {
  it('refuses malformed brokers and IAM without TLS; builds SCRAM and IAM clients', async () => {
    const { createKafka, kafkaConfig } = await import('../../lib/kafka/client.ts');
    await assert.rejects(
      createKafka({ brokers: ['no-port'] }),
      (e: unknown) => e instanceof FilterError && e.code === 'kafka_config',
    );
    await assert.rejects(
      createKafka({ brokers: ['b:9098'], auth: { mechanism: 'iam', region: 'us-east-1' } }),
      /MSK IAM auth requires TLS/,
    );
    const iam = await kafkaConfig({ brokers: ['b:9098'], tls: true, auth: { mechanism: 'iam', region: 'us-east-1' } });
    assert.equal(iam.ssl, true);
    assert.equal(iam.sasl?.mechanism, 'oauthbearer', 'MSK IAM signs with an OAUTHBEARER token');
    assert.equal(typeof (iam.sasl as { oauthBearerProvider?: unknown }).oauthBearerProvider, 'function');
    const scram = await kafkaConfig({
      brokers: ['b:9096'],
      tls: true,
      auth: { mechanism: 'scram-sha-512', username: 'u', password: 'p' },
    });
    assert.deepEqual(scram.sasl, { mechanism: 'scram-sha-512', username: 'u', password: 'p' });
    assert.deepEqual(scram.brokers, ['b:9096']);
    const plain = await kafkaConfig({ brokers: ['127.0.0.1:9092'] });
    assert.equal(plain.ssl, false);
    assert.equal(plain.sasl, undefined);
  });
});

const skip = await needServices('kafka', 's3');

describe('worker health endpoint', { skip }, () => {
  it('answers 200 while consuming and 503 while draining', async () => {
    const t = uniq('health');
    const kafka = kafkaClient();
    const admin: Admin = kafka.admin();
    await admin.connect();
    const s3 = s3Client();
    const bucket = uniq('curated');
    await createTopics(admin, [{ topic: t }, { topic: `${t}-audit` }]);
    await createBucket(s3, bucket);
    await produce(kafka, t, await makeRecords(t, 60));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const stop = new AbortController();
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    let consumed = 0;
    // A slow scorer keeps work in flight, so the drain lasts long enough to be observed.
    const scorer = new FastScorer(4, 300);
    const origScore = scorer.score.bind(scorer);
    scorer.score = async (b) => {
      consumed += b.length;
      return origScore(b);
    };
    const run = runWorker(
      {
        source: 'kafka',
        brokers: [BROKERS],
        sourceTopic: t,
        groupId: `${t}-g`,
        bucket,
        auditTopic: `${t}-audit`,
        s3Endpoint: S3_ENDPOINT,
        healthPort: port,
        transactionalIdPrefix: `${t}-tx`,
        backlogSampleMs: 200,
        scorer,
      },
      { signal: stop.signal, logger: silentLogger, metricsOut: null, onReady: () => ready() },
    );
    await isReady;
    const health = async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).status;
    assert.equal(await health(), 200);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /mlmf_pairs_in_total/);
    await waitFor('scoring started', async () => consumed > 0, 20_000);
    // The backlog the autoscaler reads for self-managed Kafka: this worker's partitions' lag, sampled.
    await waitFor(
      'consumer lag published',
      async () => /^mlmf_kafka_consumer_lag \d+/m.test(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()),
      10_000,
    );
    stop.abort();
    assert.equal(await health(), 503);
    const result = await run;
    assert.equal(result.stats.records, 60, 'the drain finished and acked the work in flight');
    await admin.disconnect();
    s3.destroy();
  });
});

describe('worker model download (MLMF_MODEL_S3_URI)', { skip: await needServices('s3') }, () => {
  it('fetches and unpacks the model archive when the directory is empty, refusing a wrong digest', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, writeFileSync, readFileSync, mkdirSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { createHash } = await import('node:crypto');
    const { PutObjectCommand } = await import('@aws-sdk/client-s3');
    const { ensureModel } = await import('../../lib/worker/run.ts');
    const work = mkdtempSync(join(tmpdir(), 'mlmf-model-'));
    mkdirSync(join(work, 'src', 'onnx'), { recursive: true });
    writeFileSync(join(work, 'src', 'config.json'), '{"model_type":"llava_qwen"}');
    writeFileSync(join(work, 'src', 'onnx', 'x.onnx'), 'weights');
    execFileSync('tar', ['-czf', join(work, 'model.tar.gz'), '-C', join(work, 'src'), '.']);
    const archive = readFileSync(join(work, 'model.tar.gz'));
    const sha = createHash('sha256').update(archive).digest('hex');
    const s3 = s3Client();
    const bucket = uniq('models');
    await createBucket(s3, bucket);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'm/model.tar.gz', Body: archive }));
    const base = { source: 'kafka' as const, bucket: 'x', modelS3Uri: `s3://${bucket}/m/model.tar.gz` };
    await assert.rejects(
      ensureModel({ ...base, modelDir: join(work, 'bad'), modelSha256: '0'.repeat(64) }, s3, silentLogger),
      (e: unknown) => e instanceof FilterError && e.code === 'model_digest_mismatch',
    );
    const dir = await ensureModel({ ...base, modelDir: join(work, 'good'), modelSha256: sha }, s3, silentLogger);
    assert.equal(readFileSync(join(dir, 'onnx', 'x.onnx'), 'utf8'), 'weights');
    // Present now: a second call downloads nothing (a wrong digest would otherwise fail).
    await ensureModel({ ...base, modelDir: dir, modelSha256: 'f'.repeat(64) }, s3, silentLogger);
    s3.destroy();
  });
});

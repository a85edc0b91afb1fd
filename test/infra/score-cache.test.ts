/**
 * The construct's score cache table (scoreCache): created by default (on demand, TTL on expiresAt, encrypted,
 * retained), named to every worker service with its TTL, and granted to each task role with exactly the actions the
 * store uses (the backfill's shard-job service included); a customer key, PITR and a removal policy pass through;
 * `enabled: false` creates nothing and sets nothing.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { Duration, RemovalPolicy, type Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type { MlmFilterPipelineProps } from '../../infra/lib/props.ts';
import { MSK_ARN, brokersVpc, model, statements, synth, workerEnv, type Synthesised } from './helpers.ts';

const mskBrokers = ['b-1.crawl.kafka.eu-west-1.amazonaws.com:9098', 'b-2.crawl.kafka.eu-west-1.amazonaws.com:9098'];

/** Kafka and shard-job services, so that both kinds of worker (stream and backfill) are checked. */
const props = (stack: Stack, extra: Partial<MlmFilterPipelineProps> = {}): MlmFilterPipelineProps => ({
  vpc: brokersVpc(stack),
  brokersAdmitVpc: true,
  kafka: { kind: 'msk-iam', clusterArn: MSK_ARN, bootstrapServers: mskBrokers },
  kafkaSource: { topic: 'crawl.pairs' },
  sqsSource: { messages: 'shard-jobs', shardInputBuckets: [s3.Bucket.fromBucketName(stack, 'Pool', 'pool')] },
  topics: { audit: 'mlmf.audit', provision: false },
  model: model(stack),
  ...extra,
});

const cacheStatements = (s: Synthesised) =>
  statements(s.template).filter((st) => st.Action.some((a) => a.startsWith('dynamodb:')));

describe('score cache table, defaults', () => {
  let s: Synthesised;
  before(() => {
    s = synth((stack) => props(stack));
  });

  test('no unacknowledged finding (PITR off is acknowledged with its reason)', () =>
    assert.deepEqual(s.violations, []));

  test('one table: pk/sk strings, on demand, TTL on expiresAt, encrypted, PITR off, retained', () => {
    s.template.resourceCountIs('AWS::DynamoDB::Table', 1);
    s.template.hasResource('AWS::DynamoDB::Table', {
      DeletionPolicy: 'Retain',
      UpdateReplacePolicy: 'Retain',
      Properties: Match.objectLike({
        KeySchema: [
          { AttributeName: 'pk', KeyType: 'HASH' },
          { AttributeName: 'sk', KeyType: 'RANGE' },
        ],
        AttributeDefinitions: [
          { AttributeName: 'pk', AttributeType: 'S' },
          { AttributeName: 'sk', AttributeType: 'S' },
        ],
        BillingMode: 'PAY_PER_REQUEST',
        TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
        PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: false },
      }),
    });
  });

  test('both services get the table and a 30-day TTL', () => {
    const table = Object.keys(s.template.findResources('AWS::DynamoDB::Table'))[0]!;
    for (const name of ['KafkaTask', 'SqsTask']) {
      const env = workerEnv(s.template, name);
      assert.deepEqual(env.MLMF_SCORE_CACHE_TABLE, { Ref: table }, name);
      assert.equal(env.MLMF_SCORE_CACHE_TTL_DAYS, '30', name);
      assert.equal(env.MLMF_DEDUPE_IMAGES, undefined, `${name}: image dedupe off by default`);
    }
  });

  test('each task role: DescribeTable, GetItem, PutItem, Query on the table only', () => {
    const table = Object.keys(s.template.findResources('AWS::DynamoDB::Table'))[0]!;
    const found = cacheStatements(s);
    assert.equal(new Set(found.map((st) => st.policy)).size, 2, 'the Kafka and the shard-job task roles');
    for (const st of found) {
      assert.deepEqual([...st.Action].sort(), [
        'dynamodb:DescribeTable',
        'dynamodb:GetItem',
        'dynamodb:PutItem',
        'dynamodb:Query',
      ]);
      assert.deepEqual(st.Resource, [{ 'Fn::GetAtt': [table, 'Arn'] }]);
    }
  });
});

describe('score cache table, tuned', () => {
  let s: Synthesised;
  before(() => {
    s = synth((stack) =>
      props(stack, {
        scoreCache: {
          ttl: Duration.days(7),
          encryptionKey: new kms.Key(stack, 'CacheKey', { enableKeyRotation: true }),
          pointInTimeRecovery: true,
          removalPolicy: RemovalPolicy.DESTROY,
        },
      }),
    );
  });

  test('no unacknowledged finding', () => assert.deepEqual(s.violations, []));

  test('the customer key encrypts the table and is granted to the workers; PITR on; destroyed with the stack', () => {
    s.template.hasResource('AWS::DynamoDB::Table', {
      DeletionPolicy: 'Delete',
      Properties: Match.objectLike({
        SSESpecification: Match.objectLike({ SSEEnabled: true, SSEType: 'KMS' }),
        PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      }),
    });
    const kmsGrants = statements(s.template).filter(
      (st) => st.Action.includes('kms:GenerateDataKey') && JSON.stringify(st.Resource).includes('CacheKey'),
    );
    assert.equal(new Set(kmsGrants.map((st) => st.policy)).size, 2);
    assert.equal(workerEnv(s.template, 'KafkaTask').MLMF_SCORE_CACHE_TTL_DAYS, '7');
  });
});

describe('score cache disabled', () => {
  test('no table, no variable, no DynamoDB permission', () => {
    const s = synth((stack) => props(stack, { scoreCache: { enabled: false } }), { nag: false });
    s.template.resourceCountIs('AWS::DynamoDB::Table', 0);
    assert.equal(workerEnv(s.template, 'KafkaTask').MLMF_SCORE_CACHE_TABLE, undefined);
    assert.deepEqual(cacheStatements(s), []);
  });

  test('a TTL that is not whole days fails synth', () => {
    assert.throws(
      () => synth((stack) => props(stack, { scoreCache: { ttl: Duration.hours(36) } }), { nag: false }),
      /scoreCache.ttl must be whole days/,
    );
  });

  test('dedupeImages: on both services; a bad value or no table fails synth', () => {
    const s = synth((stack) => props(stack, { scoreCache: { dedupeImages: 'near:8' } }), { nag: false });
    for (const name of ['KafkaTask', 'SqsTask']) assert.equal(workerEnv(s.template, name).MLMF_DEDUPE_IMAGES, 'near:8');
    assert.throws(
      () => synth((stack) => props(stack, { scoreCache: { dedupeImages: 'near:40' } }), { nag: false }),
      /scoreCache.dedupeImages must be off, exact, near or near:D/,
    );
    assert.throws(
      () => synth((stack) => props(stack, { scoreCache: { enabled: false, dedupeImages: 'exact' } }), { nag: false }),
      /needs the score cache table/,
    );
  });
});

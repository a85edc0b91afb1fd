import { parseScramSecret } from '../../lib/kafka/scram-secret.ts';
import { thrownCode } from '../helpers/thrown-code.ts';
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Kafka, logLevel } from 'kafkajs';
import {
  onEvent,
  parseTopicRequest,
  planTopics,
  kafkaConfig,
  type CustomResourceEvent,
  type TopicAdmin,
  type TopicSpec,
} from '../../functions/lambda/topic-provisioner.ts';
import { silentLogger } from '../../lib/support/logger.ts';

const base = {
  Brokers: 'b-1.example:9098,b-2.example:9098',
  Auth: 'iam',
  Tls: 'true',
  Region: 'eu-west-1',
  Topics: [
    { Name: 'mlmf.audit', Partitions: '12', ReplicationFactor: '3', Configs: { 'retention.ms': '604800000' } },
    { Name: 'mlmf.accepted', Partitions: '6', ReplicationFactor: '3' },
  ],
  DeleteOnDestroy: 'false',
};

describe('parseTopicRequest', () => {
  test('accepts CloudFormation string-typed properties', () => {
    const r = parseTopicRequest(base);
    assert.deepEqual(r.brokers, ['b-1.example:9098', 'b-2.example:9098']);
    assert.equal(r.auth, 'iam');
    assert.equal(r.tls, true);
    assert.equal(r.deleteOnDestroy, false);
    assert.deepEqual(r.topics[0], {
      name: 'mlmf.audit',
      partitions: 12,
      replicationFactor: 3,
      configs: { 'retention.ms': '604800000' },
    });
    assert.equal(r.topics[1]?.partitions, 6);
  });

  test('rejects bad input with a stable code and the field named', () => {
    const cases: Record<string, unknown>[] = [
      { ...base, Brokers: '' },
      { ...base, Brokers: 'no-port' },
      { ...base, Auth: 'plain' },
      { ...base, Tls: 'false' }, // IAM without TLS
      { ...base, Auth: 'scram-sha-512' }, // no secret
      { ...base, Topics: [] },
      { ...base, Topics: [{ Name: 'bad name' }] },
      { ...base, Topics: [{ Name: '..' }] },
      { ...base, Topics: [{ Name: 'a', Partitions: '0' }] },
      { ...base, Topics: [{ Name: 'a', Partitions: '1.5' }] },
      { ...base, Topics: [{ Name: 'a', ReplicationFactor: '0' }] },
      { ...base, Topics: [{ Name: 'a' }, { Name: 'a' }] },
      { ...base, DeleteOnDestroy: 'yes' },
    ];
    for (const c of cases)
      assert.equal(
        thrownCode(() => parseTopicRequest(c)),
        'topic_request_invalid',
        JSON.stringify(c),
      );
  });

  test('defaults: plaintext without auth, broker-default replication allowed', () => {
    const r = parseTopicRequest({ Brokers: ['localhost:9092'], Topics: [{ Name: 'a', ReplicationFactor: -1 }] });
    assert.equal(r.auth, 'none');
    assert.equal(r.tls, false);
    assert.equal(r.topics[0]?.replicationFactor, -1);
    assert.equal(r.topics[0]?.partitions, 6);
  });
});

describe('planTopics', () => {
  const spec = (name: string, partitions: number): TopicSpec => ({
    name,
    partitions,
    replicationFactor: 3,
    configs: {},
  });
  test('creates the missing, grows the short, leaves the rest', () => {
    const plan = planTopics(
      [spec('a', 6), spec('b', 6), spec('c', 6), spec('d', 6)],
      new Map([
        ['b', 3],
        ['c', 6],
        ['d', 12],
      ]),
    );
    assert.deepEqual(
      plan.create.map((t) => t.name),
      ['a'],
    );
    assert.deepEqual(plan.grow, [{ name: 'b', from: 3, partitions: 6 }]);
    assert.deepEqual(plan.unchanged, ['c', 'd']);
  });
});

/**
 * An in-memory stand-in for a broker's topic table, with kafkajs' semantics for the calls the provisioner makes
 * (createTopics answers false for an existing topic; createPartitions fails when not growing). Used only to test the
 * event flow and idempotence; the real client is exercised below when a broker is available.
 */
class MemoryAdmin implements TopicAdmin {
  readonly topics = new Map<string, number>();
  calls: string[] = [];
  async connect() {
    this.calls.push('connect');
  }
  async disconnect() {
    this.calls.push('disconnect');
  }
  async listTopics() {
    return [...this.topics.keys()];
  }
  async fetchTopicMetadata(opts?: { topics: string[] }) {
    return {
      topics: (opts?.topics ?? []).map((name) => {
        const n = this.topics.get(name);
        if (n === undefined) throw new Error(`UNKNOWN_TOPIC_OR_PARTITION ${name}`);
        return {
          name,
          partitions: Array.from({ length: n }, (_, i) => ({
            partitionErrorCode: 0,
            partitionId: i,
            leader: 0,
            replicas: [0],
            isr: [0],
            offlineReplicas: [],
          })),
        };
      }),
    };
  }
  async createTopics(opts: { topics: { topic: string; numPartitions?: number }[] }) {
    let created = false;
    for (const t of opts.topics) {
      this.calls.push(`create:${t.topic}`);
      if (!this.topics.has(t.topic)) {
        this.topics.set(t.topic, t.numPartitions ?? 1);
        created = true;
      }
    }
    return created;
  }
  async createPartitions(opts: { topicPartitions: { topic: string; count: number }[] }) {
    for (const p of opts.topicPartitions) {
      const have = this.topics.get(p.topic);
      if (have === undefined || p.count <= have) throw new Error('INVALID_PARTITIONS');
      this.calls.push(`grow:${p.topic}:${p.count}`);
      this.topics.set(p.topic, p.count);
    }
    return true;
  }
  async deleteTopics(opts: { topics: string[] }) {
    for (const t of opts.topics) {
      this.calls.push(`delete:${t}`);
      this.topics.delete(t);
    }
  }
}

function event(type: CustomResourceEvent['RequestType'], props: Record<string, unknown>): CustomResourceEvent {
  return {
    RequestType: type,
    LogicalResourceId: 'Topics',
    PhysicalResourceId: type === 'Create' ? undefined : 'mlmf-topics-Topics',
    ResourceProperties: props,
  };
}

describe('onEvent', () => {
  test('Create is idempotent, Update grows, Delete retains by default', async () => {
    const admin = new MemoryAdmin();
    const deps = { createAdmin: async () => admin, logger: silentLogger };

    const first = await onEvent(event('Create', base), deps);
    assert.equal(first.PhysicalResourceId, 'mlmf-topics-Topics');
    assert.equal(first.Data?.Created, 'mlmf.audit,mlmf.accepted');
    assert.equal(admin.topics.get('mlmf.audit'), 12);

    admin.calls = [];
    const again = await onEvent(event('Create', base), deps);
    assert.equal(again.Data?.Created, '');
    assert.equal(again.Data?.Unchanged, 'mlmf.audit,mlmf.accepted');
    assert.ok(!admin.calls.some((c) => c.startsWith('create:')), admin.calls.join());
    assert.deepEqual(admin.calls, ['connect', 'disconnect']);

    const grown = { ...base, Topics: [{ Name: 'mlmf.audit', Partitions: '24' }, ...base.Topics.slice(1)] };
    const upd = await onEvent(event('Update', grown), deps);
    assert.equal(upd.PhysicalResourceId, 'mlmf-topics-Topics', 'physical id is stable across updates');
    assert.equal(upd.Data?.Grown, 'mlmf.audit:12->24');
    assert.equal(admin.topics.get('mlmf.audit'), 24);

    const del = await onEvent(event('Delete', base), deps);
    assert.equal(del.PhysicalResourceId, 'mlmf-topics-Topics');
    assert.equal(admin.topics.size, 2, 'topics survive stack deletion unless DeleteOnDestroy');
  });

  test('Delete removes only the listed topics when DeleteOnDestroy is true', async () => {
    const admin = new MemoryAdmin();
    admin.topics.set('mlmf.audit', 3);
    admin.topics.set('someone.else', 3);
    const deps = { createAdmin: async () => admin, logger: silentLogger };
    const out = await onEvent(event('Delete', { ...base, DeleteOnDestroy: 'true' }), deps);
    assert.equal(out.Data?.Deleted, 'mlmf.audit');
    assert.deepEqual([...admin.topics.keys()], ['someone.else']);
  });

  test('Create with invalid properties fails before touching the cluster; its rollback Delete succeeds', async () => {
    let built = 0;
    const deps = {
      createAdmin: async () => {
        built++;
        return new MemoryAdmin();
      },
      logger: silentLogger,
    };
    await assert.rejects(onEvent(event('Create', { ...base, Brokers: '' }), deps), /Brokers/);
    const del = await onEvent(event('Delete', { ...base, Brokers: '' }), deps);
    assert.equal(del.PhysicalResourceId, 'mlmf-topics-Topics');
    assert.equal(built, 0);
  });
});

describe('client settings', () => {
  test('SCRAM secret must carry username and password', () => {
    assert.deepEqual(parseScramSecret('{"username":"u","password":"p"}', 'arn:x'), {
      mechanism: 'scram-sha-512',
      username: 'u',
      password: 'p',
    });
    assert.equal(
      thrownCode(() => parseScramSecret('{"username":"u"}', 'arn:x')),
      'kafka_secret_invalid',
    );
    assert.equal(
      thrownCode(() => parseScramSecret('not json', 'arn:x')),
      'kafka_secret_invalid',
    );
  });

  test('IAM auth uses OAUTHBEARER over TLS', async () => {
    const cfg = await kafkaConfig(parseTopicRequest(base));
    assert.equal(cfg.ssl, true);
    assert.equal(cfg.sasl?.mechanism, 'oauthbearer');
  });
});

// Against a real broker when one is available (the local Kafka service sets MLMF_KAFKA_BROKERS).
const brokers = process.env.MLMF_KAFKA_BROKERS;
test(
  'real broker: create twice, then delete on destroy',
  { skip: brokers ? false : 'MLMF_KAFKA_BROKERS not set' },
  async () => {
    const name = `mlmf-provisioner-test-${process.pid}-${Date.now()}`;
    const props = {
      Brokers: brokers,
      Auth: 'none',
      Tls: 'false',
      Topics: [{ Name: name, Partitions: '2', ReplicationFactor: '1' }],
      DeleteOnDestroy: 'true',
    };
    const deps = {
      createAdmin: async () =>
        new Kafka({ clientId: 'mlmf-test', brokers: String(brokers).split(','), logLevel: logLevel.NOTHING }).admin(),
      logger: silentLogger,
    };
    assert.equal((await onEvent(event('Create', props), deps)).Data?.Created, name);
    assert.equal((await onEvent(event('Create', props), deps)).Data?.Unchanged, name);
    const grown = { ...props, Topics: [{ Name: name, Partitions: '3', ReplicationFactor: '1' }] };
    assert.equal((await onEvent(event('Update', grown), deps)).Data?.Grown, `${name}:2->3`);
    assert.equal((await onEvent(event('Delete', props), deps)).Data?.Deleted, name);
  },
);

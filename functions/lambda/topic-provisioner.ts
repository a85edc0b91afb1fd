/**
 * CloudFormation custom resource (through the CDK Provider framework) that creates the pipeline's Kafka topics
 * (audit, accepted, dead-letter) with the kafkajs admin client.
 *
 * - Create/Update: creates the topics that do not exist and grows partition counts that are below the request.
 *   Idempotent: existing topics are left as they are (a topic is never shrunk and its configs are never rewritten,
 *   because both would disturb a running consumer or lose data).
 * - Delete: deletes the topics only when the request says `DeleteOnDestroy: "true"`; by default the audit trail
 *   outlives the stack.
 *
 * Authentication: MSK IAM (SASL/OAUTHBEARER signed with the function's role), SASL/SCRAM-SHA-512 with a Secrets
 * Manager secret holding `{"username": ..., "password": ...}`, or none.
 */
import { Kafka, logLevel, type Admin, type KafkaConfig, type SASLOptions } from 'kafkajs';
import { generateAuthToken } from 'aws-msk-iam-sasl-signer-js';
import { readScramSecret } from '../../lib/kafka/scram-secret.ts';
import { jsonLogger, type Logger } from '../../lib/support/logger.ts';
import { FilterError } from '../../lib/types.ts';

/** The subset of a CloudFormation custom resource event the Provider framework hands to `onEvent`. */
export interface CustomResourceEvent {
  readonly RequestType: 'Create' | 'Update' | 'Delete';
  readonly LogicalResourceId: string;
  readonly PhysicalResourceId?: string;
  readonly ResourceProperties: Record<string, unknown>;
  readonly OldResourceProperties?: Record<string, unknown>;
}

export interface CustomResourceResponse {
  readonly PhysicalResourceId: string;
  readonly Data?: Record<string, string>;
}

export type KafkaAuth = 'none' | 'iam' | 'scram-sha-512';

/** One topic as requested. `replicationFactor: -1` means the broker default (KIP-464). */
export interface TopicSpec {
  readonly name: string;
  readonly partitions: number;
  readonly replicationFactor: number;
  readonly configs: Readonly<Record<string, string>>;
}

/** A validated request. */
export interface TopicRequest {
  readonly brokers: readonly string[];
  readonly auth: KafkaAuth;
  readonly tls: boolean;
  readonly secretArn?: string;
  readonly region?: string;
  readonly topics: readonly TopicSpec[];
  readonly deleteOnDestroy: boolean;
}

/** What must change on the cluster so that it holds the requested topics. */
export interface TopicPlan {
  readonly create: readonly TopicSpec[];
  /** Topics whose partition count must grow to `partitions`. */
  readonly grow: readonly { readonly name: string; readonly from: number; readonly partitions: number }[];
  /** Topics already as requested (or with more partitions than requested, which Kafka cannot undo). */
  readonly unchanged: readonly string[];
}

const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;
const BROKER = /^[^\s:,]+:\d{1,5}$/;

function invalid(message: string, context: Record<string, unknown>): FilterError {
  return new FilterError('topic_request_invalid', message, context);
}

function asBool(value: unknown, field: string, fallback: boolean): boolean {
  if (value === undefined || value === null || value === '') return fallback;
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw invalid(`${field} must be "true" or "false"`, { field, value });
}

/** CloudFormation delivers every scalar property as a string: accept both. */
function asInt(
  value: unknown,
  field: string,
  fallback: number,
  min: number,
  max: number,
  brokerDefault = false,
): number {
  if (value === undefined || value === null || value === '') return fallback;
  const n =
    typeof value === 'number' ? value : typeof value === 'string' && /^-?\d+$/.test(value) ? Number(value) : NaN;
  const ok = Number.isInteger(n) && ((n >= min && n <= max) || (brokerDefault && n === -1));
  if (!ok)
    throw invalid(`${field} must be an integer in ${min}..${max}${brokerDefault ? ' or -1' : ''}`, { field, value });
  return n;
}

function parseTopic(raw: unknown, index: number): TopicSpec {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw invalid(`Topics[${index}] must be an object`, { index });
  }
  const t = raw as Record<string, unknown>;
  const name = t.Name;
  if (typeof name !== 'string' || !TOPIC_NAME.test(name) || name === '.' || name === '..') {
    throw invalid(`Topics[${index}].Name must be a Kafka topic name ([a-zA-Z0-9._-], 1..249 chars)`, {
      index,
      name,
    });
  }
  const partitions = asInt(t.Partitions, `Topics[${index}].Partitions`, 6, 1, 10_000);
  const replicationFactor = asInt(t.ReplicationFactor, `Topics[${index}].ReplicationFactor`, 3, 1, 32, true);
  const configs: Record<string, string> = {};
  if (t.Configs !== undefined) {
    if (typeof t.Configs !== 'object' || t.Configs === null || Array.isArray(t.Configs)) {
      throw invalid(`Topics[${index}].Configs must be an object of strings`, { index });
    }
    for (const [k, v] of Object.entries(t.Configs)) {
      if (typeof v !== 'string' && typeof v !== 'number') {
        throw invalid(`Topics[${index}].Configs.${k} must be a string`, { index, key: k });
      }
      configs[k] = String(v);
    }
  }
  return { name, partitions, replicationFactor, configs };
}

/** Validates the custom resource properties. Throws FilterError('topic_request_invalid') naming the field. */
export function parseTopicRequest(props: Record<string, unknown>): TopicRequest {
  const rawBrokers = props.Brokers;
  const brokers = (Array.isArray(rawBrokers) ? rawBrokers : typeof rawBrokers === 'string' ? rawBrokers.split(',') : [])
    .map((b) => String(b).trim())
    .filter((b) => b.length > 0);
  if (brokers.length === 0) throw invalid('Brokers must list at least one host:port', { brokers: rawBrokers });
  const bad = brokers.filter((b) => !BROKER.test(b));
  if (bad.length > 0) throw invalid('Brokers must be host:port entries', { bad });

  const auth = props.Auth ?? 'none';
  if (auth !== 'none' && auth !== 'iam' && auth !== 'scram-sha-512') {
    throw invalid('Auth must be one of none, iam, scram-sha-512', { auth });
  }
  // MSK IAM only exists over TLS; SCRAM over plaintext would send credentials in the clear.
  const tls = asBool(props.Tls, 'Tls', auth !== 'none');
  if (auth !== 'none' && !tls) throw invalid(`Auth ${auth} requires Tls "true"`, { auth });
  const secretArn = typeof props.SecretArn === 'string' && props.SecretArn !== '' ? props.SecretArn : undefined;
  if (auth === 'scram-sha-512' && !secretArn) throw invalid('Auth scram-sha-512 requires SecretArn', { auth });
  const region = typeof props.Region === 'string' && props.Region !== '' ? props.Region : undefined;

  if (!Array.isArray(props.Topics) || props.Topics.length === 0) {
    throw invalid('Topics must be a non-empty list', { topics: props.Topics });
  }
  const topics = props.Topics.map(parseTopic);
  const seen = new Set<string>();
  for (const t of topics) {
    if (seen.has(t.name)) throw invalid(`Topic ${t.name} is listed twice`, { name: t.name });
    seen.add(t.name);
  }
  const deleteOnDestroy = asBool(props.DeleteOnDestroy, 'DeleteOnDestroy', false);
  return { brokers, auth, tls, secretArn, region, topics, deleteOnDestroy };
}

/** Compares the request with the partition counts of the topics that already exist. Pure. */
export function planTopics(desired: readonly TopicSpec[], existing: ReadonlyMap<string, number>): TopicPlan {
  const create: TopicSpec[] = [];
  const grow: { name: string; from: number; partitions: number }[] = [];
  const unchanged: string[] = [];
  for (const t of desired) {
    const have = existing.get(t.name);
    if (have === undefined) create.push(t);
    else if (have < t.partitions) grow.push({ name: t.name, from: have, partitions: t.partitions });
    else unchanged.push(t.name);
  }
  return { create, grow, unchanged };
}

/** The kafkajs admin operations the provisioner uses (kafkajs `Admin` satisfies it). */
export type TopicAdmin = Pick<
  Admin,
  'connect' | 'disconnect' | 'listTopics' | 'fetchTopicMetadata' | 'createTopics' | 'createPartitions' | 'deleteTopics'
>;

export interface ProvisionerDeps {
  /** Builds a connected-on-demand admin for the request. */
  createAdmin(request: TopicRequest): Promise<TopicAdmin>;
  /** Default: JSON lines on stdout (CloudWatch Logs). */
  readonly logger?: Logger;
}

async function existingPartitions(admin: TopicAdmin, names: readonly string[]): Promise<Map<string, number>> {
  const all = new Set(await admin.listTopics());
  const present = names.filter((n) => all.has(n));
  const out = new Map<string, number>();
  if (present.length === 0) return out;
  const meta = await admin.fetchTopicMetadata({ topics: present });
  for (const t of meta.topics) out.set(t.name, t.partitions.length);
  return out;
}

/** Applies the plan. Safe to run again after a partial failure: every step re-reads the cluster first. */
export async function ensureTopics(admin: TopicAdmin, request: TopicRequest): Promise<TopicPlan> {
  const plan = planTopics(
    request.topics,
    await existingPartitions(
      admin,
      request.topics.map((t) => t.name),
    ),
  );
  if (plan.create.length > 0) {
    // kafkajs answers false (not an error) for TOPIC_ALREADY_EXISTS, so a concurrent creator is harmless.
    await admin.createTopics({
      waitForLeaders: true,
      topics: plan.create.map((t) => ({
        topic: t.name,
        numPartitions: t.partitions,
        replicationFactor: t.replicationFactor,
        configEntries: Object.entries(t.configs).map(([name, value]) => ({ name, value })),
      })),
    });
  }
  if (plan.grow.length > 0) {
    await admin.createPartitions({ topicPartitions: plan.grow.map((g) => ({ topic: g.name, count: g.partitions })) });
  }
  return plan;
}

function physicalId(event: CustomResourceEvent): string {
  return event.PhysicalResourceId ?? `mlmf-topics-${event.LogicalResourceId}`;
}

/**
 * The Provider framework's onEvent. The physical id never changes on Update, so CloudFormation never sends a
 * Delete for a replaced resource (which could otherwise drop topics still in use).
 */
export async function onEvent(event: CustomResourceEvent, deps: ProvisionerDeps): Promise<CustomResourceResponse> {
  const log = deps.logger ?? jsonLogger(process.stdout);
  const id = physicalId(event);
  if (event.RequestType === 'Delete') {
    let request: TopicRequest;
    try {
      request = parseTopicRequest(event.ResourceProperties);
    } catch (err) {
      // A Create that failed validation is rolled back with a Delete of the same properties: nothing to undo.
      log.warn('delete with invalid properties: nothing to do', { error: String(err) });
      return { PhysicalResourceId: id };
    }
    if (!request.deleteOnDestroy) {
      log.info('topics retained', { topics: request.topics.map((t) => t.name) });
      return { PhysicalResourceId: id };
    }
    const admin = await deps.createAdmin(request);
    await admin.connect();
    try {
      const existing = await existingPartitions(
        admin,
        request.topics.map((t) => t.name),
      );
      const names = [...existing.keys()];
      if (names.length > 0) await admin.deleteTopics({ topics: names });
      log.info('topics deleted', { topics: names });
      return { PhysicalResourceId: id, Data: { Deleted: names.join(',') } };
    } finally {
      await admin.disconnect();
    }
  }

  const request = parseTopicRequest(event.ResourceProperties);
  const admin = await deps.createAdmin(request);
  await admin.connect();
  try {
    const plan = await ensureTopics(admin, request);
    const summary = {
      Created: plan.create.map((t) => t.name).join(','),
      Grown: plan.grow.map((g) => `${g.name}:${g.from}->${g.partitions}`).join(','),
      Unchanged: plan.unchanged.join(','),
    };
    log.info('topics ensured', { requestType: event.RequestType, ...summary });
    return { PhysicalResourceId: id, Data: summary };
  } finally {
    await admin.disconnect();
  }
}

/** kafkajs client settings for a request (SASL resolved: IAM token provider or SCRAM credentials). */
export async function kafkaConfig(request: TopicRequest): Promise<KafkaConfig> {
  let sasl: SASLOptions | undefined;
  if (request.auth === 'iam') {
    const region = request.region ?? process.env.AWS_REGION;
    if (!region) throw new FilterError('kafka_config_invalid', 'MSK IAM auth needs a region', {});
    sasl = {
      mechanism: 'oauthbearer',
      oauthBearerProvider: async () => ({ value: (await generateAuthToken({ region })).token }),
    };
  } else if (request.auth === 'scram-sha-512' && request.secretArn) {
    sasl = await readScramSecret(request.secretArn, request.region);
  }
  return {
    clientId: 'mlm-filter-topic-provisioner',
    brokers: [...request.brokers],
    ssl: request.tls,
    ...(sasl ? { sasl } : {}),
    connectionTimeout: 10_000,
    requestTimeout: 30_000,
    retry: { retries: 5 },
    logLevel: logLevel.WARN,
  };
}

const defaultDeps: ProvisionerDeps = {
  async createAdmin(request) {
    return new Kafka(await kafkaConfig(request)).admin();
  },
};

/** Lambda entry point. */
export const handler = (event: CustomResourceEvent): Promise<CustomResourceResponse> => onEvent(event, defaultDeps);

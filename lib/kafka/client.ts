import type { ConnectionOptions } from 'node:tls';
import {
  Kafka,
  logLevel,
  type ConfigResourceTypes,
  type KafkaConfig,
  type SASLOptions,
  type logCreator,
} from 'kafkajs';
import { RetryBudget, RetryPolicy } from '../support/retry.ts';
import { jsonLogger, type Logger } from '../support/logger.ts';
import { FilterError } from '../types.ts';

/** How the worker authenticates to the brokers. */
export type KafkaAuth =
  | { readonly mechanism: 'none' }
  /** SASL/SCRAM-SHA-512 (MSK's username/password auth); credentials usually come from a Secrets Manager secret. */
  | { readonly mechanism: 'scram-sha-512'; readonly username: string; readonly password: string }
  /** AWS MSK IAM (SASL/OAUTHBEARER with a SigV4-signed token from the task role); needs TLS. */
  | { readonly mechanism: 'iam'; readonly region: string };

/** Connection settings shared by the Kafka source and the Kafka sinks. */
export interface KafkaConnectionOptions {
  /** `host:port` bootstrap brokers. */
  readonly brokers: readonly string[];
  readonly clientId?: string;
  readonly auth?: KafkaAuth;
  /** TLS to the brokers: true for the system CAs, or node:tls options (private CA, client certs). Default false. */
  readonly tls?: boolean | ConnectionOptions;
  /** Connect timeout per broker, ms. Default 5000. */
  readonly connectionTimeoutMs?: number;
  /** kafkajs log lines go here (the worker passes its logger). Default: warnings and errors to stderr. */
  readonly logger?: Logger;
}

async function iamMechanism(region: string): Promise<SASLOptions> {
  // Loaded lazily: the signer pulls in the AWS credential chain, which plain/SCRAM deployments do not need.
  const { generateAuthToken } = await import('aws-msk-iam-sasl-signer-js');
  return {
    mechanism: 'oauthbearer',
    oauthBearerProvider: async () => {
      const { token } = await generateAuthToken({ region });
      return { value: token };
    },
  };
}

/** Builds a kafkajs client from the connection settings (validated: a bad setting fails here, not on first use). */
export async function createKafka(options: KafkaConnectionOptions): Promise<Kafka> {
  return new Kafka(await kafkaConfig(options));
}

/** The kafkajs configuration createKafka uses: brokers checked, TLS and SASL (SCRAM, MSK IAM) set up, logging. */
export async function kafkaConfig(options: KafkaConnectionOptions): Promise<KafkaConfig> {
  if (options.brokers.length === 0 || options.brokers.some((b) => !/^[^\s:]+:\d+$/.test(b))) {
    throw new FilterError('kafka_config', `brokers must be host:port, got ${JSON.stringify(options.brokers)}`, {
      brokers: options.brokers,
    });
  }
  const auth = options.auth ?? { mechanism: 'none' };
  let sasl: SASLOptions | undefined;
  if (auth.mechanism === 'scram-sha-512') {
    sasl = { mechanism: 'scram-sha-512', username: auth.username, password: auth.password };
  } else if (auth.mechanism === 'iam') {
    if (!options.tls) throw new FilterError('kafka_config', 'MSK IAM auth requires TLS (MLMF_KAFKA_TLS=true)', {});
    sasl = await iamMechanism(auth.region);
  }
  const logger = options.logger ?? jsonLogger(process.stderr, { level: 'warn' });
  const creator: logCreator =
    () =>
    ({ level, log }) => {
      const { message, ...extra } = log;
      const name =
        level === logLevel.ERROR
          ? 'error'
          : level === logLevel.WARN
            ? 'warn'
            : level === logLevel.INFO
              ? 'info'
              : 'debug';
      logger.log(name, `kafkajs: ${message}`, extra);
    };
  const config: KafkaConfig = {
    clientId: options.clientId ?? 'mlm-filter',
    brokers: [...options.brokers],
    ssl: options.tls === undefined ? false : options.tls,
    sasl,
    connectionTimeout: options.connectionTimeoutMs ?? 5000,
    logLevel: logLevel.WARN,
    logCreator: creator,
    // Transient coordinator errors (loading, rebalancing) are retried with backoff by kafkajs itself.
    retry: { initialRetryTime: 200, retries: 8, maxRetryTime: 5000 },
  };
  return config;
}

/** Offset arithmetic on kafkajs's string offsets (int64 does not fit a JS number). */
export const nextOffset = (offset: string): string => (BigInt(offset) + 1n).toString();

/** The Kafka protocol error type (`REBALANCE_IN_PROGRESS`...) of an error, looking through kafkajs and our wrappers. */
export function kafkaErrorType(err: unknown): string | undefined {
  for (
    let e = err as { type?: unknown; originalError?: unknown; cause?: unknown } | undefined, i = 0;
    e && i < 5;
    i++
  ) {
    if (typeof e.type === 'string') return e.type;
    e = (e.originalError ?? e.cause) as typeof e;
  }
  return undefined;
}

/**
 * Protocol errors no retry can cure: a newer worker with this transactional id fenced this one, a permission is
 * missing, or the brokers refuse what is sent or how the group is configured.
 */
const PERMANENT_ERRORS = new Set([
  'PRODUCER_FENCED',
  'INVALID_PRODUCER_EPOCH',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
  'GROUP_AUTHORIZATION_FAILED',
  'TOPIC_AUTHORIZATION_FAILED',
  'CLUSTER_AUTHORIZATION_FAILED',
  'SASL_AUTHENTICATION_FAILED',
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'INVALID_TRANSACTION_TIMEOUT',
  'INVALID_SESSION_TIMEOUT',
  'INCONSISTENT_GROUP_PROTOCOL',
  'FENCED_INSTANCE_ID',
  'UNSUPPORTED_VERSION',
  'UNSUPPORTED_FOR_MESSAGE_FORMAT',
]);

/**
 * Whether a Kafka error is permanent (see PERMANENT_ERRORS; also a failed SASL handshake). Anything else --
 * connections refused or closed, request timeouts, coordinators moving or loading, kafkajs giving up after its own
 * retries, even errors kafkajs calls non-retriable such as finding no group coordinator while the brokers are down --
 * is an outage that may end, which the caller retries within its time budget.
 */
export function isPermanentKafkaError(err: unknown): boolean {
  for (let e = err as { name?: unknown; cause?: unknown } | undefined, i = 0; e && i < 5; i++) {
    if (e.name === 'KafkaJSSASLAuthenticationError') return true;
    e = e.cause as typeof e;
  }
  return PERMANENT_ERRORS.has(kafkaErrorType(err) ?? '');
}

/** How long a Kafka outage (a broker restart, a coordinator move) is retried before the worker gives up, ms. */
export const DEFAULT_KAFKA_RETRY_BUDGET_MS = 120_000;

/**
 * A Kafka outage under the one retry policy (lib/support/retry.ts), for retry loops that give up only once it
 * outlasts a budget: the clock starts at the first failure (or `start()`) and stops at the next success; a permanent
 * error (isPermanentKafkaError) ends it at once; waits grow from `baseMs` to `maxMs`, 20% jitter so workers do not
 * move together.
 */
export class OutageClock extends RetryBudget {
  constructor(budgetMs: number, backoff: { baseMs?: number; maxMs?: number } = {}) {
    super(
      new RetryPolicy({
        maxElapsedMs: budgetMs,
        baseMs: backoff.baseMs ?? 100,
        maxMs: backoff.maxMs ?? 5000,
        jitter: 0.2,
        retriable: (err) => !isPermanentKafkaError(err),
      }),
    );
  }

  get budgetMs(): number {
    return this.policy.maxElapsedMs;
  }

  /** Backoff before the next retry, ms: exponential in the failures so far, never past the budget left. */
  backoffMs(): number {
    return this.nextDelayMs();
  }
}

const TOPIC_RESOURCE = 2 as ConfigResourceTypes;

/**
 * The largest record a topic accepts (`max.message.bytes`, which defaults to the broker's `message.max.bytes`), or
 * undefined when it cannot be read (no describe permission): the caller keeps its own default then.
 */
export async function topicMaxMessageBytes(kafka: Kafka, topic: string): Promise<number | undefined> {
  const admin = kafka.admin();
  try {
    await admin.connect();
    const res = await admin.describeConfigs({
      includeSynonyms: false,
      // ConfigResourceTypes.TOPIC: kafkajs's CommonJS exports do not name that enum for ESM importers.
      resources: [{ type: TOPIC_RESOURCE, name: topic, configNames: ['max.message.bytes'] }],
    });
    const value = res.resources[0]?.configEntries.find((e) => e.configName === 'max.message.bytes')?.configValue;
    const n = Number(value);
    return Number.isFinite(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

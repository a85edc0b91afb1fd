/**
 * Attaching a crawler: `mlm-filter publish` (pair records onto the worker's Kafka topic or SQS queue), and for a local
 * try `mlm-filter topics create` and `mlm-filter bucket create` (what the worker needs before it starts).
 * lib/cli/main.ts mounts them with `addPublishCommands(program)`.
 */
import { printable } from '../backfill/shard-job.ts';
import { silentLogger } from '../support/logger.ts';
import { Command, Option } from 'commander';
import type { RefusedRecord } from '../publish/index.ts';
import { FilterError } from '../types.ts';
import { addKafkaOptions, brokersArg, connectionFrom } from './ops.ts';
import { shownDefault } from './usage.ts';

const shown = (flags: string, description: string, value: string) =>
  shownDefault(new Option(flags, description), value);

const partitionsArg = (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 10_000) {
    throw new FilterError('invalid_option', `--partitions must be an integer 1..10000, got ${JSON.stringify(value)}`);
  }
  return n;
};

/** kafkajs's own lines (each retry of a refused connection) stay quiet: the command's one coded line says it. */
const quiet = silentLogger;

/** Adds `publish`, `topics create` and `bucket create` to the mlm-filter program. */
export function addPublishCommands(program: Command): void {
  addPublish(program);
  addTopics(program);
  addBucket(program);
}

function addPublish(program: Command): void {
  program
    .command('publish')
    .description(
      "check pair records (JSONL) with the worker's parser and publish them to its Kafka topic (keyed by pair id) " +
        'or SQS queue',
    )
    .requiredOption('--input <path>', 'JSONL file of pair records (plain or gzip), or - for stdin (plain)')
    .option('--kafka <brokers>', 'Kafka bootstrap brokers host:port[,host:port] (with --topic)', brokersArg)
    .option('--topic <topic>', "the worker's source topic (--source-topic); it must exist")
    .option('--sqs <queue-url>', "the worker's SQS queue (--sqs-queue-url) instead of Kafka")
    .addOption(shown('--sqs-endpoint <url>', 'SQS-compatible endpoint (local servers) [env MLMF_SQS_ENDPOINT]', 'AWS'))
    .addOption(
      shown(
        '--invalid <mode>',
        'a record the worker would reject as invalid_record: fail (a file publishes nothing; stdin stops there, ' +
          'exit 2) or skip (reported on stderr, left out)',
        'fail',
      ).choices(['fail', 'skip']),
    )
    .addOption(shown('--check', 'check the records only; publish nothing (no --kafka/--sqs needed)', 'off'))
    .addOption(shown('--tls', 'connect to Kafka with TLS (system CAs)', 'off'))
    .option('--iam-region <region>', 'AWS MSK IAM authentication in this region (implies --tls)')
    .option('--sasl-username <user>', 'SASL/SCRAM-SHA-512 user (password from $MLMF_KAFKA_PASSWORD)')
    .action(publishAction);
}

interface PublishFlags {
  input: string;
  kafka?: string[];
  topic?: string;
  sqs?: string;
  sqsEndpoint?: string;
  invalid?: 'fail' | 'skip';
  check?: boolean;
  tls?: boolean;
  iamRegion?: string;
  saslUsername?: string;
}

async function publishAction(flags: PublishFlags): Promise<void> {
  const toKafka = flags.kafka !== undefined || flags.topic !== undefined;
  if (!flags.check && toKafka === (flags.sqs !== undefined)) {
    throw new FilterError('bad_usage', 'give --kafka BROKERS --topic TOPIC, or --sqs QUEUE_URL (or --check)');
  }
  if (toKafka && !flags.check && (!flags.kafka || !flags.topic)) {
    throw new FilterError('missing_option', '--kafka BROKERS and --topic TOPIC go together');
  }
  const { kafkaTarget, publish, sqsTarget } = await import('../publish/index.ts');
  let target;
  if (flags.check) target = undefined;
  else if (flags.sqs) {
    const { sqsClient } = await import('../support/aws.ts');
    target = await sqsTarget(sqsClient({ endpoint: flags.sqsEndpoint ?? process.env.MLMF_SQS_ENDPOINT }), flags.sqs);
  } else {
    const { createKafka } = await import('../kafka/client.ts');
    const kafka = await createKafka({
      ...connectionFrom({ ...flags, brokers: flags.kafka }),
      clientId: 'mlm-filter-publish',
      logger: quiet,
    });
    target = await kafkaTarget(kafka, flags.topic!);
  }
  const onRefused = (r: RefusedRecord) =>
    process.stderr.write(
      // A record's bytes may hold terminal controls; the parser's message can quote them.
      printable(`${flags.input}:${r.line}: ${flags.invalid === 'skip' ? 'skipped' : 'invalid'}: ${r.message}`) + '\n',
    );
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const result = await publish(
      { input: flags.input, invalid: flags.invalid, check: flags.check, onRefused, signal: stop.signal },
      target,
    );
    const where = flags.check ? 'checked' : `published to ${target!.name}`;
    const skipped = result.refused ? `, ${result.refused} invalid skipped` : '';
    process.stdout.write(
      `${flags.check ? `${result.records} records checked, ${result.records - result.refused} valid` : `${result.published} records ${where}`}${skipped}\n`,
    );
    if (stop.signal.aborted) process.exitCode = 130;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await target?.close();
  }
}

function addTopics(program: Command): void {
  const topics = program.command('topics').description("the worker's Kafka topics");
  addKafkaOptions(
    topics
      .command('create')
      .description(
        "create the worker's topics that do not exist yet (local brokers run with auto-creation off); existing " +
          'topics are left as they are',
      ),
  )
    .requiredOption('--source-topic <topic>', 'the topic pairs are published to')
    .requiredOption('--audit-topic <topic>', 'the topic of audit events')
    .option('--accepted-topic <topic>', 'the topic of accepted pairs')
    .option('--dlq-topic <topic>', 'the dead-letter topic')
    .addOption(
      shown('--partitions <n>', 'partitions of each new topic: how many workers share the source', '3').argParser(
        partitionsArg,
      ),
    )
    .action(
      async (flags: {
        brokers?: string[];
        sourceTopic: string;
        auditTopic: string;
        acceptedTopic?: string;
        dlqTopic?: string;
        partitions?: number;
      }) => {
        const { createKafka } = await import('../kafka/client.ts');
        const { createTopics } = await import('../publish/setup.ts');
        const kafka = await createKafka({ ...connectionFrom(flags), clientId: 'mlm-filter-topics', logger: quiet });
        const names = [flags.sourceTopic, flags.auditTopic, flags.acceptedTopic, flags.dlqTopic].filter(
          (t): t is string => t !== undefined,
        );
        for (const t of await createTopics(kafka, names, flags.partitions ?? 3)) {
          process.stdout.write(`${t.state} ${t.topic} (${t.partitions} partitions)\n`);
        }
      },
    );
}

function addBucket(program: Command): void {
  const bucket = program.command('bucket').description("the worker's curated bucket");
  bucket
    .command('create')
    .description('create the curated bucket unless it exists (a local S3 server: --s3-endpoint)')
    .requiredOption('--bucket <name>', 'the bucket (the worker takes it as --bucket)')
    .addOption(shown('--s3-endpoint <url>', 'S3-compatible endpoint (local servers) [env MLMF_S3_ENDPOINT]', 'AWS'))
    .action(async (flags: { bucket: string; s3Endpoint?: string }) => {
      const { s3Client } = await import('../support/aws.ts');
      const { createBucket } = await import('../publish/setup.ts');
      const s3 = s3Client({ endpoint: flags.s3Endpoint ?? process.env.MLMF_S3_ENDPOINT });
      try {
        process.stdout.write(`${await createBucket(s3, flags.bucket)} s3://${flags.bucket}\n`);
      } finally {
        s3.destroy();
      }
    });
}

/**
 * Operators' commands: `mlm-filter monitor` (live view of the audit / accepted topics) and `mlm-filter report`
 * (one self-contained HTML file). lib/cli/main.ts mounts them with `addOpsCommands(program)`.
 */
import { stat } from 'node:fs/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseFrom, runMonitor } from '../monitor/index.ts';
import { writeReport, type ReportInput } from '../report/index.ts';
import type { KafkaAuth, KafkaConnectionOptions } from '../kafka/client.ts';
import { FilterError } from '../types.ts';

const brokersArg = (value: string) => {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0 || list.some((b) => !/^[^\s:]+:\d+$/.test(b))) {
    throw new InvalidArgumentError('brokers must be host:port[,host:port...]');
  }
  return list;
};
const fromArg = (value: string) => {
  const t = parseFrom(value);
  if (t === undefined)
    throw new InvalidArgumentError('give an ISO time, epoch ms, a duration ago (15m, 2h, 1d) or earliest');
  return t;
};
const positive = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a positive number`);
  return n;
};

/** The connection flags shared by monitor and report. */
function addKafkaOptions(cmd: Command): Command {
  return cmd
    .option('--brokers <list>', 'Kafka bootstrap brokers host:port[,host:port]', brokersArg)
    .option('--tls', 'connect with TLS (system CAs)')
    .option('--iam-region <region>', 'AWS MSK IAM authentication in this region (implies --tls)')
    .option('--sasl-username <user>', 'SASL/SCRAM-SHA-512 user (password from $MLMF_KAFKA_PASSWORD)');
}

function connectionFrom(flags: {
  brokers?: string[];
  tls?: boolean;
  iamRegion?: string;
  saslUsername?: string;
}): KafkaConnectionOptions {
  if (!flags.brokers) throw new FilterError('bad_usage', '--brokers is required');
  let auth: KafkaAuth = { mechanism: 'none' };
  if (flags.iamRegion) auth = { mechanism: 'iam', region: flags.iamRegion };
  else if (flags.saslUsername) {
    const password = process.env.MLMF_KAFKA_PASSWORD;
    if (!password) throw new FilterError('bad_usage', '--sasl-username needs the password in $MLMF_KAFKA_PASSWORD');
    auth = { mechanism: 'scram-sha-512', username: flags.saslUsername, password };
  }
  return {
    brokers: flags.brokers,
    clientId: 'mlm-filter-ops',
    auth,
    tls: flags.tls || !!flags.iamRegion,
    // Monitoring must not drown the view in client logs: only errors, to stderr.
    log: (level, message) => {
      if (level === 'error') process.stderr.write(`${message}\n`);
    },
  };
}

/** Graceful stop on SIGINT/SIGTERM for the long-running monitor. */
function interruptSignal(): AbortSignal {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return ac.signal;
}

/** Where the commands print (tests pass their own). */
export interface OpsIo {
  readonly stdout?: { write(s: string): unknown; isTTY?: boolean; columns?: number };
}

/** Adds `monitor` and `report` to the mlm-filter program. */
export function addOpsCommands(program: Command, io: OpsIo = {}): Command {
  const stdout = io.stdout ?? process.stdout;
  addKafkaOptions(
    program
      .command('monitor')
      .description(
        'live view of the audit (and accepted) topics: accept rate, reject reasons, score histograms, throughput',
      ),
  )
    .requiredOption('--audit-topic <topic>', "the worker's audit topic")
    .option('--accepted-topic <topic>', 'the accepted topic, if the pipeline has one (accepts are deduplicated by id)')
    .option(
      '--from <time>',
      'start at a time: ISO date/time, epoch ms, a duration ago (15m, 2h, 1d), or earliest',
      fromArg,
    )
    .option('--json', 'print one JSON snapshot per interval instead of the terminal view')
    .option('--interval <seconds>', 'refresh interval (default 1)', positive('--interval'))
    .option('--window <seconds>', 'throughput window (default 60)', positive('--window'))
    .option('--duration <seconds>', 'stop after this long (default: until Ctrl-C)', positive('--duration'))
    .action(async (flags) => {
      await runMonitor({
        connection: connectionFrom(flags),
        auditTopic: flags.auditTopic,
        acceptedTopic: flags.acceptedTopic,
        from: flags.from,
        json: !!flags.json,
        intervalMs: flags.interval ? flags.interval * 1000 : undefined,
        windowSeconds: flags.window,
        durationMs: flags.duration ? flags.duration * 1000 : undefined,
        signal: interruptSignal(),
        out: stdout,
      });
    });

  addKafkaOptions(
    program
      .command('report')
      .description(
        'write ONE self-contained HTML report: score histograms, accept rate over time, reasons, sample gallery',
      ),
  )
    .option('--input <path>', 'a `filter --out` directory (curated/ + rejects.jsonl) or an audit-event JSONL file')
    .option('--topic <topic>', 'read audit events from this Kafka topic instead (with --brokers)')
    .option('--accepted-topic <topic>', 'with --topic: also read the accepted topic')
    .option('--from <time>', 'with --topic: start at this time (default: earliest retained)', fromArg)
    .requiredOption('--out <file>', 'the HTML file to write')
    .option('--title <text>', 'report title')
    .addOption(
      new Option('--samples <n>', 'gallery samples per decision (default 24)').argParser(positive('--samples')),
    )
    .action(async (flags) => {
      if ((flags.input === undefined) === (flags.topic === undefined)) {
        throw new FilterError('bad_usage', 'give exactly one of --input or --topic (with --brokers)');
      }
      let input: ReportInput;
      if (flags.topic) {
        input = {
          kind: 'kafka',
          connection: connectionFrom(flags),
          topic: flags.topic,
          acceptedTopic: flags.acceptedTopic,
          from: flags.from,
        };
      } else {
        const s = await stat(flags.input).catch(() => {
          throw new FilterError('input_unreadable', `cannot read ${flags.input}`, { path: flags.input });
        });
        input = s.isDirectory() ? { kind: 'dir', path: flags.input } : { kind: 'jsonl', path: flags.input };
      }
      const data = await writeReport({
        input,
        out: flags.out,
        title: flags.title,
        samples: flags.samples ? Math.floor(flags.samples) : undefined,
      });
      stdout.write(
        `wrote ${flags.out}: ${data.totals.events} pairs, ${data.totals.accepted} accepted, ${data.totals.rejected} rejected` +
          (data.acceptRate === null ? '' : ` (${(data.acceptRate * 100).toFixed(1)}%)`) +
          '\n',
      );
    });
  return program;
}

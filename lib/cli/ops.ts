/**
 * Operators' commands: `mlm-filter monitor` (live view of the audit / accepted topics) and `mlm-filter report`
 * (one self-contained HTML file). lib/cli/main.ts mounts them with `addOpsCommands(program)`.
 */
import { stat } from 'node:fs/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
// The monitor and the report builder (kafkajs, sharp) are loaded by their actions, so --help does not pay for them.
import { parseFrom } from '../monitor/from.ts';
import type { ReportInput } from '../report/index.ts';
import type { KafkaAuth, KafkaConnectionOptions } from '../kafka/client.ts';
import { jsonLogger } from '../support/logger.ts';
import { FilterError } from '../types.ts';
import { shownDefault } from './usage.ts';

export const brokersArg = (value: string) => {
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

/** An option whose default --help shows, applied by the command itself (see shownDefault). */
const shown = (flags: string, description: string, value: string) =>
  shownDefault(new Option(flags, description), value);

/** The connection flags shared by monitor, report, publish and topics. */
export function addKafkaOptions(cmd: Command): Command {
  return cmd
    .option('--brokers <list>', 'Kafka bootstrap brokers host:port[,host:port] (required with Kafka)', brokersArg)
    .addOption(shown('--tls', 'connect with TLS (system CAs)', 'off'))
    .option('--iam-region <region>', 'AWS MSK IAM authentication in this region (implies --tls)')
    .option('--sasl-username <user>', 'SASL/SCRAM-SHA-512 user (password from $MLMF_KAFKA_PASSWORD)');
}

export function connectionFrom(flags: {
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
    logger: jsonLogger(process.stderr, { level: 'error' }),
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
    .addOption(
      shown(
        '--from <time>',
        'start at a time: ISO date/time, epoch ms, a duration ago (15m, 2h, 1d), or earliest',
        'now (new events only)',
      ).argParser(fromArg),
    )
    .addOption(shown('--json', 'print one JSON snapshot per interval instead of the terminal view', 'off'))
    .addOption(shown('--interval <seconds>', 'refresh interval', '1').argParser(positive('--interval')))
    .addOption(shown('--window <seconds>', 'throughput window', '60').argParser(positive('--window')))
    .addOption(shown('--duration <seconds>', 'stop after this long', 'until Ctrl-C').argParser(positive('--duration')))
    .addOption(
      shown('--until-decided <n>', 'stop once n pairs are decided (accepted + rejected)', 'off').argParser(
        positive('--until-decided'),
      ),
    )
    .action(async (flags) => {
      const { runMonitor } = await import('../monitor/index.ts');
      await runMonitor({
        connection: connectionFrom(flags),
        auditTopic: flags.auditTopic,
        acceptedTopic: flags.acceptedTopic,
        from: flags.from,
        json: !!flags.json,
        intervalMs: flags.interval ? flags.interval * 1000 : undefined,
        windowSeconds: flags.window,
        durationMs: flags.duration ? flags.duration * 1000 : undefined,
        untilDecided: flags.untilDecided,
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
    .option(
      '--input <path>',
      'a `filter --out` directory (curated/ + rejects.jsonl) or an audit-event JSONL file (this or --topic is required)',
    )
    .option('--topic <topic>', 'read audit events from this Kafka topic instead (with --brokers)')
    .option('--accepted-topic <topic>', 'with --topic: also read the accepted topic')
    .addOption(shown('--from <time>', 'with --topic: start at this time', 'earliest retained').argParser(fromArg))
    .requiredOption('--out <file>', 'the HTML file to write')
    .addOption(shown('--title <text>', 'report title', 'MLM filter report'))
    .addOption(shown('--samples <n>', 'gallery samples per decision', '24').argParser(positive('--samples')))
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
      const { writeReport } = await import('../report/index.ts');
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

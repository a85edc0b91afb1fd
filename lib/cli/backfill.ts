/**
 * Backfill commands: `mlm-filter enqueue` (one shard-job message per input shard, resumable) and
 * `mlm-filter job status` (progress read from the job's outputs and the queue). lib/cli/main.ts mounts them with
 * `addBackfillCommands(program)`; the deployed workers run the jobs (MLMF_SOURCE=sqs-shards, docs/DEPLOY.md).
 */
import { Command, Option } from 'commander';
import type { S3Client } from '@aws-sdk/client-s3';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { shownDefault } from './usage.ts';

/** Where the commands print (tests pass their own). */
export interface BackfillIo {
  readonly stdout?: { write(s: string): unknown };
  readonly stderr?: { write(s: string): unknown };
}

type Out = {
  write(s: string): unknown;
  on?: (event: 'error', listener: (err: NodeJS.ErrnoException) => void) => unknown;
};

/**
 * `out`, going quiet once its reader has gone (`enqueue | head`: EPIPE): the command's work goes on to its end
 * (half an enqueue would be worse than unread lines), what it would print is dropped, and nothing crashes.
 */
function quietOnEpipe(out: Out): { write(s: string): void } {
  let gone = false;
  out.on?.('error', (err) => {
    if (err.code !== 'EPIPE') throw err;
    gone = true;
  });
  return {
    write: (s) => {
      if (!gone) out.write(s);
    },
  };
}

interface EndpointFlags {
  s3Endpoint?: string;
  sqsEndpoint?: string;
  region?: string;
}

const shown = (flags: string, description: string, value: string) =>
  shownDefault(new Option(flags, description), value);

function addEndpointOptions(cmd: Command): Command {
  return cmd
    .addOption(shown('--s3-endpoint <url>', 'S3-compatible endpoint (local servers) [env MLMF_S3_ENDPOINT]', 'AWS'))
    .addOption(shown('--sqs-endpoint <url>', 'SQS-compatible endpoint (local servers) [env MLMF_SQS_ENDPOINT]', 'AWS'))
    .addOption(shown('--region <region>', 'AWS region [env AWS_REGION]', 'us-east-1'));
}

/** The AWS clients (loaded on use, so --help does not pay for the SDK). */
async function clients(flags: EndpointFlags): Promise<{ s3: S3Client; sqs: SQSClient; close(): void }> {
  const { s3Client, sqsClient } = await import('../support/aws.ts');
  const region = flags.region;
  const s3 = s3Client({ region, endpoint: flags.s3Endpoint ?? process.env.MLMF_S3_ENDPOINT });
  const sqs = sqsClient({ region, endpoint: flags.sqsEndpoint ?? process.env.MLMF_SQS_ENDPOINT });
  return {
    s3,
    sqs,
    close: () => {
      s3.destroy();
      sqs.destroy();
    },
  };
}

/** Adds `enqueue` and `job status` to the mlm-filter program. */
export function addBackfillCommands(program: Command, io: BackfillIo = {}): Command {
  const stdout = quietOnEpipe(io.stdout ?? process.stdout);
  const stderr = io.stderr ?? process.stderr;
  addEndpointOptions(
    program
      .command('enqueue')
      .description(
        "backfill: send one shard-job message per input WebDataset shard to the workers' queue (skips shards " +
          'already done; re-run it to resume) and write the job manifest',
      )
      .requiredOption(
        '--input <uri|file>',
        's3://bucket/prefix/ (every .tar under it), s3://bucket/key.tar, or a local file of s3:// URIs, one a line',
      )
      .requiredOption('--queue <url>', 'the SQS queue the workers (MLMF_SOURCE=sqs-shards) take shard jobs from')
      .requiredOption('--output <uri>', 'output root, s3://bucket/prefix/: the job writes under <output>/<job>/')
      .addOption(shown('--job <name>', 'job name (A-Z a-z 0-9 . _ -)', "the input's last segment + a hash of --input"))
      .addOption(shown('--dry-run', 'list what would be sent; send and write nothing', 'off')),
  ).action(
    async (flags: EndpointFlags & { input: string; queue: string; output: string; job?: string; dryRun?: boolean }) => {
      const [{ enqueue }, { printable }, { FilterError }] = await Promise.all([
        import('../backfill/enqueue.ts'),
        import('../backfill/shard-job.ts'),
        import('../types.ts'),
      ]);
      const c = await clients(flags);
      try {
        const verb = flags.dryRun ? 'would send' : 'sent';
        const line = (s: { shard: string; input: string }) => printable(`${verb} ${s.shard} ${s.input}`) + '\n';
        const r = await enqueue({
          s3: c.s3,
          sqs: c.sqs,
          input: flags.input,
          queueUrl: flags.queue,
          output: flags.output,
          job: flags.job,
          dryRun: flags.dryRun,
          onSkipped: (k) => stderr.write(printable(`mlm-filter: skipped ${k.input}: ${k.reason}`) + '\n'),
          onSent: (s) => stdout.write(line(s)),
        });
        if (r.dryRun) for (const s of r.sent) stdout.write(line(s));
        const skipped = r.skipped.length > 0 ? `, skipped ${r.skipped.length} unusable keys` : '';
        stdout.write(
          printable(
            `job ${r.job}: ${r.shards} shards, ${r.done} already done, ${verb} ${r.sent.length} to ${flags.queue}${skipped}`,
          ) +
            `\noutputs: ${r.output}${r.dryRun ? '' : `; manifest: ${r.manifest}`}\n` +
            printable(
              `progress: mlm-filter job status --job ${r.job} --output ${flags.output} --queue ${flags.queue}`,
            ) +
            '\n',
        );
        if (r.skipped.length > 0) {
          // After the rest was sent and the manifest written: a re-run skips the same keys and sends nothing more.
          throw new FilterError(
            'input_keys_skipped',
            `${r.skipped.length} input keys cannot be shard jobs and were skipped (listed above); ` +
              `the other ${r.shards} shards are in job ${r.job}: rename or copy those objects and enqueue them as another job`,
            { job: r.job, skipped: r.skipped.length },
          );
        }
      } finally {
        c.close();
      }
    },
  );

  const job = program.command('job').description('backfill jobs: `job status`, `job outputs`');
  addEndpointOptions(
    job
      .command('status')
      .description(
        'shards done / in flight / failed, pairs/s, accept rate and ETA of a job, from its outputs and the queue',
      )
      .requiredOption('--job <name>', 'the job name enqueue printed')
      .requiredOption('--output <uri>', 'the output root given to enqueue')
      .option('--queue <url>', 'the job queue: adds messages waiting and in flight')
      .addOption(shown('--json', 'print the status as one JSON object', 'off')),
  ).action(async (flags: EndpointFlags & { job: string; output: string; queue?: string; json?: boolean }) => {
    const { formatJobStatus, jobStatus } = await import('../backfill/status.ts');
    const c = await clients(flags);
    try {
      const s = await jobStatus({ s3: c.s3, sqs: c.sqs, output: flags.output, job: flags.job, queueUrl: flags.queue });
      stdout.write(flags.json ? `${JSON.stringify(s)}\n` : `${formatJobStatus(s)}\n`);
    } finally {
      c.close();
    }
  });
  addEndpointOptions(
    job
      .command('outputs')
      .description(
        "a job's published outputs, one s3:// URI a line: each done shard's curated shards (the attempt that " +
          'published it; nothing of attempts in progress or that lost)',
      )
      .requiredOption('--job <name>', 'the job name enqueue printed')
      .requiredOption('--output <uri>', 'the output root given to enqueue')
      .addOption(shown('--rejects', 'list the rejects files (audit events) instead', 'off')),
  ).action(async (flags: EndpointFlags & { job: string; output: string; rejects?: boolean }) => {
    const { jobOutputs } = await import('../backfill/status.ts');
    const c = await clients(flags);
    try {
      const o = await jobOutputs({ s3: c.s3, output: flags.output, job: flags.job });
      for (const uri of flags.rejects ? o.rejects : o.curated) stdout.write(`${uri}\n`);
    } finally {
      c.close();
    }
  });
  return program;
}

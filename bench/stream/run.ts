/**
 * Stream benchmark: one worker's end-to-end pairs/s through the real broker (Kafka, exactly-once transactions), the
 * S3 server (curated shards) and a local image server, behind a fast deterministic scorer (no model: this measures
 * what streaming adds, not inference), against intake-only time per pair on the same input (same URLs, same
 * preprocessing, same intake concurrency). Rounds run A-B-B-A (intake, stream, stream, intake) against load drift.
 *
 * Needs `bash scripts/services.sh up`. Usage:
 *   node --import tsx bench/stream/run.ts [--pairs 2000] [--rounds 2] [--images 64] [--json out.json]
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { runWorker } from '../../lib/worker/run.ts';
import { Logger } from '../../lib/support/logger.ts';
import { Intake } from '../../lib/intake/index.ts';
import type { PreprocessSpec, ScoreInput, ScoreResult, Scorer } from '../../lib/types.ts';
import {
  BROKERS,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  kafkaClient,
  needServices,
  produce,
  s3Client,
  uniq,
} from '../../test/stream/helpers.ts';

const { values: args } = parseArgs({
  options: {
    pairs: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '2' },
    images: { type: 'string', default: '64' },
    concurrency: { type: 'string', default: '32' },
    json: { type: 'string' },
  },
});
const N = Number(args.pairs);
const ROUNDS = Number(args.rounds);
const CONCURRENCY = Number(args.concurrency);

const down = await needServices('kafka', 's3');
if (down) {
  console.error(down);
  process.exit(2);
}

/** The released Qwen2.5 checkpoint's vision input: SigLIP 384, padded to square. Realistic preprocessing cost. */
const SPEC: PreprocessSpec = {
  size: 384,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};

/** Scores from the caption's hash at once: the bench measures the streaming around the model, not the model. */
class InstantScorer implements Scorer {
  readonly model = { name: 'bench-instant-scorer', revision: '0' };
  readonly preprocess = SPEC;
  readonly metrics = ['itm', 'odf', 'ctq', 'su'] as const;
  readonly maxBatch = 16;
  async score(batch: readonly ScoreInput[]): Promise<ScoreResult[]> {
    return batch.map((b) => {
      let h = 0;
      for (let i = 0; i < b.caption.length; i++) h = (h * 31 + b.caption.charCodeAt(i)) >>> 0;
      const s = h % 101;
      return { scores: { itm: s, odf: s, ctq: s, su: s } };
    });
  }
  async close(): Promise<void> {}
}

// The image server is its own process so serving does not share the measured event loop.
const server = spawn(process.execPath, ['--import', 'tsx', 'bench/intake/server.ts', args.images!], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const info = await new Promise<{ port: number; meanBytes: number; meanPixels: number }>((resolve) =>
  createInterface({ input: server.stdout! }).once('line', (l) => resolve(JSON.parse(l))),
);
const allow = `127.0.0.1:${info.port}`;
const url = (i: number) => `http://127.0.0.1:${info.port}/img/${i}.jpg?r=${i}`;

let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage.rss())), 50);

async function intakeOnly(): Promise<number> {
  const intake = new Intake({ allowAddresses: [allow] }, SPEC);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < N) {
        const i = next++;
        await intake.prepare({ kind: 'url', url: url(i) });
      }
    }),
  );
  return performance.now() - t0;
}

const kafka = kafkaClient();
const admin = kafka.admin();
await admin.connect();
const s3 = s3Client();

async function stream(): Promise<{ totalMs: number; steadyMs: number; shards: number }> {
  const topic = uniq('bench-in');
  const audit = `${topic}-audit`;
  const bucket = uniq('bench-curated');
  const groupId = `${topic}-group`;
  await createTopics(admin, [{ topic, partitions: 4 }, { topic: audit }]);
  await createBucket(s3, bucket);
  await produce(
    kafka,
    topic,
    Array.from({ length: N }, (_, i) => ({ id: `${topic}-${i}`, url: url(i), caption: `a photo number ${i}` })),
    4,
  );
  const stop = new AbortController();
  let joinedAt = 0;
  const t0 = performance.now();
  const run = runWorker(
    {
      source: 'kafka',
      brokers: [BROKERS],
      sourceTopic: topic,
      groupId,
      bucket,
      auditTopic: audit,
      s3Endpoint: S3_ENDPOINT,
      healthPort: 0,
      transactionalIdPrefix: `${topic}-tx`,
      thresholds: 'itm>=50',
      intakeConcurrency: CONCURRENCY,
      allowAddresses: [allow],
      scorer: new InstantScorer(),
    },
    {
      signal: stop.signal,
      logger: new Logger(({ level, msg }) => {
        if (msg === 'joined consumer group' && !joinedAt) joinedAt = performance.now();
        if (level === 'error') console.error(msg);
      }),
      metricsOut: null,
    },
  );
  while ((await committedTotal(admin, groupId, topic)) < N) await new Promise((r) => setTimeout(r, 50));
  const end = performance.now();
  stop.abort();
  const result = await run;
  return { totalMs: end - t0, steadyMs: end - (joinedAt || t0), shards: result.shardsWritten };
}

// Warm-up (JIT, connection pools, image server caches), not measured.
await intakeOnly();
const intakeMs: number[] = [];
const streamRuns: { totalMs: number; steadyMs: number; shards: number }[] = [];
for (let r = 0; r < ROUNDS; r++) {
  if (r % 2 === 0) {
    intakeMs.push(await intakeOnly());
    streamRuns.push(await stream());
  } else {
    streamRuns.push(await stream());
    intakeMs.push(await intakeOnly());
  }
}
clearInterval(sampler);
server.kill('SIGTERM');
await admin.disconnect();
s3.destroy();

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const intakePerPair = mean(intakeMs) / N;
const streamPerPair = mean(streamRuns.map((s) => s.steadyMs)) / N;
const totalPerPair = mean(streamRuns.map((s) => s.totalMs)) / N;
const result = {
  pairs: N,
  rounds: ROUNDS,
  concurrency: CONCURRENCY,
  images: {
    distinct: Number(args.images),
    meanBytes: Math.round(info.meanBytes),
    meanPixels: Math.round(info.meanPixels),
  },
  intakeOnlyMsPerPair: +intakePerPair.toFixed(3),
  streamMsPerPair: +streamPerPair.toFixed(3),
  streamMsPerPairWithStartup: +totalPerPair.toFixed(3),
  streamPairsPerSec: +(1000 / streamPerPair).toFixed(1),
  intakeOnlyPairsPerSec: +(1000 / intakePerPair).toFixed(1),
  overheadPct: +((streamPerPair / intakePerPair - 1) * 100).toFixed(1),
  overheadWithStartupPct: +((totalPerPair / intakePerPair - 1) * 100).toFixed(1),
  shardsPerRun: streamRuns.map((s) => s.shards),
  peakRssMiB: Math.round(peakRss / 2 ** 20),
  runsMs: { intake: intakeMs.map(Math.round), stream: streamRuns.map((s) => Math.round(s.steadyMs)) },
};
console.log(JSON.stringify(result, null, 2));
if (args.json) writeFileSync(args.json, JSON.stringify(result, null, 2));
process.exit(0);

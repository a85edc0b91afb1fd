import { randomUUID } from 'node:crypto';
import { DeleteObjectsCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { ModelInfo, Outcome, PartitionRef, Sink } from '../types.ts';
import { RetryPolicy } from '../support/retry.ts';
import { FilterError } from '../types.ts';
import { silentLogger, type Logger } from '../support/logger.ts';
import { ShardBuilder, sampleKey } from './webdataset.ts';

/** Options of the curated S3 sink. */
export interface S3CuratedSinkOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly model: ModelInfo;
  /** Key prefix for everything the sink writes, e.g. `curated/`. Default ''. */
  readonly prefix?: string;
  /**
   * Folder of a Kafka partition's shards under the prefix; `{topic}` and `{partition}` are substituted.
   * Default `{topic}/partition={partition}/`. Shards are `<folder><topic>+<partition>+<first>-<last>.tar`, offsets
   * zero-padded to 20 digits (Kafka Connect's S3 sink style), so a listing is in offset order.
   */
  readonly partitionPath?: string;
  /** Folder of shards from sources without offsets (SQS). Default `sqs/`; names are `<workerId>-<seq>.tar`. */
  readonly unorderedPath?: string;
  /** Unique per worker process for unordered shards. Default a random UUID. */
  readonly workerId?: string;
  /** Samples per shard. Default 1000. */
  readonly samplesPerShard?: number;
  /** Shard size cap, bytes. Default 256 MiB. */
  readonly maxShardBytes?: number;
  /**
   * A partially filled shard is uploaded after this long without new accepts, ms. Default 5000. 0: cut at the end of
   * every write call, i.e. one shard per source batch at most. Holding only pays off when the caller sends the next
   * batch before the previous one is durable; a caller that waits for durability between writes (lib/pipeline does
   * today) would otherwise wait the idle time on every batch.
   */
  readonly idleFlushMs?: number;
  /** Multipart part size for large shards, bytes. Default 16 MiB. */
  readonly partSizeBytes?: number;
  /** Upload retry backoff, ms (first wait 200, cap 10 000): a failed upload is retried, same key, until it lands. */
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
  /** Hard stop: pending uploads stop retrying and their writes reject. */
  readonly signal?: AbortSignal;
  /** Where recoveries and upload retries are reported. Default: nowhere. */
  readonly logger?: Logger;
}

/** Where an accepted sample is stored. */
export interface CuratedLocation {
  bucket: string;
  /** Key of the tar shard. */
  shard: string;
  /** The sample's key inside the shard (`<sample>.jpg|txt|json`). */
  sample: string;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

const pad = (n: bigint) => n.toString().padStart(20, '0');
const SHARD_RE = /\+(\d{20})-(\d{20})\.(tar|index\.json)$/;

interface Stream {
  readonly key: string;
  readonly kafka?: { topic: string; partition: number };
  builder: ShardBuilder;
  accepted: Outcome[];
  waiters: Deferred<void>[];
  first?: bigint;
  last?: bigint;
  /** Highest offset already seen (in a builder or durable): a retried write skips it. */
  seen: bigint;
  /** Shards recovered from the bucket, for locations of records a replay skips. */
  ranges: { start: bigint; end: bigint; key: string }[];
  recovered?: Promise<void>;
  inflight: Set<Promise<void>>;
  idle?: NodeJS.Timeout;
  chain: Promise<void>;
}

/**
 * Accepted pairs as WebDataset shards (ShardBuilder: deterministic tar + `.index.json`) in an S3 bucket.
 *
 * Kafka partitions: one shard stream per partition, named by the offset range it covers. On the first write after
 * an assignment the sink lists the partition's shards: the highest covered offset is its position, and a replayed
 * record at or below it is already in the bucket and is skipped, so a replay after a crash never duplicates a sample
 * (and a shard re-cut at other boundaries cannot overlap an old one). A tar without its index (crash between the two
 * puts) was never acked and is deleted, then rewritten by the replay. Flush by count, bytes and idle time.
 * Sources without offsets (SQS): shards unique per worker; duplicates after redelivery are detectable by id.
 */
export class S3CuratedSink implements Sink {
  readonly name = 's3-curated';
  readonly durability = 'durable' as const;
  private readonly streams = new Map<string, Stream>();
  /** Chains of streams dropped on revocation: a re-recovery waits for their uploads before listing. */
  private readonly retired = new Map<string, Promise<void>>();
  private readonly locations = new WeakMap<Outcome, Deferred<CuratedLocation | undefined>>();
  /** location() calls that came before the outcome's write. */
  private readonly asks = new Map<Outcome, Deferred<CuratedLocation | undefined>>();
  /** Writes still adding their outcomes to the builders (a first write waits for the partition's listing). */
  private readonly adding = new Set<Promise<unknown>>();
  private seq = 0;
  readonly workerId: string;
  private readonly log: Logger;
  shardsWritten = 0;
  samplesWritten = 0;
  skippedReplayed = 0;

  /** Every failure is retried (a 403 may be a policy being fixed): nothing is acked meanwhile, a stop ends it. */
  private readonly retryPolicy: RetryPolicy;

  constructor(private readonly options: S3CuratedSinkOptions) {
    this.workerId = options.workerId ?? randomUUID();
    const { retryBaseMs: baseMs = 200, retryMaxMs: maxMs = 10_000 } = options;
    this.retryPolicy = new RetryPolicy({ baseMs, maxMs, retriable: () => true });
    this.log = options.logger ?? silentLogger;
  }

  private folder(topic: string, partition: number): string {
    const tpl = this.options.partitionPath ?? '{topic}/partition={partition}/';
    return (this.options.prefix ?? '') + tpl.replaceAll('{topic}', topic).replaceAll('{partition}', String(partition));
  }

  private stream(outcome: Outcome): Stream {
    const o = outcome.record.origin;
    const key = o.kind === 'kafka' ? `k\u0000${o.topic}\u0000${o.partition}` : 'unordered';
    let s = this.streams.get(key);
    if (!s) {
      s = {
        key,
        ...(o.kind === 'kafka' ? { kafka: { topic: o.topic, partition: o.partition } } : {}),
        builder: new ShardBuilder(this.options.model),
        accepted: [],
        waiters: [],
        seen: -1n,
        ranges: [],
        inflight: new Set(),
        chain: this.retired.get(key) ?? Promise.resolve(),
      };
      this.streams.set(key, s);
    }
    return s;
  }

  /** Lists the partition's shards: position, ranges, orphan tars removed. */
  private async recover(s: Stream): Promise<void> {
    const { topic, partition } = s.kafka!;
    await s.chain;
    const prefix = `${this.folder(topic, partition)}${topic}+${partition}+`;
    const tars = new Map<string, { start: bigint; end: bigint }>();
    const indexes = new Set<string>();
    let token: string | undefined;
    do {
      const page = await this.retry(`list ${prefix}`, () =>
        this.options.s3.send(
          new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: prefix, ContinuationToken: token }),
        ),
      );
      for (const obj of page.Contents ?? []) {
        const m = obj.Key ? SHARD_RE.exec(obj.Key) : null;
        if (!m) continue;
        const base = obj.Key!.slice(0, obj.Key!.length - m[3]!.length - 1);
        if (m[3] === 'tar') tars.set(base, { start: BigInt(m[1]!), end: BigInt(m[2]!) });
        else indexes.add(base);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    const orphans = [...tars.keys()].filter((b) => !indexes.has(b));
    if (orphans.length > 0) {
      this.log.warn('deleting shards without an index (written, never acked; the replay rewrites them)', {
        shards: orphans,
      });
      await this.retry('delete orphan shards', () =>
        this.options.s3.send(
          new DeleteObjectsCommand({
            Bucket: this.options.bucket,
            Delete: { Objects: orphans.map((b) => ({ Key: `${b}.tar` })) },
          }),
        ),
      );
    }
    for (const [base, r] of tars) {
      if (!indexes.has(base)) continue;
      s.ranges.push({ ...r, key: `${base}.tar` });
      if (r.end > s.seen) s.seen = r.end;
    }
    s.ranges.sort((a, b) => (a.start < b.start ? -1 : 1));
    if (s.seen >= 0n)
      this.log.info('curated position recovered from the bucket', { topic, partition, through: s.seen.toString() });
  }

  /** Where `outcome`'s sample is (resolves once its shard is durable), or undefined for a record the sink did not store. */
  location(outcome: Outcome): Promise<CuratedLocation | undefined> {
    const known = this.locations.get(outcome);
    if (known) return known.promise;
    if (outcome.decision !== 'accept') return Promise.resolve(undefined);
    // Asked before this sink's write reached it (sinks are written concurrently): answered when it does.
    let ask = this.asks.get(outcome);
    if (!ask) this.asks.set(outcome, (ask = deferred()));
    return ask.promise;
  }

  private register(outcome: Outcome): Deferred<CuratedLocation | undefined> {
    const d = this.asks.get(outcome) ?? deferred<CuratedLocation | undefined>();
    this.asks.delete(outcome);
    this.locations.set(outcome, d);
    return d;
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const added = this.add(outcomes);
    this.adding.add(added);
    try {
      await Promise.all(await added);
    } finally {
      this.adding.delete(added);
    }
  }

  /** Adds the outcomes to their streams' shards; resolves with what makes them durable. */
  private async add(outcomes: readonly Outcome[]): Promise<Promise<void>[]> {
    const durable: Promise<void>[] = [];
    const touched = new Set<Stream>();
    for (const o of outcomes) {
      const s = this.stream(o);
      if (s.kafka) {
        s.recovered ??= this.recover(s);
        await s.recovered;
        const origin = o.record.origin as { offset: string };
        const offset = BigInt(origin.offset);
        if (offset <= s.seen) {
          // Replay of a record already covered: a durable shard in the bucket holds it (or this stream's builder).
          if (o.decision === 'accept' && !this.locations.has(o)) {
            const range = s.ranges.find((r) => r.start <= offset && offset <= r.end);
            this.register(o).resolve(
              range && { bucket: this.options.bucket, shard: range.key, sample: sampleKey(o.id) },
            );
            this.skippedReplayed++;
          }
          touched.add(s);
          continue;
        }
        s.seen = offset;
        s.first ??= offset;
        s.last = offset;
      }
      if (o.decision !== 'accept') continue;
      touched.add(s);
      s.builder.add(o);
      s.accepted.push(o);
      this.register(o);
      const perShard = this.options.samplesPerShard ?? 1000;
      const maxBytes = this.options.maxShardBytes ?? 256 * 1024 * 1024;
      if (s.builder.count >= perShard || s.builder.bytes >= maxBytes) durable.push(this.cut(s));
    }
    const idleMs = this.options.idleFlushMs ?? 5000;
    for (const s of touched) {
      if (idleMs === 0 && s.builder.count > 0) this.cut(s).catch(() => undefined);
      // Everything this stream still has in flight includes what these outcomes were added to.
      durable.push(...s.inflight);
      if (s.builder.count > 0) {
        const w = deferred<void>();
        s.waiters.push(w);
        durable.push(w.promise);
        clearTimeout(s.idle);
        s.idle = setTimeout(() => void this.cut(s).catch(() => undefined), idleMs);
        s.idle.unref();
      }
    }
    return durable;
  }

  private async retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    const { bucket, signal } = this.options;
    try {
      return await this.retryPolicy.run(fn, {
        signal,
        onRetry: ({ error, attempt, delayMs }) =>
          this.log.error('S3 request failed, retrying (nothing is acked meanwhile)', {
            what,
            bucket,
            attempt,
            retryInMs: delayMs,
            error: String(error),
          }),
      });
    } catch (err) {
      if (!signal?.aborted) throw err;
      throw new FilterError('sink_aborted', `S3 ${what} abandoned on hard stop`, { bucket }, { cause: err });
    }
  }

  /** Seals the stream's shard and uploads it (tar, then index: the index marks it complete). */
  private cut(s: Stream): Promise<void> {
    clearTimeout(s.idle);
    s.idle = undefined;
    const { builder, waiters, accepted, first, last } = s;
    s.builder = new ShardBuilder(this.options.model);
    s.waiters = [];
    s.accepted = [];
    s.first = undefined;
    s.last = undefined;
    if (builder.count === 0) {
      waiters.forEach((w) => w.resolve());
      return s.chain;
    }
    let base: string;
    let source: Record<string, unknown> | undefined;
    if (s.kafka) {
      const { topic, partition } = s.kafka;
      base = `${this.folder(topic, partition)}${topic}+${partition}+${pad(first!)}-${pad(last!)}`;
      source = { kind: 'kafka', topic, partition, first_offset: first!.toString(), last_offset: last!.toString() };
    } else {
      base = `${this.options.prefix ?? ''}${this.options.unorderedPath ?? 'sqs/'}${this.workerId}-${String(this.seq++).padStart(6, '0')}`;
    }
    const shardName = base.slice(base.lastIndexOf('/') + 1);
    const done = s.chain.then(async () => {
      const { tar, index } = await builder.finish(shardName, source);
      await this.retry(`put ${base}.tar`, () =>
        new Upload({
          client: this.options.s3,
          params: { Bucket: this.options.bucket, Key: `${base}.tar`, Body: tar, ContentType: 'application/x-tar' },
          partSize: Math.max(5 * 1024 * 1024, this.options.partSizeBytes ?? 16 * 1024 * 1024),
          queueSize: 4,
        }).done(),
      );
      await this.retry(`put ${base}.index.json`, () =>
        this.options.s3.send(
          new PutObjectCommand({
            Bucket: this.options.bucket,
            Key: `${base}.index.json`,
            Body: JSON.stringify(index),
            ContentType: 'application/json',
          }),
        ),
      );
      if (s.kafka) s.ranges.push({ start: first!, end: last!, key: `${base}.tar` });
      this.shardsWritten++;
      this.samplesWritten += index.count;
      accepted.forEach((o, i) =>
        this.locations
          .get(o)
          ?.resolve({ bucket: this.options.bucket, shard: `${base}.tar`, sample: index.samples[i]!.key }),
      );
    });
    s.chain = done.catch(() => undefined);
    s.inflight.add(done);
    done.then(
      () => {
        s.inflight.delete(done);
        waiters.forEach((w) => w.resolve());
      },
      (err) => {
        s.inflight.delete(done);
        waiters.forEach((w) => w.reject(err));
        accepted.forEach((o) => this.locations.get(o)?.reject(err));
      },
    );
    return done;
  }

  /**
   * The pipeline revoked batches of these partitions: their unflushed outcomes belong to revoked batches (never
   * acked), so they are dropped, and the next write after a re-assignment recovers the position from the bucket again.
   */
  revoked(partitions: readonly PartitionRef[]): void {
    for (const { topic, partition } of partitions) {
      const key = `k\u0000${topic}\u0000${partition}`;
      const s = this.streams.get(key);
      if (!s) continue;
      clearTimeout(s.idle);
      s.waiters.forEach((w) => w.resolve());
      s.accepted.forEach((o) => this.locations.get(o)?.resolve(undefined));
      this.retired.set(key, s.chain);
      this.streams.delete(key);
    }
    for (const [o, ask] of this.asks) {
      const origin = o.record.origin;
      if (
        origin.kind === 'kafka' &&
        partitions.some((p) => p.topic === origin.topic && p.partition === origin.partition)
      ) {
        ask.resolve(undefined);
        this.asks.delete(o);
      }
    }
  }

  async flush(): Promise<void> {
    // A write called before the flush is part of "everything written", also one still waiting for its listing.
    await Promise.all([...this.adding].map((a) => a.catch(() => undefined)));
    await Promise.all([...this.streams.values()].map((s) => this.cut(s)));
  }

  async close(): Promise<void> {
    await this.flush();
    for (const s of this.streams.values()) clearTimeout(s.idle);
  }
}

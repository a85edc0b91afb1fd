/**
 * Shared pieces of the backfill tests: input shards (whole, cut off, with a corrupt header or an undecodable image),
 * uploaded to the local S3 server, and readers for a job's outputs (curated shard ids from the tars themselves,
 * reject events, done markers). The services and the stand-in scorer are test/stream/helpers.ts's.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before } from 'node:test';
import { promisify } from 'node:util';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { ShardDone } from '../../lib/backfill/outputs.ts';
import type { AuditEvent } from '../../lib/formats/audit-event.ts';
import { sampleMembers, ustar, ustarMember } from '../sources/ustar.ts';
import {
  CREDENTIALS,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  curatedIds,
  getBytes,
  listAll,
  s3Client,
  testPng,
  uniq,
} from '../stream/helpers.ts';

/** An S3 and an SQS client on the local services, as every backfill suite uses them. */
export interface QueueClients {
  readonly s3: S3Client;
  readonly sqs: SQSClient;
}

/** Opens the clients before the enclosing describe's tests (handing them to `receive`) and destroys them after. */
export function useQueueClients(receive: (c: QueueClients) => void): void {
  let clients: QueueClients | undefined;
  before(() => {
    clients = {
      s3: s3Client(),
      sqs: new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT }),
    };
    receive(clients);
  });
  after(() => {
    clients?.s3.destroy();
    clients?.sqs.destroy();
  });
}

/** A new queue named `name` plus a unique suffix; resolves with its URL. */
export async function newQueue(sqs: SQSClient, name: string): Promise<string> {
  return (await sqs.send(new CreateQueueCommand({ QueueName: uniq(name) }))).QueueUrl!;
}

export type Damage = 'none' | 'truncated-tail' | 'corrupt-header' | 'undecodable-image';

export interface InputShard {
  readonly name: string;
  readonly tar: Buffer;
  /** Ids of the samples that read whole (each ends accepted or rejected). */
  readonly ids: string[];
  /** Of those, the ones the policy `itm>=50` accepts (even sample numbers, when the image decodes). */
  readonly accepts: string[];
  /** Unreadable parts, each one `invalid_record` reject with this detail kind. */
  readonly unreadable: string[];
}

/**
 * A WebDataset shard of `n` samples `<name>-<i>` (png, txt, json); even i captions say score=90, odd score=10.
 * `truncated-tail` cuts the file inside the last sample's image; `corrupt-header` breaks the header of the sample
 * at the middle (the rest of the shard is unreadable); `undecodable-image` replaces sample 2's image (an accept otherwise) with garbage.
 */
export async function inputShard(name: string, n: number, damage: Damage = 'none'): Promise<InputShard> {
  const png = await testPng();
  const members = (i: number): [string, Buffer][] => {
    const key = `${name}-${i}`;
    const image = damage === 'undecodable-image' && i === 2 ? Buffer.from('not an image at all') : png;
    return sampleMembers(key, image, `pair ${i} of ${name} score=${i % 2 === 0 ? 90 : 10}`, { source_index: i }, 'png');
  };
  const ids = Array.from({ length: n }, (_, i) => `${name}-${i}`);
  let tar = ustar(Array.from({ length: n }, (_, i) => members(i)).flat());
  let whole = n;
  const unreadable: string[] = [];
  if (damage === 'truncated-tail') {
    const head = Buffer.concat(
      Array.from({ length: n - 1 }, (_, i) => members(i).map(([k, d]) => ustarMember(k, d))).flat(),
    );
    tar = tar.subarray(0, head.length + 512 + 10);
    whole = n - 1;
    unreadable.push('truncated_shard');
  } else if (damage === 'corrupt-header') {
    const k = Math.floor(n / 2);
    const at = Buffer.concat(
      Array.from({ length: k }, (_, i) => members(i).map(([x, d]) => ustarMember(x, d))).flat(),
    ).length;
    tar = Buffer.from(tar);
    tar[at + 148] = 0x37; // a checksum digit: the header no longer adds up
    whole = k;
    unreadable.push('corrupt_shard');
  }
  const readable = ids.slice(0, whole);
  const accepts = readable.filter((_, i) => i % 2 === 0 && !(damage === 'undecodable-image' && i === 2));
  return { name, tar, ids: readable, accepts, unreadable };
}

export async function putShard(s3: S3Client, bucket: string, key: string, tar: Buffer): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: tar }));
}

/** Sample ids of every curated tar under `prefix`, read from the tars' `.json` members. */
export async function curatedIdsUnder(s3: S3Client, bucket: string, prefix: string): Promise<string[]> {
  return (await curatedIds(s3, bucket, prefix)).ids;
}

/** Every audit event of every rejects file under `prefix`. */
export async function rejectEventsUnder(s3: S3Client, bucket: string, prefix: string): Promise<AuditEvent[]> {
  const keys = (await listAll(s3, bucket, prefix)).map((o) => o.Key!).filter((k) => k.endsWith('.jsonl'));
  const events: AuditEvent[] = [];
  for (const key of keys) {
    const text = (await getBytes(s3, bucket, key)).toString('utf8');
    for (const line of text.split('\n').filter(Boolean)) events.push(JSON.parse(line) as AuditEvent);
  }
  return events;
}

export async function doneMarkersUnder(s3: S3Client, bucket: string, prefix: string): Promise<ShardDone[]> {
  const keys = (await listAll(s3, bucket, prefix)).map((o) => o.Key!).filter((k) => k.endsWith('.json'));
  return Promise.all(keys.map(async (k) => JSON.parse((await getBytes(s3, bucket, k)).toString()) as ShardDone));
}

/** Counts of each item. */
export function counts(items: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of items) m.set(x, (m.get(x) ?? 0) + 1);
  return m;
}

const WORKER = new URL('../stream/worker-process.ts', import.meta.url).pathname;
export const BIN = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
export const ENDPOINTS = { MLMF_S3_ENDPOINT: S3_ENDPOINT, MLMF_SQS_ENDPOINT: SQS_ENDPOINT };

/** Runs bin/mlm-filter.js; resolves with its exit code and output (a non-zero exit is not an exception here). */
export async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, ...ENDPOINTS };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], { env, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Runs bin/mlm-filter.js and resolves with its stdout; a non-zero exit fails with its stderr. */
export async function cliStdout(args: string[]): Promise<string> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`mlm-filter ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  return r.stdout;
}

export type LogLine = { msg?: string; shard?: string; job?: string } & Record<string, unknown>;

export interface Worker {
  readonly child: ChildProcess;
  readonly lines: LogLine[];
  /** Resolves with the first log line from now on whose msg is `msg`. */
  next(msg: string, timeoutMs?: number): Promise<LogLine>;
  /** Settles once the worker takes jobs (its signal handlers are installed) or has exited. */
  readonly ready: Promise<unknown>;
}

/**
 * A worker process (test/stream/worker-process.ts: the container entry with the fast stand-in scorer,
 * MLMF_TEST_SCORER_DELAY_MS per batch) on the local services, its JSON log lines collected.
 */
export function startWorker(env: Record<string, string>): Worker {
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
    env: { ...process.env, ...ENDPOINTS, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  const waiting: { msg: string; resolve: (l: LogLine) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      return;
    }
    lines.push(line);
    for (const w of waiting.filter((x) => x.msg === line.msg)) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve(line);
    }
  });
  child.stderr!.resume();
  const next = (msg: string, timeoutMs = 60_000) =>
    new Promise<LogLine>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker never logged "${msg}"`)), timeoutMs);
      waiting.push({
        msg,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  const ready = Promise.race([next('worker consuming shard jobs').catch(() => undefined), once(child, 'exit')]);
  return { child, lines, next, ready };
}

export async function kill9(w: Worker): Promise<void> {
  w.child.kill('SIGKILL');
  if (w.child.exitCode === null && w.child.signalCode === null) await once(w.child, 'exit');
}

/** Stops workers with SIGTERM (once they took jobs: before that the signal would kill them) and returns exit codes. */
export async function stopWorkers(workers: readonly Worker[]): Promise<(number | null)[]> {
  await Promise.all(workers.map((w) => w.ready));
  return Promise.all(
    workers.map(async (w) => {
      if (w.child.exitCode !== null || w.child.signalCode !== null) return w.child.exitCode;
      w.child.kill('SIGCONT');
      w.child.kill('SIGTERM');
      return (await once(w.child, 'exit'))[0] as number | null;
    }),
  );
}

/** Sample ids of the curated shards a done marker lists (the published outputs, read through the marker). */
export async function publishedIds(s3: S3Client, bucket: string, done: ShardDone): Promise<string[]> {
  const ids: string[] = [];
  for (const c of done.curated) ids.push(...(await curatedIds(s3, bucket, c.key)).ids);
  return ids;
}

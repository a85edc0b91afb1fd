/**
 * Shared pieces of the backfill tests: input shards (whole, cut off, with a corrupt header or an undecodable image),
 * uploaded to the local S3 server, and readers for a job's outputs (curated shard ids from the tars themselves,
 * reject events, done markers). The services and the stand-in scorer are test/stream/helpers.ts's.
 */
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { ShardDone } from '../../lib/backfill/outputs.ts';
import type { AuditEvent } from '../../lib/sinks/audit-event.ts';
import { ustar, ustarMember } from '../sources/ustar.ts';
import { curatedIds, getBytes, listAll, testPng } from '../stream/helpers.ts';

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
    return [
      [`${key}.png`, image],
      [`${key}.txt`, Buffer.from(`pair ${i} of ${name} score=${i % 2 === 0 ? 90 : 10}`)],
      [`${key}.json`, Buffer.from(JSON.stringify({ source_index: i }))],
    ];
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

/**
 * From `--input` specs to the list of inputs a run reads, each with its format, decided before anything is written:
 * brace lists are expanded, directories and `s3://bucket/prefix/` listed, and every input's first bytes read (a
 * local file, a ranged GET of an S3 object or a URL) to recognise it. An input that is neither a tar shard nor JSONL
 * (gzip-compressed or not) is a usage error naming it; so is one whose bytes contradict `--input-format`.
 */
import { createReadStream } from 'node:fs';
import { readdir, realpath, stat } from 'node:fs/promises';
import { join, resolve as resolvePath } from 'node:path';
import { constants, gunzipSync } from 'node:zlib';
import type { S3Client } from '@aws-sdk/client-s3';
import { listKeys } from '../backfill/s3-io.ts';
import { parseS3Uri, type S3Location } from '../backfill/shard-job.ts';
import { FilterError } from '../types.ts';
import { expandBraces } from './braces.ts';
import type { HttpInputs } from './remote.ts';
import { redactUrl, s3Head } from './remote.ts';
import { HEAD_BYTES, sniff, type Sniffed } from './sniff.ts';

export type InputFormat = 'jsonl' | 'webdataset';

export type InputLocation =
  | { readonly kind: 'stdin' }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 's3'; readonly loc: S3Location }
  | { readonly kind: 'http'; readonly url: string };

/** One input the run reads: its name (what origins and rejects carry), where it is, what it holds. */
export interface InputItem {
  readonly name: string;
  readonly location: InputLocation;
  readonly format: InputFormat;
  readonly gzip: boolean;
}

export interface ResolveContext {
  /** `--input-format`: what stdin and empty inputs are read as, and what every input's bytes must agree with. */
  readonly format?: InputFormat;
  readonly s3: () => S3Client;
  readonly http: () => HttpInputs;
}

/** What a directory holds that is read: tar shards, plain or gzip-compressed. */
const SHARD_NAME = /\.(tar|tar\.gz|tgz)$/i;
/** A name that says tar, for inputs whose bytes are too few to say (empty, or cut inside the first header). */
const TAR_NAME = SHARD_NAME;
/** In an S3 prefix, JSONL files are read too (a prefix is often where a crawler drops its batches). */
const PREFIX_NAME = /\.(tar|tar\.gz|tgz|jsonl|jsonl\.gz)$/i;
/** Inputs whose first bytes are read at once (S3 GETs, URL fetches). */
const SNIFF_CONCURRENCY = 16;

export async function resolveInputs(specs: readonly string[], ctx: ResolveContext): Promise<InputItem[]> {
  const located: { name: string; location: InputLocation }[] = [];
  for (const spec of specs) located.push(...(await locate(spec, ctx)));
  await refuseRepeats(located);
  const items: InputItem[] = new Array(located.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < located.length; i = next++) items[i] = await recognise(located[i]!, ctx);
  };
  await Promise.all(Array.from({ length: Math.min(SNIFF_CONCURRENCY, located.length) }, worker));
  return items;
}

/**
 * An input named twice (`--input a.tar --input a.tar`, overlapping brace lists, a shard and its directory, a
 * symlink to it) would be scored twice and its samples written twice: refused, naming it.
 */
async function refuseRepeats(located: readonly { name: string; location: InputLocation }[]): Promise<void> {
  const seen = new Map<string, string>();
  for (const { name, location } of located) {
    const key = location.kind === 'file' ? await realpath(location.path).catch(() => resolvePath(location.path)) : name;
    const first = seen.get(key);
    if (first !== undefined) {
      const what = name === first ? `input ${name} is given twice` : `inputs ${first} and ${name} are the same`;
      throw new FilterError('bad_usage', `${what}: its samples would be scored and written twice`, { input: name });
    }
    seen.set(key, name);
  }
}

/** One spec's inputs, in order: brace lists expanded, directories and prefixes listed (names sorted). */
async function locate(spec: string, ctx: ResolveContext): Promise<{ name: string; location: InputLocation }[]> {
  if (spec === '-') return [{ name: '-', location: { kind: 'stdin' } }];
  // A local name that exists as written is taken as written, braces and all.
  const names = !/^[a-z][a-z0-9+.-]*:\/\//i.test(spec) && (await exists(spec)) ? [spec] : expandBraces(spec);
  const out: { name: string; location: InputLocation }[] = [];
  for (const name of names) {
    if (/^s3:\/\//i.test(name)) out.push(...(await locateS3(name, ctx)));
    else if (/^https?:\/\//i.test(name)) out.push({ name: redactUrl(name), location: { kind: 'http', url: name } });
    else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(name)) {
      const shown = redactUrl(name);
      throw new FilterError('bad_usage', `--input ${shown}: only local paths, -, s3:// and http(s):// are read`, {
        input: shown,
      });
    } else out.push(...(await locateLocal(name)));
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function locateLocal(path: string) {
  let s;
  try {
    s = await stat(path);
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot read input ${path}: ${(err as Error).message}`, { path });
  }
  // A pipe or device (`<(zcat x.gz)`) would lose the bytes read to recognise it: only stdin is read unlooked-at.
  if (!s.isDirectory() && !s.isFile()) {
    throw new FilterError('input_unreadable', `cannot read input ${path}: not a regular file (pipe it to --input -)`, {
      path,
    });
  }
  if (!s.isDirectory()) return [{ name: path, location: { kind: 'file', path } as const }];
  const names = (await readdir(path)).filter((n) => SHARD_NAME.test(n) && !n.startsWith('.')).sort();
  if (names.length === 0) {
    throw new FilterError('input_unreadable', `no .tar, .tar.gz or .tgz shards in ${path}`, { path });
  }
  return names.map((n) => ({ name: join(path, n), location: { kind: 'file', path: join(path, n) } as const }));
}

/** `s3://bucket/key` is one object; `s3://bucket/prefix/` (or `s3://bucket`) lists the shards under it. */
async function locateS3(uri: string, ctx: ResolveContext) {
  const { bucket, key } = parseS3Uri(uri, '--input', true);
  if (key !== '' && !key.endsWith('/')) return [{ name: uri, location: { kind: 's3', loc: { bucket, key } } as const }];
  let listed;
  try {
    listed = await listKeys(ctx.s3(), bucket, key);
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot list input ${uri}: ${(err as Error).message}`, { uri });
  }
  const keys = listed
    .map((o) => o.key)
    .filter((k) => PREFIX_NAME.test(k))
    .sort();
  if (keys.length === 0) {
    throw new FilterError('input_unreadable', `no .tar, .tar.gz, .tgz, .jsonl or .jsonl.gz objects under ${uri}`, {
      uri,
    });
  }
  return keys.map((k) => ({ name: `s3://${bucket}/${k}`, location: { kind: 's3', loc: { bucket, key: k } } as const }));
}

/** The input's format from its first bytes (and those of its decompressed stream when it is gzip). */
async function recognise(input: { name: string; location: InputLocation }, ctx: ResolveContext): Promise<InputItem> {
  const { name, location } = input;
  // Standard input cannot be looked at without taking it: it is JSONL unless --input-format says otherwise.
  if (location.kind === 'stdin') return { name, location, format: ctx.format ?? 'jsonl', gzip: false };
  const head = await firstBytes(location, ctx);
  let kind = sniff(head);
  const gzip = kind === 'gzip';
  const inner = gzip ? gunzipHead(name, head) : head;
  if (gzip) kind = sniff(inner);
  // Less than a tar header, named as a shard: a shard cut off in its first header, which the tar reader reports.
  if (kind === 'unknown' && inner.length < 512 && TAR_NAME.test(name)) kind = 'tar';
  const format = formatOf(name, kind, gzip, ctx.format);
  return { name, location, format, gzip };
}

function formatOf(name: string, kind: Sniffed, gzip: boolean, wanted: InputFormat | undefined): InputFormat {
  const refuse = (why: string) =>
    new FilterError('unrecognised_input', `input ${name} ${why}`, { input: name, ...(wanted ? { wanted } : {}) });
  if (kind === 'zstd') throw refuse('is zstd-compressed: decompress it first (zstd -d), gzip is read');
  // Inside a gzip, a second gzip would be taken for JSONL below: its bytes, thousands of invalid_record rejects.
  if (kind === 'gzip') throw refuse('is gzip-compressed twice: decompress it once first (gunzip), one gzip is read');
  if (kind === 'unknown') {
    throw refuse(`is neither a tar shard nor JSONL${gzip ? ' inside its gzip' : ''} (its first bytes say neither)`);
  }
  if (kind === 'empty') return wanted ?? (TAR_NAME.test(name) ? 'webdataset' : 'jsonl');
  const found: InputFormat = kind === 'tar' ? 'webdataset' : 'jsonl';
  if (wanted && wanted !== found) throw refuse(`holds ${kind === 'tar' ? 'a tar shard' : 'JSONL'}, not ${wanted}`);
  return found;
}

async function firstBytes(location: InputLocation, ctx: ResolveContext): Promise<Buffer> {
  if (location.kind === 's3') return s3Head(ctx.s3(), location.loc);
  if (location.kind === 'http') return ctx.http().head(location.url);
  if (location.kind !== 'file') return Buffer.alloc(0);
  const parts: Buffer[] = [];
  try {
    for await (const chunk of createReadStream(location.path, { end: HEAD_BYTES - 1 })) parts.push(chunk as Buffer);
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot read input ${location.path}: ${(err as Error).message}`, {
      path: location.path,
    });
  }
  return Buffer.concat(parts);
}

/** The start of a gzip stream from its first compressed bytes (a sync flush: a cut-off stream gives what it has). */
function gunzipHead(name: string, head: Buffer): Buffer {
  try {
    return gunzipSync(head, { finishFlush: constants.Z_SYNC_FLUSH });
  } catch (err) {
    throw new FilterError('unrecognised_input', `input ${name} starts as gzip but is not: ${(err as Error).message}`, {
      input: name,
    });
  }
}

import { createReadStream } from 'node:fs';
import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import sharp from 'sharp';
import { AUDIT_LINE_MAX_BYTES } from '../formats/audit-event.ts';
import { decodeCuratedSample } from '../formats/curated-sample.ts';
import { boundedLines, isBlank } from '../formats/lines.ts';
import { curatedFileKind, openRegular, readIndex, rebuildIndex } from '../sinks/local-curated.ts';
import type { ShardIndex } from '../sinks/webdataset.ts';
import { tailTopics } from '../monitor/kafka-tail.ts';
import type { KafkaConnectionOptions } from '../kafka/client.ts';
import { FilterError } from '../types.ts';
import { parseReportEvent, reportEventOf, ReportCollector, type ReportData, type ReportSample } from './collect.ts';
import { renderReportHtml } from './html.ts';

/** Where the report reads from. */
export type ReportInput =
  /** `mlm-filter filter --out DIR`: DIR/rejects.jsonl and DIR/curated/*.tar with their .index.json. */
  | { readonly kind: 'dir'; readonly path: string }
  /** A JSONL file of audit events (e.g. rejects.jsonl alone). */
  | { readonly kind: 'jsonl'; readonly path: string }
  /** An audit topic (and optionally the accepted topic), read from `from` up to the end offsets at start. */
  | {
      readonly kind: 'kafka';
      readonly connection: KafkaConnectionOptions;
      readonly topic: string;
      readonly acceptedTopic?: string;
      readonly from?: number | 'earliest';
    };

export interface ReportOptions {
  readonly input: ReportInput;
  /** Output HTML file. */
  readonly out: string;
  readonly title?: string;
  /** Samples per decision in the gallery. Default 24. */
  readonly samples?: number;
  /** Thumbnail longest side, px. Default 160. */
  readonly thumbnailSize?: number;
  readonly signal?: AbortSignal;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Audit events, one a line; a line over AUDIT_LINE_MAX_BYTES is counted as malformed without being held whole. */
async function readJsonl(path: string, collector: ReportCollector): Promise<void> {
  let over = 0;
  for await (const line of boundedLines(createReadStream(path, { highWaterMark: 1 << 20 }), AUDIT_LINE_MAX_BYTES)) {
    if (line.size > AUDIT_LINE_MAX_BYTES) {
      over++;
      collector.malformed();
      continue;
    }
    if (isBlank(line.bytes)) continue;
    const e = parseReportEvent(line.bytes);
    if (e) collector.add(e);
    else collector.malformed();
  }
  if (over > 0) {
    collector.notes.push(
      `${over} line(s) of ${basename(path)} over ${AUDIT_LINE_MAX_BYTES / 2 ** 20} MiB were not read (counted as ` +
        'malformed): no audit event is that long.',
    );
  }
}

/**
 * A shard's index, checked against its tar: one whose members lie outside the tar (or that is missing or unreadable)
 * is rebuilt in memory from the tar, with a note; a tar that does not read back whole either is a coded error.
 */
async function shardIndex(dir: string, shard: string, tarBytes: number, collector: ReportCollector) {
  const found = await readIndex(join(dir, `${shard}.index.json`), tarBytes);
  if (found !== undefined && typeof found !== 'string') return found;
  const rebuilt = await rebuildIndex(join(dir, `${shard}.tar`), shard);
  const problem = found ?? 'it is missing';
  if (!rebuilt) {
    throw new FilterError(
      'input_unreadable',
      `${join(dir, `${shard}.index.json`)}: ${problem}, and ${shard}.tar does not read back whole`,
      { shard },
    );
  }
  collector.notes.push(`${shard}.index.json was not used (${problem}): its samples were read from ${shard}.tar.`);
  return rebuilt;
}

/** Reads every accepted sample's `<key>.json` through the shard index (random access, no tar scan). */
async function readCurated(dir: string, collector: ReportCollector): Promise<number> {
  const names = (await readdir(dir)).filter((n) => curatedFileKind(n) === 'tar').sort();
  for (const name of names) {
    const tar = join(dir, name);
    const fh = await openRegular(tar).catch((err: Error) => {
      throw new FilterError('input_unreadable', `cannot read ${tar}: ${err.message}`, { path: tar });
    });
    try {
      const index: ShardIndex = await shardIndex(dir, name.slice(0, -'.tar'.length), (await fh.stat()).size, collector);
      for (const s of index.samples) {
        // indexProblem() checked every member against the tar's size and the .json one against its bound.
        const json = s.members.json!;
        const buf = Buffer.alloc(json.size);
        await fh.read(buf, 0, json.size, json.offset);
        const meta = decodeCuratedSample(buf);
        if (!meta.ok) {
          collector.malformed();
          continue;
        }
        const e = reportEventOf({ ...meta.value, decision: 'accept', reasons: [] });
        const ext = ['jpg', 'png', 'webp'].find((x) => s.members[x]);
        if (ext) e.image = { tar, offset: s.members[ext]!.offset, size: s.members[ext]!.size, ext };
        collector.add(e);
      }
    } finally {
      await fh.close();
    }
  }
  return names.length;
}

/** Largest image member made into a thumbnail (bigger ones are shown without). */
const THUMBNAIL_SOURCE_MAX_BYTES = 64 * 1024 * 1024;

async function thumbnail(sample: ReportSample, size: number): Promise<string | undefined> {
  if (!sample.image || sample.image.size > THUMBNAIL_SOURCE_MAX_BYTES) return undefined;
  const fh = await open(sample.image.tar, 'r');
  try {
    const buf = Buffer.alloc(sample.image.size);
    await fh.read(buf, 0, buf.length, sample.image.offset);
    const out = await sharp(buf, { failOn: 'none' })
      .rotate()
      .resize(size, size, { fit: 'inside', withoutEnlargement: true })
      .webp({ quality: 70 })
      .toBuffer();
    return `data:image/webp;base64,${out.toString('base64')}`;
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

/** Collects the numbers of a report from its input (without writing anything). */
export async function collectReport(options: ReportOptions): Promise<ReportData> {
  const collector = new ReportCollector({ samples: options.samples });
  const input = options.input;
  let label: string;
  if (input.kind === 'dir') {
    label = input.path;
    const rejects = join(input.path, 'rejects.jsonl');
    const curated = join(input.path, 'curated');
    const hasRejects = await exists(rejects);
    const hasCurated = await exists(curated);
    if (!hasRejects && !hasCurated) {
      throw new FilterError('input_unreadable', `${input.path} has neither rejects.jsonl nor curated/`, {
        path: input.path,
      });
    }
    if (hasRejects) await readJsonl(rejects, collector);
    else collector.notes.push('No rejects.jsonl: rejected pairs are not shown.');
    if (hasCurated) {
      collector.sawAcceptSource = true;
      await readCurated(curated, collector);
    } else collector.notes.push('No curated/ directory: accepted pairs are not shown.');
  } else if (input.kind === 'jsonl') {
    label = input.path;
    if (!(await exists(input.path)))
      throw new FilterError('input_unreadable', `cannot read ${input.path}`, { path: input.path });
    await readJsonl(input.path, collector);
    if (basename(input.path) === 'rejects.jsonl') {
      collector.notes.push('Only rejects.jsonl was read: accepted pairs are not shown (pass --input DIR for both).');
    }
  } else {
    label = `kafka ${input.topic}${input.acceptedTopic ? ` + ${input.acceptedTopic}` : ''}`;
    if (input.acceptedTopic) collector.sawAcceptSource = true;
    const topics = [{ topic: input.topic, kind: 'audit' as 'audit' | 'accepted' }];
    if (input.acceptedTopic) topics.push({ topic: input.acceptedTopic, kind: 'accepted' });
    const result = await tailTopics({
      connection: input.connection,
      topics,
      from: input.from ?? 'earliest',
      untilEnd: true,
      signal: options.signal,
      onMessage: (m) => {
        const e = m.value ? parseReportEvent(m.value, m.kind, m.key) : null;
        if (!e) return collector.malformed();
        // With the accepted topic read too, it is the one source of accepts: an audit topic that also logs accepts
        // would repeat them, possibly further apart than the dedupe window remembers.
        if (input.acceptedTopic && m.kind === 'audit' && e.decision === 'accept') return;
        if (e.ts === undefined && Number.isFinite(m.timestamp)) e.ts = m.timestamp;
        collector.add(e);
      },
    });
    if (!result.complete) collector.notes.push('The topic read ended before every partition reached its end offset.');
  }
  const data = collector.data(options.title ?? 'MLM filter report', label);
  const size = options.thumbnailSize ?? 160;
  for (const s of data.samples.accepted) s.thumbnail = await thumbnail(s, size);
  return data;
}

/** Builds the report and writes the single self-contained HTML file; returns the data it shows. */
export async function writeReport(options: ReportOptions): Promise<ReportData> {
  const data = await collectReport(options);
  try {
    await writeFile(options.out, renderReportHtml(data));
  } catch (err) {
    throw new FilterError('output_unwritable', `cannot write ${options.out}: ${(err as Error).message}`, {
      out: options.out,
    });
  }
  return data;
}

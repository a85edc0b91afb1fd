/**
 * `<out>/pairs.parquet`: one row per pair a `mlm-filter filter` run decided (kept or rejected), the table a data team
 * loads into pandas, pyarrow, DuckDB or Spark to study a pool's filtering: ids, url, caption, where each came from,
 * the four scores and their expected values, the decision and its reason codes.
 *
 * Written with hyparquet-writer: pure JavaScript (~1 MB, one dependency, no native binary and no WebAssembly), MIT,
 * released monthly, fine on Node 20 and 22, and it writes row group by row group, so the table never sits whole in
 * memory. The alternatives: Apache Arrow JS + parquet-wasm is two packages and ~20 MB with a WebAssembly module, and
 * parquet-wasm writes a whole Arrow table at once; DuckDB's Node API brings a ~60 MB native database engine per
 * platform to write one file; @dsnp/parquetjs requires Node >= 24.
 *
 * The file appears whole or not at all: rows go to `pairs.parquet.tmp-<pid>` and it is renamed once the footer is
 * written and synced. A stopped run leaves no table (its temp file is removed by the next run on the same --out).
 */
import { constants } from 'node:fs';
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ByteWriter, ParquetWriter, type SchemaElement } from 'hyparquet-writer';
import { METRICS, type MetricShort, type Outcome } from '../types.ts';
import { auditSource, type AuditEvent, type AuditSource } from '../formats/audit-event.ts';
import type { CuratedSampleMeta } from '../formats/curated-sample.ts';
import { datacompUid } from './uid-list.ts';

export const PAIRS_TABLE = 'pairs.parquet';

/** Rows per row group: large enough to compress well, small enough to bound memory (~10-50 MB). */
const ROW_GROUP_ROWS = 32_768;

type Nullable<T> = T | null;
const SHORT: readonly MetricShort[] = METRICS.map((m) => m.short);
type MetricColumns = Record<MetricShort | `expected_${MetricShort}`, number | null>;
type LooseScores = Partial<Record<MetricShort, number | null>>;

/** One row of the table. */
export type PairRow = {
  id: string;
  /** The DataComp uid (32 hex digits) when the record's metadata carries one. */
  uid: Nullable<string>;
  url: Nullable<string>;
  caption: Nullable<string>;
  /** The input file or shard the pair was read from. */
  input: Nullable<string>;
  /** WebDataset input: the sample's key in its shard. */
  key: Nullable<string>;
  /** JSONL input: the line number. */
  line: Nullable<number>;
  decision: 'accept' | 'reject';
  /** Reason codes (`below_threshold`, `fetch_failed`, ...); empty for a kept pair. */
  reasons: string[];
} & MetricColumns;

const str = (name: string, nullable = true): SchemaElement => ({
  name,
  type: 'BYTE_ARRAY',
  converted_type: 'UTF8',
  repetition_type: nullable ? 'OPTIONAL' : 'REQUIRED',
});
const f64 = (name: string): SchemaElement => ({ name, type: 'DOUBLE', repetition_type: 'OPTIONAL' });

const LEAF_COLUMNS: SchemaElement[] = [
  str('id', false),
  str('uid'),
  str('url'),
  str('caption'),
  str('input'),
  str('key'),
  { name: 'line', type: 'INT64', repetition_type: 'OPTIONAL' },
  ...SHORT.map((m) => f64(m)),
  ...SHORT.map((m) => f64(`expected_${m}`)),
  str('decision', false),
];

/** The table's schema: the columns above, then `reasons` as a standard three-level LIST of strings. */
const SCHEMA: SchemaElement[] = [
  { name: 'root', num_children: LEAF_COLUMNS.length + 1 },
  ...LEAF_COLUMNS,
  { name: 'reasons', repetition_type: 'REQUIRED', converted_type: 'LIST', num_children: 1 },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  str('element', false),
];
const COLUMN_NAMES = [...LEAF_COLUMNS.map((c) => c.name), 'reasons'] as (keyof PairRow)[];

function metricColumns(scores: LooseScores | null | undefined, expected: LooseScores | null | undefined) {
  const row = {} as MetricColumns;
  for (const m of SHORT) {
    row[m] = scores?.[m] ?? null;
    row[`expected_${m}`] = expected?.[m] ?? null;
  }
  return row;
}

function where(source: AuditSource): Pick<PairRow, 'input' | 'key' | 'line'> {
  if (source.kind === 'webdataset') return { input: source.path, key: source.key, line: null };
  if (source.kind === 'file') return { input: source.path, key: null, line: source.line };
  return { input: null, key: null, line: null };
}

export function rowOfOutcome(o: Outcome): PairRow {
  return {
    id: o.id,
    uid: datacompUid(o.pair?.metadata) ?? null,
    url: o.pair?.url ?? null,
    caption: o.pair?.caption ?? null,
    ...where(auditSource(o.record.origin)),
    ...metricColumns(o.scores, o.expected),
    decision: o.decision,
    reasons: o.reasons.map((r) => r.code),
  };
}

/** A kept pair a previous run wrote (--resume): its curated `.json` holds everything the row needs. */
export function rowOfCurated(meta: CuratedSampleMeta): PairRow {
  return {
    id: meta.id,
    uid: datacompUid(meta.metadata) ?? null,
    url: meta.url,
    caption: meta.caption,
    ...where(meta.source),
    ...metricColumns(meta.scores, meta.expected_scores),
    decision: 'accept',
    reasons: [],
  };
}

/** A rejected pair a previous run wrote (--resume): the audit event has no expected scores nor metadata (null). */
export function rowOfAuditEvent(event: AuditEvent): PairRow {
  return {
    id: event.id,
    uid: null,
    url: event.url ?? null,
    caption: event.caption ?? null,
    ...where(event.source),
    ...metricColumns(event.scores, null),
    decision: event.decision,
    reasons: event.reasons.map((r) => r.code),
  };
}

/** hyparquet-writer's byte writer, drained into our file after each row group instead of growing in memory. */
class FileByteWriter extends ByteWriter {
  constructor(private readonly fh: FileHandle) {
    super(1 << 20);
  }

  private drain(): Promise<void> {
    const chunk = Buffer.from(this.getBytes());
    this.index = 0;
    return this.fh.write(chunk).then(() => undefined);
  }

  flush(): Promise<void> {
    return this.drain();
  }

  override finish(): Promise<void> {
    return this.drain();
  }
}

/** The table being written: rows are buffered up to a row group, encoded and appended in order. */
export class PairsTable {
  private rows: PairRow[] = [];
  private chain: Promise<void> = Promise.resolve();
  private failed: unknown;
  private written = 0;

  private constructor(
    private readonly path: string,
    private readonly tmp: string,
    private readonly fh: FileHandle,
    private readonly writer: ParquetWriter,
  ) {}

  /**
   * Starts `<dir>/pairs.parquet`. A table or temp file a previous run left is removed first: a table describes the
   * whole output only once a run has finished with it (--resume carries the earlier rows over and writes it again).
   */
  static async open(dir: string): Promise<PairsTable> {
    for (const name of await readdir(dir)) {
      if (name === PAIRS_TABLE || name.startsWith(`${PAIRS_TABLE}.tmp-`)) await unlink(join(dir, name));
    }
    const path = join(dir, PAIRS_TABLE);
    const tmp = `${path}.tmp-${process.pid}`;
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fh = await open(tmp, flags, 0o666);
    const writer = new ParquetWriter({
      writer: new FileByteWriter(fh),
      schema: SCHEMA,
      createdBy: 'mlm-filter-stream (hyparquet-writer)',
    });
    return new PairsTable(path, tmp, fh, writer);
  }

  /** Rows added so far. */
  get count(): number {
    return this.written + this.rows.length;
  }

  add(row: PairRow): void {
    this.rows.push(row);
    if (this.rows.length >= ROW_GROUP_ROWS) this.writeGroup();
  }

  private writeGroup(): void {
    const rows = this.rows;
    this.rows = [];
    this.written += rows.length;
    const columnData = COLUMN_NAMES.map((name) => ({
      name,
      // INT64 columns take bigints.
      data: rows.map((r) => (name === 'line' && r.line !== null ? BigInt(r.line) : r[name])),
    }));
    this.chain = this.chain
      .then(() => this.writer.write({ columnData, rowGroupSize: rows.length }))
      .catch((err: unknown) => {
        this.failed ??= err;
      });
  }

  /** Writes the last row group and the footer, syncs, and renames the table into place; returns its row count. */
  async close(): Promise<number> {
    try {
      if (this.rows.length > 0) this.writeGroup();
      await this.chain;
      if (this.failed) throw this.failed;
      await this.writer.finish();
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
    await rename(this.tmp, this.path);
    return this.written;
  }

  /** Drops the table (a run that failed or was cut short writes none). */
  async discard(): Promise<void> {
    await this.chain;
    await this.fh.close().catch(() => undefined);
    await unlink(this.tmp).catch(() => undefined);
  }
}

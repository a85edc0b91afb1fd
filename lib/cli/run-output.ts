/**
 * The --out directory of `mlm-filter filter` across runs. A run starts in an empty directory; --overwrite first
 * removes a previous run's files; --resume continues the run the directory holds: what a stopped run left
 * half-written is completed or discarded, input records whose ids the output already holds are skipped, and the
 * summary counts the whole output. Every input record thus ends in the output exactly once, however often a run was
 * stopped (kill -9 included) and resumed on the same input.
 */
import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { parseRecord, rawRecordId, type PairOptions } from '../pair/index.ts';
import { LocalAuditSink } from '../sinks/local-audit.ts';
import { curatedFileKind, LocalCuratedSink } from '../sinks/local-curated.ts';
import type { ByteAdmission, Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, RejectError } from '../types.ts';
import { SummaryCollector } from '../metrics/run-summary.ts';
import { LOCK_ENTRY } from './out-lock.ts';

/** What a run writes at the top of --out (summary.json's temp file included), and what each must be. */
function topKind(name: string): 'shards' | 'file' | undefined {
  if (name === 'curated' || name === '.staging') return 'shards';
  return /^(rejects\.jsonl|(summary\.json|pairs\.parquet|kept_uids\.npy)(\.tmp-\d+)?)$/.test(name) ? 'file' : undefined;
}

export interface OutputChoice {
  /** Continue the run the directory holds. */
  readonly resume?: boolean;
  /** Remove the previous run's files first. */
  readonly overwrite?: boolean;
  /** The run is a --top-fraction run (its cutoff ranks the whole run: it cannot be resumed). */
  readonly topFraction?: boolean;
}

/** What a resumed run continues from. */
export interface PreviousOutput {
  /** Ids of every record the output holds (curated samples and audit events). */
  readonly ids: ReadonlySet<string>;
  /** Their counts, for a summary of the whole output. */
  readonly summary: SummaryCollector;
}

/** Readies the directory once the run is sure to start; resolves what a resumed run continues from. */
export type OutputPreparation = () => Promise<PreviousOutput | undefined>;

/** --out as a previous run left it, by lstat (nothing followed). Paths are relative to --out. */
interface Layout {
  /** Every entry at the top (the lock's own files left out). */
  readonly entries: string[];
  /** Regular files with names a run writes: what --overwrite removes. */
  readonly files: string[];
  /** curated/ and .staging/ when they are real directories. */
  readonly dirs: string[];
  /** Names no run writes. */
  readonly foreign: string[];
  /** Symlinks, and entries of the wrong type (a directory named rejects.jsonl), with what they are. */
  readonly unsafe: string[];
}

const what = (s: { isSymbolicLink(): boolean; isDirectory(): boolean }) =>
  s.isSymbolicLink() ? 'a symlink' : s.isDirectory() ? 'a directory' : 'not a regular file';

async function scanOutput(out: string): Promise<Layout> {
  const layout: Layout = { entries: [], files: [], dirs: [], foreign: [], unsafe: [] };
  try {
    layout.entries.push(...(await readdir(out)).filter((e) => !LOCK_ENTRY.test(e)).sort());
    for (const name of layout.entries) {
      const kind = topKind(name);
      if (!kind) {
        layout.foreign.push(name);
        continue;
      }
      const st = await lstat(join(out, name));
      if (kind === 'file') {
        if (st.isFile()) layout.files.push(name);
        else layout.unsafe.push(`${name} (${what(st)})`);
        continue;
      }
      if (!st.isDirectory() || st.isSymbolicLink()) {
        layout.unsafe.push(`${name} (${st.isSymbolicLink() ? 'a symlink' : 'not a directory'})`);
        continue;
      }
      layout.dirs.push(name);
      for (const inner of (await readdir(join(out, name))).sort()) {
        const rel = `${name}/${inner}`;
        if (!curatedFileKind(inner)) {
          layout.foreign.push(rel);
          continue;
        }
        const s = await lstat(join(out, rel));
        if (s.isFile()) layout.files.push(rel);
        else layout.unsafe.push(`${rel} (${what(s)})`);
      }
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && layout.entries.length === 0) return layout;
    throw new FilterError('output_unwritable', `cannot read --out ${out}: ${(err as Error).message}`, { out });
  }
  return layout;
}

const listed = (names: string[]) => names.slice(0, 5).join(', ') + (names.length > 5 ? `, ... (${names.length})` : '');

/** Refuses a directory in which a run would follow a symlink out of --out, or write over something else. */
function refuseUnsafe(out: string, layout: Layout, flag: string): void {
  if (layout.unsafe.length === 0) return;
  throw new FilterError(
    'output_unsafe',
    `--out ${out} holds ${listed(layout.unsafe)} where a run writes: ${flag} follows no symlink and removes no ` +
      'directory it did not write, so move them away or choose another --out',
    { out, unsafe: layout.unsafe },
  );
}

function refuseForeign(out: string, layout: Layout): void {
  if (layout.foreign.length === 0) return;
  throw new FilterError(
    'output_not_empty',
    `--out ${out} holds files a run does not write (${listed(layout.foreign)}): --overwrite removes only a run's ` +
      'own files, so move them away or choose another --out',
    { out, foreign: layout.foreign },
  );
}

/** Removes a run's files, then its directories (which are then empty, or the removal fails: nothing else goes). */
async function removeRun(out: string, layout: Layout): Promise<void> {
  try {
    for (const rel of layout.files) await unlink(join(out, rel));
    for (const dir of layout.dirs) await rmdir(join(out, dir));
  } catch (err) {
    throw new FilterError(
      'output_unwritable',
      `--overwrite cannot remove the run in ${out}: ${(err as Error).message}`,
      {
        out,
      },
    );
  }
}

/**
 * Checks --out against the choice before anything heavy loads (a usage error costs nothing), and returns the step
 * that readies it, run once the model has loaded (a run that fails to start leaves the directory untouched). The
 * caller holds --out's lock (out-lock.ts), so no other run changes it in between; the step checks it again all the
 * same, as another process may have.
 */
export async function checkOutput(out: string, choice: OutputChoice): Promise<OutputPreparation> {
  if (choice.resume && choice.overwrite) {
    throw new FilterError('bad_usage', 'give --resume or --overwrite, not both', { out });
  }
  const layout = await scanOutput(out);
  if (layout.entries.length === 0) return async () => undefined;
  if (!choice.resume && !choice.overwrite) {
    throw new FilterError(
      'output_not_empty',
      `--out ${out} is not empty (${listed(layout.entries)}): add --resume to continue the run it holds (records ` +
        'already there are skipped) or --overwrite to replace it',
      { out },
    );
  }
  if (choice.overwrite) {
    refuseUnsafe(out, layout, '--overwrite');
    refuseForeign(out, layout);
    return async () => {
      const now = await scanOutput(out);
      refuseUnsafe(out, now, '--overwrite');
      refuseForeign(out, now);
      await removeRun(out, now);
      return undefined;
    };
  }
  checkResumable(out, layout, choice);
  return async () => {
    const now = await scanOutput(out);
    checkResumable(out, now, choice);
    return readPrevious(out, now);
  };
}

function checkResumable(out: string, layout: Layout, choice: OutputChoice): void {
  refuseUnsafe(out, layout, '--resume');
  if (choice.topFraction || layout.entries.includes('.staging')) {
    const which = choice.topFraction ? 'a --top-fraction run' : `the unfinished --top-fraction run in ${out}`;
    throw new FilterError(
      'bad_usage',
      `--resume cannot continue ${which} (its cutoff ranks the whole run): use --overwrite`,
      {
        out,
      },
    );
  }
  // Files of the user's own beside the run's are left alone; inside curated/ they would pass for (or hide) shards.
  const inside = layout.foreign.filter((f) => f.includes('/'));
  if (inside.length > 0) {
    throw new FilterError(
      'output_unresumable',
      `--resume cannot continue ${out}: curated/ holds files a run does not write (${listed(inside)}); move them ` +
        'away (--overwrite starts over)',
      { out, foreign: inside },
    );
  }
}

/** Repairs what a stopped run left half-written and reads back every record the output holds. */
async function readPrevious(out: string, layout: Layout): Promise<PreviousOutput> {
  const ids = new Set<string>();
  const summary = new SummaryCollector();
  try {
    await LocalCuratedSink.recover(join(out, 'curated'), (sample) => {
      ids.add(sample.id);
      summary.add({ decision: 'accept', reasons: [], scores: sample.scores });
    });
    await LocalAuditSink.recover(join(out, 'rejects.jsonl'), (event) => {
      ids.add(event.id);
      summary.add(event);
    });
  } catch (err) {
    throw new FilterError(
      'output_unresumable',
      `--resume cannot read back ${out}: ${(err as Error).message} (--overwrite starts over)`,
      { out },
    );
  }
  // summary.json describes the output only once a run has finished with it; this run writes it again when it ends.
  for (const name of layout.files.filter((e) => /^summary\.json(\.tmp-\d+)?$/.test(e))) {
    await unlink(join(out, name)).catch(() => undefined);
  }
  return { ids, summary };
}

/** The id the pipeline gives a record: its pair's, or for a record that does not parse, the one of its bytes. */
function recordId(record: SourceRecord, pair?: PairOptions): string {
  try {
    return parseRecord(record, pair).id;
  } catch (err) {
    if (err instanceof RejectError) return rawRecordId(record);
    throw err;
  }
}

/** The input minus the records whose ids the output already holds (--resume). */
export class ResumedSource implements Source {
  /** Records skipped so far. */
  skipped = 0;

  constructor(
    private readonly input: Source,
    private readonly done: ReadonlySet<string>,
    private readonly pair?: PairOptions,
  ) {}

  get sizeHint(): number | undefined {
    return this.input.sizeHint;
  }

  async *batches(signal: AbortSignal, admission?: ByteAdmission): AsyncIterable<SourceBatch> {
    for await (const batch of this.input.batches(signal, admission)) {
      const records = batch.records.filter((r) => !this.done.has(recordId(r, this.pair)));
      this.skipped += batch.records.length - records.length;
      // A batch left empty is not handed on: the inputs a run can resume (files, stdin) have nothing to commit.
      if (records.length === batch.records.length) yield batch;
      else if (records.length > 0) yield { ...batch, records };
      else admission?.unreserve(batch.bytes ?? 0);
    }
  }

  close(): Promise<void> {
    return this.input.close();
  }
}

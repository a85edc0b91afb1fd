/**
 * The --out directory of `mlm-filter filter` across runs. A run starts in an empty directory; --overwrite first
 * removes a previous run's files; --resume continues the run the directory holds: what a stopped run left
 * half-written is completed or discarded, input records whose ids the output already holds are skipped, and the
 * summary counts the whole output. Every input record thus ends in the output exactly once, however often a run was
 * stopped (kill -9 included) and resumed on the same input.
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseRecord, rawRecordId, type PairOptions } from '../pair/index.ts';
import { LocalAuditSink } from '../sinks/local-audit.ts';
import { LocalCuratedSink } from '../sinks/local-curated.ts';
import type { ByteAdmission, Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, RejectError } from '../types.ts';
import { SummaryCollector } from '../metrics/run-summary.ts';

/** What a run writes in --out (summary.json's temp file included): --overwrite removes these and nothing else. */
const RUN_ENTRY = /^(curated|rejects\.jsonl|summary\.json(\.tmp-\d+)?|\.staging)$/;

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

async function entriesOf(out: string): Promise<string[]> {
  try {
    return await readdir(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new FilterError('output_unwritable', `cannot read --out ${out}: ${(err as Error).message}`, { out });
  }
}

const listed = (names: string[]) => names.slice(0, 3).join(', ') + (names.length > 3 ? ', ...' : '');

/**
 * Checks --out against the choice before anything heavy loads (a usage error costs nothing), and returns the step
 * that readies it, run once the model has loaded (a run that fails to start leaves the directory untouched).
 */
export async function checkOutput(out: string, choice: OutputChoice): Promise<OutputPreparation> {
  if (choice.resume && choice.overwrite) {
    throw new FilterError('bad_usage', 'give --resume or --overwrite, not both', { out });
  }
  const entries = await entriesOf(out);
  if (entries.length === 0) return async () => undefined;
  if (choice.overwrite) {
    const foreign = entries.filter((e) => !RUN_ENTRY.test(e));
    if (foreign.length > 0) {
      throw new FilterError(
        'output_not_empty',
        `--out ${out} holds files a run does not write (${listed(foreign)}): --overwrite removes only a run's own ` +
          'files, so choose another --out',
        { out, foreign },
      );
    }
    return async () => {
      await Promise.all(entries.map((e) => rm(join(out, e), { recursive: true, force: true })));
      return undefined;
    };
  }
  if (!choice.resume) {
    throw new FilterError(
      'output_not_empty',
      `--out ${out} is not empty (${listed(entries)}): add --resume to continue the run it holds (records already ` +
        'there are skipped) or --overwrite to replace it',
      { out },
    );
  }
  if (choice.topFraction || entries.includes('.staging')) {
    const which = choice.topFraction ? 'a --top-fraction run' : `the unfinished --top-fraction run in ${out}`;
    throw new FilterError(
      'bad_usage',
      `--resume cannot continue ${which} (its cutoff ranks the whole run): use --overwrite`,
      {
        out,
      },
    );
  }
  return () => readPrevious(out, entries);
}

/** Repairs what a stopped run left half-written and reads back every record the output holds. */
async function readPrevious(out: string, entries: string[]): Promise<PreviousOutput> {
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
  for (const name of entries.filter((e) => /^summary\.json(\.tmp-\d+)?$/.test(e))) {
    await rm(join(out, name), { force: true });
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

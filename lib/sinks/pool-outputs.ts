/**
 * The files beside the curated shards that a pool's users read: `pairs.parquet` (every pair decided, kept or not)
 * and `kept_uids.npy` (DataComp's subset file of the kept uids, written when the records carry DataComp uids). Fed
 * the same outcomes as the run's summary, so their counts are summary.json's. Both are written when the run ends,
 * whole or not at all; a resumed run first carries over the pairs the output already holds.
 */
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Outcome } from '../types.ts';
import { LocalAuditSink } from './local-audit.ts';
import { LocalCuratedSink } from './local-curated.ts';
import { PairsTable, rowOfAuditEvent, rowOfCurated, rowOfOutcome } from './parquet-table.ts';
import { datacompUid, UidList } from './uid-list.ts';

export const KEPT_UIDS = 'kept_uids.npy';

export interface PoolOutputOptions {
  /** Write pairs.parquet. Default true. */
  readonly parquet?: boolean;
  /** The run continues an output (--resume): its pairs are read back into the table and the uid list first. */
  readonly resumed?: boolean;
}

/** What summary.json says about the pool outputs. */
export interface PoolOutputsSummary {
  pairsTable?: { file: string; rows: number };
  keptUids?: { file: string; uids: number; keptWithoutUid: number };
}

export class PoolOutputs {
  private readonly uids = new UidList();
  /** Decided pairs that carried a DataComp uid, kept or not: the input is a DataComp pool. */
  private sawUids = 0;
  private keptWithoutUid = 0;

  private constructor(
    private readonly out: string,
    private readonly table: PairsTable | undefined,
  ) {}

  /** Opens the outputs in `out` (locked and readied by the caller); a previous run's are removed first. */
  static async open(out: string, options: PoolOutputOptions = {}): Promise<PoolOutputs> {
    for (const name of await readdir(out)) {
      if (name === KEPT_UIDS || name.startsWith(`${KEPT_UIDS}.tmp-`)) await unlink(join(out, name));
    }
    const table = options.parquet === false ? undefined : await PairsTable.open(out);
    const outputs = new PoolOutputs(out, table);
    if (options.resumed) await outputs.carryOver();
    return outputs;
  }

  /** The output's pairs as the resumed run found them (recover() has already repaired what a stop left). */
  private async carryOver(): Promise<void> {
    await LocalCuratedSink.recover(join(this.out, 'curated'), (meta) => {
      this.table?.add(rowOfCurated(meta));
      this.keep(datacompUid(meta.metadata));
    });
    await LocalAuditSink.recover(join(this.out, 'rejects.jsonl'), (event) => {
      this.table?.add(rowOfAuditEvent(event));
      if (event.decision === 'accept') this.keep(undefined);
    });
  }

  private keep(uid: string | undefined): void {
    if (uid) {
      this.sawUids++;
      this.uids.add(uid);
    } else this.keptWithoutUid++;
  }

  /** A pair decided for good (what the summary counts). */
  add(o: Outcome): void {
    this.table?.add(rowOfOutcome(o));
    const uid = datacompUid(o.pair?.metadata);
    if (o.decision === 'accept') this.keep(uid);
    else if (uid) this.sawUids++;
  }

  /** Writes the files; what they hold, for summary.json. */
  async close(note: (message: string) => void): Promise<PoolOutputsSummary> {
    const summary: PoolOutputsSummary = {};
    if (this.table) summary.pairsTable = { file: 'pairs.parquet', rows: await this.table.close() };
    if (this.sawUids > 0) {
      const uids = await this.uids.write(join(this.out, KEPT_UIDS));
      summary.keptUids = { file: KEPT_UIDS, uids, keptWithoutUid: this.keptWithoutUid };
      if (this.keptWithoutUid > 0) {
        note(`${KEPT_UIDS}: ${this.keptWithoutUid} kept pairs carry no DataComp uid and are not in the list`);
      }
    }
    return summary;
  }

  /** A run that failed or was cut short writes neither file. */
  async discard(): Promise<void> {
    await this.table?.discard();
  }
}

/**
 * Test doubles for pipeline unit tests only: a scorer that derives scores from the caption (so tests can aim at
 * accept / reject), an intake that skips the network. The real intake and the real ONNX scorer have their own tests.
 */
import { createHash } from 'node:crypto';
import type {
  Committer,
  ImageRef,
  PreparedImage,
  Scorer,
  ScoreInput,
  ScoreResult,
  Source,
  SourceBatch,
  SourceRecord,
} from '../../lib/types.ts';
import { RejectError } from '../../lib/types.ts';

/** Caption `score=NN` gives NN on every metric; `fail` makes the scorer throw for that pair; else a hash-derived score. */
export class CaptionScorer implements Scorer {
  readonly model = { name: 'caption-scorer', revision: 'test' };
  readonly preprocess = {
    size: 4,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
    rescale: 1 / 255,
    padToSquare: true,
    centerCrop: false,
    resample: 'bicubic',
  } as const;
  readonly metrics = ['itm', 'odf', 'ctq', 'su'] as const;
  calls: number[] = [];
  broken = false;
  constructor(
    readonly maxBatch = 4,
    readonly delayMs = 0,
  ) {}

  async score(batch: readonly ScoreInput[]): Promise<ScoreResult[]> {
    this.calls.push(batch.length);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.broken) throw new Error('device lost');
    if (batch.some((b) => b.caption.includes('fail'))) throw new Error('poison input');
    return batch.map((b) => {
      const m = /score=(\d+)/.exec(b.caption);
      const s = m ? Number(m[1]) : createHash('sha256').update(b.caption).digest()[0]! % 101;
      return { scores: { itm: s, odf: s, ctq: s, su: s } };
    });
  }
  async close() {}
}

/** Intake without network: base64 images pass, url images with host `bad.test` fail with fetch_failed 404. */
export class FakeIntake {
  prepared = 0;
  async prepare(image: ImageRef): Promise<PreparedImage> {
    if (image.kind === 'url' && image.url.includes('bad.test')) {
      throw new RejectError({
        code: 'fetch_failed',
        message: 'HTTP 404',
        detail: { kind: 'http_status', status: 404 },
      });
    }
    this.prepared++;
    return {
      encoded: Buffer.from('img'),
      ext: 'jpg',
      width: 4,
      height: 4,
      pixelValues: new Float32Array(48),
      shape: [3, 4, 4],
    };
  }
}

/** A source over in-memory records that records commits (and releases) and their order. */
export class ArraySource implements Source {
  acked: number[] = [];
  released: number[] = [];
  private readonly index = new WeakMap<SourceBatch, number>();
  readonly committer: Committer = {
    kind: 'none',
    commit: async (batch) => void this.acked.push(this.index.get(batch)!),
    release: async (batch) => void this.released.push(this.index.get(batch)!),
  };
  constructor(
    private readonly records: SourceRecord[],
    private readonly batchSize = 3,
    private readonly revoke?: (batchIndex: number) => AbortSignal | undefined,
  ) {}
  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    for (let i = 0, b = 0; i < this.records.length; i += this.batchSize, b++) {
      if (signal.aborted) return;
      const batch: SourceBatch = {
        records: this.records.slice(i, i + this.batchSize),
        committer: this.committer,
        revoked: this.revoke?.(b),
      };
      this.index.set(batch, b);
      yield batch;
    }
  }
  async close() {}
}

export const jsonRecord = (obj: unknown, line = 0): SourceRecord => ({
  raw: typeof obj === 'string' ? obj : JSON.stringify(obj),
  origin: { kind: 'file', path: 'mem', line },
});

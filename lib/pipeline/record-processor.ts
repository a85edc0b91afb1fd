import { parseRecord, rawRecordId, type PairOptions } from '../pair/index.ts';
import type { Policy } from '../policy/index.ts';
import type { ImageRef, Outcome, Pair, PreparedImage, Reason, ScoreResult, SourceRecord } from '../types.ts';
import { PoisonInputError, RejectError } from '../errors.ts';
import type { ScoreBatcher } from './batcher.ts';
import type { Logger } from '../support/logger.ts';
import { Semaphore } from './semaphore.ts';
import { RetryPolicy } from '../support/retry.ts';
import type { ScoreCache } from '../cache/score-cache.ts';
import type { ImageDedupe } from '../cache/dedupe.ts';

/** The image stage as the pipeline sees it (lib/intake's Intake implements it). */
export interface ImageIntake {
  /** Throws RejectError for a bad image; any other error is treated as transient for that record. */
  prepare(image: ImageRef, signal?: AbortSignal): Promise<PreparedImage>;
  /** Takes back an image's pixel tensor once the scorer is done with it (reuse spares V8 full GCs). Optional. */
  release?(image: PreparedImage): void;
}

export interface RecordProcessorOptions {
  readonly intake: ImageIntake;
  readonly batcher: ScoreBatcher;
  readonly policy: Policy;
  readonly pair?: PairOptions;
  /** Images fetched and decoded at once. */
  readonly intakeConcurrency: number;
  /** Decoded images (pixel tensors) held at once, waiting for or in the scorer. */
  readonly maxPreparedImages: number;
  /** Attempts for an image whose intake failed with a non-reject (unexpected) error. */
  readonly intakeAttempts: number;
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  /** Scores stored by earlier pairs and runs: a hit is not sent to the scorer (lib/cache). Default none. */
  readonly scoreCache?: ScoreCache;
  /**
   * Rejects a pair whose image an accepted pair already had (`duplicate_image`, lib/cache/dedupe.ts): checked before
   * the score cache and the scorer, recorded once the policy accepts. Default none.
   */
  readonly imageDedupe?: ImageDedupe;
  readonly logger: Logger;
}

/** A pair's scores, and where they were first computed when they came from the score cache. */
type Scored = ScoreResult & { readonly cached?: Outcome['cached'] };

/** Registers a pair id with the run's duplicate memory: false when it was seen before (BatchEntry.claim). */
export type ClaimId = (id: string) => boolean;

const reject = (record: SourceRecord, id: string, reason: Reason, pair?: Pair): Outcome => ({
  record,
  id,
  pair,
  decision: 'reject',
  reasons: [reason],
  scores: {},
});

const isReason = (value: object): value is Reason => 'code' in value;

/**
 * One record from raw bytes to its outcome: pair -> duplicate check -> intake -> scorer -> policy. Every failure that
 * belongs to the record becomes a reject with its reason; only failures of the tool (a broken scorer, a stop) throw.
 */
export class RecordProcessor {
  private readonly intakeSlots: Semaphore;
  private readonly preparedSlots: Semaphore;
  /** Any intake error but a reject may be transient for the record: tried again 200 ms later, then 400... */
  private readonly intakeRetry: RetryPolicy;

  constructor(private readonly options: RecordProcessorOptions) {
    this.intakeRetry = new RetryPolicy({ maxAttempts: options.intakeAttempts, baseMs: 200, retriable: () => true });
    this.intakeSlots = new Semaphore(options.intakeConcurrency);
    this.preparedSlots = new Semaphore(options.maxPreparedImages);
  }

  async process(record: SourceRecord, claim: ClaimId, signal: AbortSignal): Promise<Outcome> {
    let pair: Pair;
    try {
      pair = parseRecord(record, this.options.pair);
    } catch (err) {
      if (err instanceof RejectError) return reject(record, rawRecordId(record), err.reason);
      throw err;
    }
    if (!claim(pair.id)) {
      const message = `pair id ${pair.id} was already seen in this run`;
      return reject(record, pair.id, { code: 'duplicate', message }, pair);
    }
    await this.preparedSlots.acquire(1, signal);
    try {
      const intakeStart = performance.now();
      const image = await this.prepare(pair, signal);
      if (isReason(image)) return reject(record, pair.id, image, pair);
      const scoreStart = performance.now();
      this.options.onStage?.('intake', scoreStart - intakeStart);
      const { imageDedupe } = this.options;
      if (!imageDedupe) {
        const result = await this.score(record, pair, image, true);
        if (isReason(result)) return reject(record, pair.id, result, pair);
        this.options.onStage?.('score', performance.now() - scoreStart);
        return this.decide(record, pair, image, result);
      }
      return await this.scoreOnce(imageDedupe, record, pair, image, scoreStart);
    } finally {
      this.preparedSlots.release();
    }
  }

  /** The prepared image, or the reject reason. Unexpected (non-reject) errors are retried, then `intake_failed`. */
  private async prepare(pair: Pair, signal: AbortSignal): Promise<PreparedImage | Reason> {
    const { intake, logger } = this.options;
    let attempts = 0;
    const once = async (attempt: number): Promise<PreparedImage | Reason> => {
      attempts = attempt;
      await this.intakeSlots.acquire(1, signal);
      try {
        return await intake.prepare(pair.image, signal);
      } catch (err) {
        if (err instanceof RejectError) return err.reason;
        throw err;
      } finally {
        this.intakeSlots.release();
      }
    };
    try {
      return await this.intakeRetry.run(once, {
        signal,
        onRetry: ({ attempt, error }) =>
          logger.warn('intake error, retrying', { id: pair.id, attempt, error: String(error) }),
      });
    } catch (err) {
      if (signal.aborted) throw err;
      // Not the image's fault as far as anyone can tell: say so, rather than pass it off as a fetch failure.
      const message = `intake failed ${attempts} times: ${String(err)}`;
      return { code: 'intake_failed', message, detail: { attempts } };
    }
  }

  /**
   * The image dedupe's path: a duplicate is rejected before the score cache and the scorer; an accepted pair's image
   * is recorded, and the pair turned into a `duplicate_image` reject when another pair recorded the image first. The
   * tensor is kept until then (the exact digest is computed from it), and freed once scoring has settled.
   */
  private async scoreOnce(
    dedupe: ImageDedupe,
    record: SourceRecord,
    pair: Pair,
    image: PreparedImage,
    scoreStart: number,
  ): Promise<Outcome> {
    const { intake } = this.options;
    const who = { id: pair.id, origin: record.origin };
    const duplicate = await dedupe.check(image, who);
    if (duplicate) {
      intake.release?.(image);
      return reject(record, pair.id, duplicate, pair);
    }
    // A throw here (a scorer failure) leaves the tensor unreleased, as score() does: a batch may still hold it.
    const result = await this.score(record, pair, image, false);
    try {
      if (isReason(result)) return reject(record, pair.id, result, pair);
      this.options.onStage?.('score', performance.now() - scoreStart);
      const outcome = this.decide(record, pair, image, result);
      if (outcome.decision !== 'accept') return outcome;
      const first = await dedupe.recordAccepted(image, who);
      if (!first) return outcome;
      const { image: _stored, ...scored } = outcome;
      return { ...scored, decision: 'reject', reasons: [first] };
    } finally {
      intake.release?.(image);
    }
  }

  /**
   * The scores (the score cache's, else the scorer's), or the reject reason (a poison pair, an unscorable caption).
   * Frees the pixel tensor when `release`. A cache entry is written only after the scorer answered: never for a pair
   * not scored.
   */
  private async score(
    record: SourceRecord,
    pair: Pair,
    image: PreparedImage,
    release: boolean,
  ): Promise<Scored | Reason> {
    const { scoreCache } = this.options;
    const key = scoreCache?.key(image.encoded, pair.caption);
    const hit = key === undefined ? undefined : await scoreCache!.lookup(key);
    if (hit) {
      if (release) this.options.intake.release?.(image);
      if (hit.result.unscorable) return { ...hit.result.unscorable, detail: { field: 'caption' } };
      return { ...hit.result, cached: { first: hit.first } };
    }
    try {
      const result = await this.scoreMiss(pair, image, release);
      if (key !== undefined && !isReason(result)) {
        await scoreCache!.remember(key, result, { id: pair.id, source: record.origin });
      }
      if (isReason(result)) return result;
      if (result.unscorable) return { ...result.unscorable, detail: { field: 'caption' } };
      return result;
    } finally {
      // Pairs of this run waiting on the key take the stored scores (or score it themselves when none were).
      if (key !== undefined) scoreCache!.settle(key);
    }
  }

  /** The scorer's result for a pair, or `scoring_failed` for a poison pair. Frees the pixel tensor when `release`. */
  private async scoreMiss(pair: Pair, image: PreparedImage, release: boolean): Promise<ScoreResult | Reason> {
    const { batcher, intake } = this.options;
    let result: ScoreResult;
    try {
      result = await batcher.score({ id: pair.id, caption: pair.caption, pixelValues: image.pixelValues });
    } catch (err) {
      // Only a settled poison verdict frees the tensor: after other errors a batch may still hold it.
      if (!(err instanceof PoisonInputError)) throw err;
      if (release) intake.release?.(image);
      return { code: 'scoring_failed', message: err.message };
    }
    // The scorer copied the tensor when it posted it to its worker: it can be reused now.
    if (release) intake.release?.(image);
    return result;
  }

  private decide(record: SourceRecord, pair: Pair, image: PreparedImage, result: Scored): Outcome {
    const verdict = this.options.policy.decide(result.scores);
    return {
      record,
      id: pair.id,
      pair,
      decision: verdict.decision,
      reasons: verdict.reasons,
      scores: result.scores,
      ...(result.expected ? { expected: result.expected } : {}),
      ...(result.captionCut ? { captionCut: result.captionCut } : {}),
      ...(result.cached ? { cached: result.cached } : {}),
      image: { encoded: image.encoded, ext: image.ext, width: image.width, height: image.height },
    };
  }
}

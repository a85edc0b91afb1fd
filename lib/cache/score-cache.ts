/**
 * The score cache as the pipeline uses it: a pair's stored scores by key (lib/cache/key.ts), else the scorer's,
 * stored after scoring. Only scores are cached: a hit never rejects or drops a pair (no dedupe policy here), and an
 * entry is written only once its scores exist, so a crash before the outcome is committed leaves an entry that a
 * replay simply hits.
 */
import { isRetriable } from '../errors.ts';
import type { ScoreResult, SourceOrigin } from '../types.ts';
import { scoreKey, scopeDigest, type ScoreCacheScope } from './key.ts';
import type { FirstOccurrence, ScoreStore } from './store.ts';

export interface ScoreCacheCounts {
  hits: number;
  misses: number;
}

export interface CachedScore {
  readonly result: ScoreResult;
  readonly first: FirstOccurrence;
}

/** A key being scored in this process: pairs that look it up meanwhile wait for its scores instead of scoring it. */
interface Flight {
  readonly done: Promise<CachedScore | undefined>;
  readonly settle: (entry: CachedScore | undefined) => void;
  stored?: CachedScore;
}

export class ScoreCache {
  private readonly scope: string;
  readonly counts: ScoreCacheCounts = { hits: 0, misses: 0 };
  /**
   * Store requests that failed past the store's own retries (score_cache_failed: throttling, an outage). A cache is an
   * optimisation: such a lookup counts as a miss and such a write is skipped, so the pair is scored and decided as
   * without a cache, instead of failing the run (a worker would crash-loop for as long as DynamoDB is down). Errors
   * that are not retriable (an unusable store) still throw.
   */
  storeFailures = 0;
  private readonly flights = new Map<string, Flight>();

  constructor(
    private readonly store: ScoreStore,
    scope: ScoreCacheScope,
  ) {
    this.scope = scopeDigest(scope);
  }

  key(imageBytes: Buffer, caption: string): string {
    return scoreKey(this.scope, imageBytes, caption);
  }

  /**
   * The stored scores for `key`, counted as a hit; undefined (a miss) when there are none. A key another pair of
   * this process is being scored for waits for those scores (a crawl repeats pairs within the pipeline's window too).
   * A miss makes the caller the key's scorer: it must call `settle(key)` once it has remembered the scores or given
   * up, whatever happens.
   */
  async lookup(key: string): Promise<CachedScore | undefined> {
    const flight = this.flights.get(key);
    if (flight) {
      const shared = await flight.done;
      if (shared) this.counts.hits++;
      // The pair it waited for was not scored (a poison verdict, a stop): this one goes to the store, else the scorer.
      return shared ?? this.lookup(key);
    }
    let settle!: Flight['settle'];
    const done = new Promise<CachedScore | undefined>((resolve) => (settle = resolve));
    this.flights.set(key, { done, settle });
    let entry: CachedScore | undefined;
    try {
      entry = await this.store.get(key);
    } catch (err) {
      this.settle(key);
      if (!isRetriable(err)) throw err;
      this.storeFailures++;
      this.counts.misses++;
      return undefined;
    }
    if (entry) {
      this.counts.hits++;
      this.flights.get(key)!.stored = entry;
      this.settle(key);
    } else this.counts.misses++;
    return entry;
  }

  /** Stores freshly computed scores under `key` with the pair they were computed for. */
  async remember(key: string, result: ScoreResult, first: { id: string; source: SourceOrigin }): Promise<void> {
    const entry = { result, first: { ...first, at: new Date().toISOString() } };
    try {
      await this.store.putIfAbsent(key, entry);
    } catch (err) {
      if (!isRetriable(err)) throw err;
      this.storeFailures++;
      return;
    }
    const flight = this.flights.get(key);
    if (flight) flight.stored = entry;
  }

  /** Ends a miss's flight: the pairs waiting on `key` take what `remember` stored, or look again when nothing was. */
  settle(key: string): void {
    const flight = this.flights.get(key);
    if (!flight) return;
    this.flights.delete(key);
    flight.settle(flight.stored);
  }

  /** Scores not stored because the store is at its size bound (--score-cache-max-gb). */
  get notStored(): number {
    return this.store.notStored ?? 0;
  }

  close(): Promise<void> {
    return this.store.close();
  }
}

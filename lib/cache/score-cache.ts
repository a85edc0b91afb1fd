/**
 * The score cache as the pipeline uses it: a pair's stored scores by key (lib/cache/key.ts), else the scorer's,
 * stored after scoring. Only scores are cached: a hit never rejects or drops a pair (no dedupe policy here), and an
 * entry is written only once its scores exist, so a crash before the outcome is committed leaves an entry that a
 * replay simply hits.
 */
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

export class ScoreCache {
  private readonly scope: string;
  readonly counts: ScoreCacheCounts = { hits: 0, misses: 0 };

  constructor(
    private readonly store: ScoreStore,
    scope: ScoreCacheScope,
  ) {
    this.scope = scopeDigest(scope);
  }

  key(imageBytes: Buffer, caption: string): string {
    return scoreKey(this.scope, imageBytes, caption);
  }

  /** The stored scores for `key`, counted as a hit; undefined (a miss) when there are none. */
  async lookup(key: string): Promise<CachedScore | undefined> {
    const entry = await this.store.get(key);
    if (entry) this.counts.hits++;
    else this.counts.misses++;
    return entry;
  }

  /** Stores freshly computed scores under `key` with the pair they were computed for. */
  async remember(key: string, result: ScoreResult, first: { id: string; source: SourceOrigin }): Promise<void> {
    await this.store.putIfAbsent(key, { result, first: { ...first, at: new Date().toISOString() } });
  }

  close(): Promise<void> {
    return this.store.close();
  }
}

/**
 * The worker's score cache (MLMF_SCORE_CACHE_TABLE): a ScoreCache over the fleet's DynamoDB store, keyed for the
 * loaded scorer. The pair stream and the shard jobs share one. The table is opened before the model is loaded, so a
 * missing table fails the worker's start (score_cache_unusable) in a second, not after minutes of model download.
 */
import { ImageDedupe } from '../cache/dedupe.ts';
import { DynamoStore } from '../cache/dynamo-store.ts';
import { scopeOfModel, type ScoreCacheScope } from '../cache/key.ts';
import { ScoreCache } from '../cache/score-cache.ts';
import type { Scorer } from '../types.ts';
import type { WorkerConfig } from './config.ts';

/** The configured table, checked; undefined without MLMF_SCORE_CACHE_TABLE. */
export async function openScoreStore(config: WorkerConfig): Promise<DynamoStore | undefined> {
  if (!config.scoreCacheTable) return undefined;
  return DynamoStore.open({
    table: config.scoreCacheTable,
    ttlDays: config.scoreCacheTtlDays,
    // A hung request fails and is retried instead of holding a record (and its batch's commit) forever.
    aws: { region: config.region, endpoint: config.dynamodbEndpoint, requestTimeoutMs: 10_000 },
  });
}

/** The cache over `store`, keyed for `scorer` (closing the cache closes the store). */
export async function scoreCacheFor(store: DynamoStore, scorer: Scorer): Promise<ScoreCache> {
  return new ScoreCache(store, await scopeOf(scorer));
}

/**
 * The image dedupe over `store` (MLMF_DEDUPE_IMAGES), for the scorer's preprocessing; undefined when off. Every worker
 * and shard job of the fleet remembers accepted images in the one table, so a copy is caught across workers.
 */
export function imageDedupeFor(config: WorkerConfig, store: DynamoStore, scorer: Scorer): ImageDedupe | undefined {
  const setting = config.dedupeImages;
  if (!setting || setting.mode === 'off') return undefined;
  const maxDistance = setting.mode === 'near' ? setting.distance : undefined;
  return new ImageDedupe(store, {
    mode: setting.mode,
    ...(maxDistance !== undefined ? { maxDistance } : {}),
    spec: scorer.preprocess,
  });
}

/**
 * The MLM scorer's scope comes from its model directory (revision, prompts); an injected scorer (tests, benchmarks)
 * has none, and its model name and revision alone stand for it.
 */
async function scopeOf(scorer: Scorer): Promise<ScoreCacheScope> {
  const modelDir = (scorer as { modelDir?: unknown }).modelDir;
  if (typeof modelDir === 'string') return scopeOfModel(modelDir, scorer.model, scorer.metrics);
  return { model: scorer.model, prompt: 'injected scorer', metrics: scorer.metrics };
}

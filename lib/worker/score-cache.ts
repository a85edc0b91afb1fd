/**
 * The worker's score cache (MLMF_SCORE_CACHE_TABLE): a ScoreCache over the fleet's DynamoDB store, keyed for the
 * loaded scorer. The pair stream and the shard jobs share one. A missing table fails the worker's start with
 * score_cache_unusable, before anything is consumed.
 */
import { DynamoStore } from '../cache/dynamo-store.ts';
import { scopeOfModel, type ScoreCacheScope } from '../cache/key.ts';
import { ScoreCache } from '../cache/score-cache.ts';
import type { Scorer } from '../types.ts';
import type { WorkerConfig } from './config.ts';

export async function openWorkerScoreCache(config: WorkerConfig, scorer: Scorer): Promise<ScoreCache | undefined> {
  if (!config.scoreCacheTable) return undefined;
  const store = await DynamoStore.open({
    table: config.scoreCacheTable,
    ttlDays: config.scoreCacheTtlDays,
    // A hung request fails and is retried instead of holding a record (and its batch's commit) forever.
    aws: { region: config.region, endpoint: config.dynamodbEndpoint, requestTimeoutMs: 10_000 },
  });
  try {
    return new ScoreCache(store, await scopeOf(scorer));
  } catch (err) {
    await store.close();
    throw err;
  }
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

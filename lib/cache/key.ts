/**
 * The score cache's key: what a stored score depends on, digested. Two pairs share a key exactly when the scorer
 * would be given the same image bytes, the same caption, the same model (name and revision), the same prompts and
 * the same metric set; a change of any of them gives another key, so a model or prompt change never hits an old entry.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { MetricShort, ModelInfo } from '../types.ts';

/** Everything a key holds besides the pair itself: fixed for one loaded scorer. */
export interface ScoreCacheScope {
  readonly model: ModelInfo;
  /** The conversation format and prompt texts the scorer builds its inputs from (mlm_filter.json). */
  readonly prompt: string;
  readonly metrics: readonly MetricShort[];
}

const sha256 = (...parts: readonly (string | Buffer)[]): string => {
  const hash = createHash('sha256');
  // Each part is length-prefixed: ("ab", "c") and ("a", "bc") must not collide.
  for (const part of parts) {
    const bytes = typeof part === 'string' ? Buffer.from(part, 'utf8') : part;
    hash.update(`${bytes.length}:`).update(bytes);
  }
  return hash.digest('hex');
};

/** The scope's own digest, computed once per run and folded into every key. */
export function scopeDigest(scope: ScoreCacheScope): string {
  const metrics = [...new Set(scope.metrics)].sort();
  return sha256('mlmf-score-cache/1', scope.model.name, scope.model.revision, scope.prompt, metrics.join(','));
}

/**
 * The key of one pair under a scope digest. The image is digested as encoded bytes (as read, or intake's
 * deterministic re-encoding of a format it does not keep), not as decoded pixels: hashing bytes costs one pass over
 * data already in memory and needs no decode to trust, and it can never call two different images equal. A digest of
 * the decoded pixels would also match one image served in two encodings (a PNG and its lossless WebP, a JPEG
 * re-saved with other metadata); it belongs with the image dedupe of the next piece, which decodes anyway.
 */
export function scoreKey(scope: string, imageBytes: Buffer, caption: string): string {
  return sha256(scope, imageBytes, caption);
}

/**
 * The scope of a model directory's scorer. The model's revision comes from mlm_filter.json; an export that names
 * none ('unknown') is identified by a digest of its ONNX files instead (read once per run), so two unnamed exports
 * never share entries.
 */
export async function scopeOfModel(
  modelDir: string,
  model: ModelInfo,
  metrics: readonly MetricShort[],
): Promise<ScoreCacheScope> {
  const mlm = JSON.parse(await readFile(join(modelDir, 'mlm_filter.json'), 'utf8')) as Record<string, unknown>;
  const prompt = JSON.stringify({
    format: mlm.conversation_format ?? mlm.conv_mode ?? mlm.format ?? null,
    prompts: mlm.prompts ?? null,
  });
  const revision = model.revision === 'unknown' ? `files:${await exportDigest(modelDir)}` : model.revision;
  return { model: { name: model.name, revision }, prompt, metrics };
}

async function exportDigest(modelDir: string): Promise<string> {
  const onnx = join(modelDir, 'onnx');
  const names = (await readdir(onnx)).filter((n) => n.endsWith('.onnx') || n.endsWith('.onnx_data')).sort();
  const hash = createHash('sha256');
  for (const name of names) hash.update(name).update(await readFile(join(onnx, name)));
  return hash.digest('hex');
}

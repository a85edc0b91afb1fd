/**
 * The reference's decoding settings, reproduced in reference mode.
 *
 * The reference (MLM_Filter's v2 script) calls `model.generate(ids, images=..., do_sample=False, max_new_tokens=n)`;
 * transformers then applies the checkpoint's generation_config.json (Qwen2.5 ships repetition_penalty 1.1 and eos
 * [<|im_end|>, <|endoftext|>]). LLaVA's generate splices the image and hands transformers only `inputs_embeds`, so
 * transformers' `input_ids` (the history the RepetitionPenaltyLogitsProcessor reads) starts EMPTY: the 1st new token
 * is the plain argmax; before the 2nd, the 1st token's logit is divided by the penalty (multiplied when negative) in
 * float32, then the argmax (lowest id on ties). Sampling settings (temperature, top_p, top_k) do nothing under
 * do_sample=False. Checked against transformers 4.51.2 (generation/utils.py `_maybe_initialize_input_ids_for_generation`
 * returns an empty [B, 0] tensor when only inputs_embeds is given; logits_process.py's processor gathers, rescales and
 * scatters exactly the ids of that history).
 *
 * The scoring graph returns, at every readout row, the raw logits of the readout tokens and the TOP_K largest raw
 * logits with their ids (tools/export/scorer_graph.py); a row's history is the candidate chain that leads to it, so
 * the penalised argmax is among the history's tokens and the best token outside it, which the top-K hold whenever
 * the history is shorter than K.
 *
 * Default mode reads the model's own distribution: no penalty (a penalty is a decoding choice, not the model's
 * opinion, and the expected score is defined on the distribution).
 */
import { FilterError } from '../types.ts';

/** What the export recorded from the checkpoint's generation config (mlm_filter.json `generation`). */
export interface GenerationSettings {
  /** 1 = none. Applied in reference mode when the reference generates more than one token. */
  readonly repetitionPenalty: number;
  /** The ids the reference's generate stops at; undefined when the export did not record them (older exports). */
  readonly eosTokenIds: readonly number[] | undefined;
  /** New tokens the reference generates (mlm_filter.json `max_new_tokens_in_reference`; 2 when absent). */
  readonly maxNewTokens: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isIdList = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0);

/** Reads mlm_filter.json's generation settings; exports made before they were recorded give penalty 1. */
export function generationSettings(mlm: Record<string, unknown>, dir = ''): GenerationSettings {
  const gen = isObject(mlm.generation) ? mlm.generation : {};
  const penalty = gen.repetition_penalty ?? 1;
  if (typeof penalty !== 'number' || !(penalty > 0) || !Number.isFinite(penalty)) {
    throw new FilterError(
      'model_invalid',
      `mlm_filter.json generation.repetition_penalty must be > 0, got ${penalty}`,
      {
        dir,
      },
    );
  }
  const max = mlm.max_new_tokens_in_reference;
  return {
    repetitionPenalty: penalty,
    eosTokenIds: isIdList(gen.eos_token_ids) ? gen.eos_token_ids : undefined,
    maxNewTokens: typeof max === 'number' && Number.isInteger(max) && max > 0 ? max : 2,
  };
}

/** The penalty reference mode applies: none when the reference generates one token (nothing generated before it). */
export function referencePenalty(settings: GenerationSettings): number {
  return settings.maxNewTokens > 1 ? settings.repetitionPenalty : 1;
}

/** transformers' rescaling of one logit, in float32 as torch computes it: where(x < 0, x * p, x / p). */
export function penalise(logit: number, penalty: number): number {
  const p = Math.fround(penalty);
  return Math.fround(logit < 0 ? logit * p : logit / p);
}

/** The scoring graph's raw-logit outputs of one batch. */
export interface RawLogits {
  /** [rows, K]: raw logits of readout_token_ids. */
  readonly tokenLogits: Float32Array;
  /** [rows, topK]: the largest raw logits, descending, and their ids. */
  readonly topLogits: Float32Array;
  readonly topIds: BigInt64Array;
  readonly topK: number;
  /** Token id -> column in tokenLogits. */
  readonly readoutIndex: ReadonlyMap<number, number>;
}

/**
 * The greedy token at `row` after the tokens of `history` were penalised, as transformers' greedy step picks it:
 * the largest processed logit, the lowest id on ties.
 */
export function penalisedArgmax(raw: RawLogits, row: number, history: readonly number[], penalty: number): number {
  const seen = new Set(history);
  const k = raw.readoutIndex.size;
  let bestId = -1;
  let best = -Infinity;
  const consider = (id: number, value: number) => {
    if (value > best || (value === best && id < bestId)) {
      best = value;
      bestId = id;
    }
  };
  // The largest logit outside the history: the first top-K entry not in it (top-K is the global order).
  let outside = false;
  for (let j = 0; j < raw.topK && !outside; j++) {
    const id = Number(raw.topIds[row * raw.topK + j]);
    if (seen.has(id)) continue;
    consider(id, raw.topLogits[row * raw.topK + j] as number);
    outside = true;
  }
  if (!outside) {
    throw new FilterError(
      'model_invalid',
      `the scoring graph's top-${raw.topK} logits are all penalised tokens: re-export it (tools/export)`,
      { row, topK: raw.topK },
    );
  }
  for (const id of seen) {
    const col = raw.readoutIndex.get(id);
    if (col === undefined) {
      throw new FilterError('scorer_failed', `penalised argmax: token ${id} is not a readout token`, { row, id });
    }
    consider(id, penalise(raw.tokenLogits[row * k + col] as number, penalty));
  }
  return bestId;
}

/**
 * The greedy token of every readout row under the penalty, for one batch: `histories[i]` is the history of a
 * metric's i-th readout row (the prompt row: empty; a chain token's row: the chain up to and including it), repeated
 * over every metric block of `rowsPerPair` rows.
 */
export function penalisedTops(
  raw: RawLogits,
  rows: number,
  histories: readonly (readonly number[])[],
  penalty: number,
): BigInt64Array {
  const out = new BigInt64Array(rows);
  for (let row = 0; row < rows; row++) {
    out[row] = BigInt(penalisedArgmax(raw, row, histories[row % histories.length] as number[], penalty));
  }
  return out;
}

/** Each readout row's history for one metric block: [] for the prompt row, then every prefix of every chain. */
export function chainHistories(chains: readonly (readonly number[])[]): number[][] {
  const out: number[][] = [[]];
  for (const chain of chains) for (let j = 1; j <= chain.length; j++) out.push(chain.slice(0, j));
  return out;
}

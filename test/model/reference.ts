/**
 * The committed tiny fixtures' PyTorch reference (test/fixtures/models/NAME/reference.json): per (image, caption,
 * metric) the prompt, input ids, the digit distributions of every first digit's own continuation, the exact expected
 * score and the greedy / 2-token scores; loaded with the pixel tensors and grouped into the scorer's pairs. Shared
 * by the parity tests and bench/scorer/ep-check.ts.
 */
import { readFileSync } from 'node:fs';
import type { MetricKey } from '../../lib/types.ts';

export interface RefCase {
  image: number;
  caption: string;
  metric: MetricKey;
  prompt: string;
  input_ids: number[];
  greedy_tokens: number[];
  greedy_score: number | null;
  reference_2tok_score: number | null;
  /** transformers' generate with the fixture's generation settings (repetition penalty, eos), as the reference. */
  reference_generate_tokens: number[];
  reference_generate_score: number | null;
  /** P(first token = digit d). */
  q: number[];
  /** r[d][e] = P(next = digit e) after the prompt + digit d, run alone. */
  r: number[][];
  /** P("0") after the prompt + "1","0". */
  t: number;
  /** The exact expected score over 0..100 from q, r, t. */
  expected: number | null;
  /** The greedy number read along the argmax tokens. */
  greedy_integer: number | null;
}
export interface Reference {
  format: string;
  generation: { repetition_penalty: number; eos_token_ids: number[] };
  images: { file: string; pixel_values: string }[];
  cases: RefCase[];
}

/** The fixture NAME's reference, its pixel tensors and its cases grouped by pair (first-seen order). */
export function loadReference(name: string) {
  const dir = new URL(`../fixtures/models/${name}/`, import.meta.url).pathname;
  const ref = JSON.parse(readFileSync(`${dir}reference.json`, 'utf8')) as Reference;
  const pixels = ref.images.map((im) => {
    const buf = readFileSync(`${dir}${im.pixel_values}`);
    return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
  });
  // Pairs in first-seen order; each pair carries the cases of its metrics.
  const pairs: { image: number; caption: string; cases: RefCase[] }[] = [];
  for (const c of ref.cases) {
    let p = pairs.find((x) => x.image === c.image && x.caption === c.caption);
    if (!p) pairs.push((p = { image: c.image, caption: c.caption, cases: [] }));
    p.cases.push(c);
  }
  const inputs = pairs.map((p) => ({ caption: p.caption, pixelValues: pixels[p.image] as Float32Array }));
  return { dir, ref, pairs, inputs };
}

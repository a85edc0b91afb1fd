/**
 * The packed layout of the scoring graph (tools/export/scorer_graph.py): one sequence per pair,
 *
 *   [prefix: system, image, caption] [metric suffix 1][candidate chains 1] ... [metric suffix k][candidate chains k]
 *
 * with, per position, a branch id (-1 pad, 0 prefix, m >= 1 the m-th metric) and a chain id (0 prefix/suffix, c >= 1
 * the c-th candidate chain). The graph builds the tree attention mask from those two ids: every metric's suffix sees
 * the prefix and itself, every candidate chain its branch's prefix and suffix and itself. Position ids continue from
 * the prefix in every branch and from the suffix in every chain, so each branch computes what its full prompt alone
 * would: no KV cache ever leaves the graph.
 *
 * Candidate chains are token sequences appended after every metric prompt (the digits, "1","0" for 100...). The
 * readout rows of a metric are its prompt's last position then every chain token, in chain order.
 */
import { FilterError } from '../types.ts';
import { IMAGE_PLACEHOLDER_ID } from './tokens.ts';

/** One pair's prompts, one per metric, each with one IMAGE_PLACEHOLDER_ID at the image slot. */
export interface PairPrompts {
  readonly prompts: readonly (readonly number[])[];
}

export interface PackedBatch {
  readonly batch: number;
  /** Padded sequence length. */
  readonly length: number;
  readonly inputIds: BigInt64Array;
  readonly positionIds: BigInt64Array;
  readonly branchIds: BigInt64Array;
  readonly chainIds: BigInt64Array;
  /** [batch, rows]: per pair, per metric: the prompt's last position, then each chain token's position. */
  readonly readoutPositions: BigInt64Array;
  readonly readoutRows: number;
  /** Real (unpadded) positions per pair. */
  readonly realLengths: readonly number[];
}

/** Writes small integers into a BigInt64Array through an Int32 view (little-endian): no BigInt per element. */
class Int64Writer {
  private readonly view: Int32Array;
  constructor(readonly array: BigInt64Array) {
    this.view = new Int32Array(array.buffer, array.byteOffset, array.length * 2);
  }
  set(i: number, v: number): void {
    this.view[2 * i] = v;
    this.view[2 * i + 1] = v < 0 ? -1 : 0;
  }
  fill(from: number, to: number, v: number): void {
    for (let i = from; i < to; i++) this.set(i, v);
  }
}

/**
 * Length of the shared prefix of a pair's prompts, in expanded positions, where one placeholder stands for
 * `imageTokens` positions; it stops at least one token short of every prompt so that each branch has a last position.
 */
function sharedPrefix(prompts: readonly (readonly number[])[]): number {
  const first = prompts[0] ?? [];
  let n = Math.min(...prompts.map((p) => p.length - 1));
  for (const p of prompts) {
    let i = 0;
    while (i < n && p[i] === first[i]) i++;
    n = i;
  }
  return n;
}

function expandedLength(ids: readonly number[], from: number, to: number, imageTokens: number): number {
  let n = 0;
  for (let i = from; i < to; i++) n += ids[i] === IMAGE_PLACEHOLDER_ID ? imageTokens : 1;
  return n;
}

interface PairLayout {
  readonly prefix: number;
  readonly total: number;
}

function layoutOf(prompts: readonly (readonly number[])[], chainTokens: number, imageTokens: number): PairLayout {
  const prefix = sharedPrefix(prompts);
  const first = prompts[0] ?? [];
  let total = expandedLength(first, 0, prefix, imageTokens);
  for (const p of prompts) total += expandedLength(p, prefix, p.length, imageTokens) + chainTokens;
  return { prefix, total };
}

/**
 * Packs a batch of pairs (each with the same number of metric prompts) and the candidate chains appended after every
 * prompt. Pairs are right-padded to the longest.
 */
export function packBatch(
  pairs: readonly PairPrompts[],
  chains: readonly (readonly number[])[],
  imageTokens: number,
): PackedBatch {
  const metrics = pairs[0]?.prompts.length ?? 0;
  if (metrics === 0 || pairs.some((p) => p.prompts.length !== metrics)) {
    throw new FilterError('scorer_failed', 'every pair of a batch needs the same metric prompts', { metrics });
  }
  const chainTokens = chains.reduce((a, c) => a + c.length, 0);
  const layouts = pairs.map((p) => layoutOf(p.prompts, chainTokens, imageTokens));
  const length = Math.max(...layouts.map((l) => l.total));
  const b = pairs.length;
  const rowsPerMetric = 1 + chainTokens;
  const readoutRows = metrics * rowsPerMetric;
  const ids = new Int64Writer(new BigInt64Array(b * length));
  const pos = new Int64Writer(new BigInt64Array(b * length));
  const branch = new Int64Writer(new BigInt64Array(b * length));
  const chain = new Int64Writer(new BigInt64Array(b * length));
  const readout = new Int64Writer(new BigInt64Array(b * readoutRows));

  pairs.forEach((pair, row) => {
    const base = row * length;
    let at = 0; // next position in this row
    const put = (id: number, position: number, br: number, ch: number) => {
      ids.set(base + at, id);
      pos.set(base + at, position);
      branch.set(base + at, br);
      chain.set(base + at, ch);
      at++;
    };
    // Image slots are negative ids; the graph fills them with the image's feature rows in order.
    const putIds = (src: readonly number[], from: number, to: number, start: number, br: number): number => {
      let position = start;
      for (let i = from; i < to; i++) {
        const id = src[i] as number;
        if (id === IMAGE_PLACEHOLDER_ID) for (let k = 0; k < imageTokens; k++) put(-1, position++, br, 0);
        else put(id, position++, br, 0);
      }
      return position;
    };
    const { prefix } = layouts[row] as PairLayout;
    const prefixEnd = putIds(pair.prompts[0] as number[], 0, prefix, 0, 0);
    let r = row * readoutRows;
    pair.prompts.forEach((prompt, m) => {
      const end = putIds(prompt, prefix, prompt.length, prefixEnd, m + 1);
      readout.set(r++, at - 1);
      chains.forEach((tokens, c) => {
        tokens.forEach((id, k) => {
          readout.set(r++, at);
          put(id, end + k, m + 1, c + 1);
        });
      });
    });
    // Pads: branch -1 (seen by no real position), id 0 and position 0 (valid indices, never read).
    branch.fill(base + at, base + length, -1);
  });
  return {
    batch: b,
    length,
    inputIds: ids.array,
    positionIds: pos.array,
    branchIds: branch.array,
    chainIds: chain.array,
    readoutPositions: readout.array,
    readoutRows,
    realLengths: layouts.map((l) => l.total),
  };
}

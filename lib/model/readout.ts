/**
 * Reading the scores from the scoring graph's small outputs: every metric's exact 0..100 distribution, its expected
 * value, the greedy integer and the reference's 2-token integer, all from the same numbers.
 *
 * After each metric prompt the packed sequence carries candidate chains (packing.ts): "0", "1" "0", "2", ..., "9"
 * (and, with the whitespace lead, the same chains behind the whitespace token). The graph returns, at the prompt's
 * last position and at every chain token, the log-probabilities of the digit ids (and the whitespace id) and the
 * argmax token over the whole vocabulary. So, per metric:
 *   q(d)      P(first token = digit d)                     (prompt row)
 *   r_d(e)    P(next = digit e | d), r_d(stop) = 1 - sum_e  (row of chain token d)
 *   t         P(third token "0" | "1","0")                 (row of the "0" after "1")
 * and the number distribution: P(d) += q(d) r_d(stop); P(10d+e) += q(d) r_d(e) for (d,e) != (1,0);
 * P(10) += q(1) r_1(0) (1 - t); P(100) += q(1) r_1(0) t. A number is complete after two digits (100 after three),
 * as the greedy reader stops. The expected score is sum_v v P(v) / sum_v P(v): conditional on the answer being a
 * number. With the whitespace lead the same terms are added behind P(first token = whitespace).
 *
 * Greedy integer: follow the argmax tokens along the chains (a non-digit ends the number; no digit first, no score).
 * Reference integer (Victorwz/MLM_Filter): int() of the first line of the 2 greedy tokens' text, as Python would.
 *
 * Single-token numbers (`numberIds`, conversation format llama_3): Llama-3's tokenizer holds every number 0..999 as
 * one token and never joins a number to the space before it (its pre-tokenizer splits digit runs in groups of up to
 * three), so the trained answer "ASSISTANT: 87\n..." is ':', ' ', '87', the prompt ends with that space token, and the
 * reference generates ONE token and reads int() of its text. No chains: one readout row per metric, whose readout
 * token ids are the tokens "0".."100"; P(v) is that token's probability (normalised over the 101 numbers for the
 * distribution and the expected score), the greedy integer is the argmax over the vocabulary when it is one of those
 * tokens (another token, e.g. "087", "250", a word or EOS: no score), and reference mode reads int() of the argmax
 * token's text as the v2 script's batch_decode(skip_special_tokens=True) shows it ("087" -> 87; a word or EOS -> no
 * score), clamped into 0..100 like every reference-mode integer.
 */
import { FilterError } from '../types.ts';

/** The token ids the readout needs, built once per tokenizer. */
export interface ScoreVocab {
  /** The id of each digit 0..9 (a single-character token). */
  readonly digitIds: readonly number[];
  /** The whitespace token that may precede the digits, when the model's answers need that branch. */
  readonly whitespaceLeadId?: number | undefined;
  readonly eosIds: ReadonlySet<number>;
  /**
   * Single-token numbers: the ids of the tokens "0", "1", ..., "100" (mlm_filter.json `number_token_ids`). When set,
   * the answer is read from one token (no candidate chains) and digitIds / whitespaceLeadId are not used.
   */
  readonly numberIds?: readonly number[] | undefined;
  /** Text of a token as the reference's batch_decode(skip_special_tokens=True) shows it. */
  decode(ids: readonly number[]): string;
}

/** One metric's numbers, for tests and diagnostics. */
export interface MetricReadout {
  /**
   * P(first token = digit d), unnormalised (straight from the softmax over the vocabulary); with single-token
   * numbers P(first token = number v), v = 0..100 (r and stop are then empty, t is 0).
   */
  readonly q: readonly number[];
  /** r[d][e] = P(second = digit e | first = d). */
  readonly r: readonly (readonly number[])[];
  /** P(non-digit after d) = 1 - sum_e r[d][e]. */
  readonly stop: readonly number[];
  /** P("0" after "1","0"). */
  readonly t: number;
  /** Mass of answers that start with a number (the expected score's denominator). */
  readonly numberMass: number;
  /** P(score = v), v = 0..100, normalised over numbers. */
  readonly distribution: Float64Array;
  readonly expected: number | undefined;
  readonly greedy: number | undefined;
  /**
   * The reference's int() of 2 greedy tokens (when read: reference mode, diagnostics); undefined also when the chains
   * cannot tell (`undetermined`).
   */
  readonly reference: number | undefined;
  readonly undetermined: boolean;
}

/** The candidate chains after every metric prompt: "0", "1","0", "2".."9", then the same behind the lead. */
export function candidateChains(vocab: ScoreVocab): number[][] {
  if (vocab.numberIds !== undefined) return [];
  const [d0, d1] = vocab.digitIds as [number, number];
  const plain = vocab.digitIds.map((d, i) => (i === 1 ? [d1, d0] : [d]));
  const lead = vocab.whitespaceLeadId;
  return lead === undefined ? plain : [...plain, ...plain.map((c) => [lead, ...c])];
}

/** readout_token_ids: the digits, then the whitespace lead when there is one. */
export function readoutTokenIds(vocab: ScoreVocab): number[] {
  if (vocab.numberIds !== undefined) return [...vocab.numberIds];
  return vocab.whitespaceLeadId === undefined ? [...vocab.digitIds] : [...vocab.digitIds, vocab.whitespaceLeadId];
}

/** Rows of one metric's readout, relative to its first row: see candidateChains for the order. */
interface Rows {
  prompt: number;
  /** Row of chain token d (gives r_d). */
  digit: number[];
  /** Row of the "0" after "1" (gives t). */
  ten: number;
}

function rowsOf(offset: number): Rows {
  // chains: [0] [1 0] [2] ... [9]: rows 1, 2 3, 4..11
  const digit = [offset + 1, offset + 2, ...Array.from({ length: 8 }, (_, i) => offset + 4 + i)];
  return { prompt: offset, digit, ten: offset + 3 };
}

/**
 * The reference's reading of its output, `int(text.strip().split('\n')[0])`; undefined where Python raises.
 * Python's int() takes surrounding whitespace, a sign and single underscores between digits.
 */
export function pythonIntOfFirstLine(text: string): number | undefined {
  const line = text.trim().split('\n')[0] ?? '';
  const m = /^\s*([+-]?)(\d(?:_?\d)*)\s*$/.exec(line);
  if (!m) return undefined;
  const n = Number.parseInt((m[2] as string).replaceAll('_', ''), 10);
  return m[1] === '-' ? -n : n;
}

/** Reads the graph outputs of one batch. */
export class Readout {
  private readonly k: number;
  private readonly digitOf: Map<number, number>;

  private readonly numberOf: Map<number, number> | undefined;

  constructor(private readonly vocab: ScoreVocab) {
    if (vocab.numberIds !== undefined) {
      const ids = vocab.numberIds;
      if (ids.length !== 101 || new Set(ids).size !== 101 || !ids.every((id) => Number.isInteger(id) && id >= 0)) {
        throw new FilterError('model_invalid', 'single-token numbers need 101 distinct token ids, for "0".."100"', {
          numberIds: ids.length,
        });
      }
    }
    this.numberOf = vocab.numberIds && new Map(vocab.numberIds.map((id, v) => [id, v]));
    if (vocab.digitIds.length !== 10) {
      throw new FilterError('model_invalid', 'the tokenizer needs one token per digit 0..9', {
        digitIds: vocab.digitIds,
      });
    }
    this.k = readoutTokenIds(vocab).length;
    this.digitOf = new Map(vocab.digitIds.map((id, d) => [id, d]));
  }

  /** Readout rows per metric (1 prompt row + 11 chain tokens, twice with the whitespace lead... see packing). */
  get rowsPerMetric(): number {
    return 1 + candidateChains(this.vocab).reduce((a, c) => a + c.length, 0);
  }

  /**
   * One metric of one pair. `logprobs` [rows, K] and `top` [rows] of the whole batch; `row0` is the metric's
   * prompt row.
   */
  metric(logprobs: Float32Array, top: BigInt64Array, row0: number, withReference = true): MetricReadout {
    const p = (row: number, k: number) => Math.exp(logprobs[row * this.k + k] as number);
    if (this.numberOf) return this.singleToken(p, top, row0, this.numberOf, withReference);
    const dist = new Float64Array(101);
    const plain = rowsOf(row0);
    const first = this.branch(p, plain, 1, dist);
    let mass = first.mass;
    // The lead's chains follow the plain ones; its own token (first of every lead chain) gives the digit row.
    const lead = this.vocab.whitespaceLeadId !== undefined ? this.leadRows(row0) : undefined;
    if (lead) mass += this.branch(p, lead.rows, p(row0, 10), dist).mass;
    if (mass > 0) for (let v = 0; v <= 100; v++) dist[v] = (dist[v] as number) / mass;
    let expected: number | undefined;
    if (mass > 0) {
      expected = 0;
      for (let v = 0; v <= 100; v++) expected += v * (dist[v] as number);
    }
    const greedy = this.greedy(top, plain, lead);
    // The reference's reading decodes token text: only when asked for.
    const ref = withReference ? this.reference(top, plain, lead) : { value: undefined, undetermined: false };
    return {
      q: first.q,
      r: first.r,
      stop: first.stop,
      t: first.t,
      numberMass: mass,
      distribution: dist,
      expected,
      greedy,
      reference: ref.value,
      undetermined: ref.undetermined,
    };
  }

  /** Single-token numbers: everything from the metric's one row (see the module header). */
  private singleToken(
    p: (row: number, k: number) => number,
    top: BigInt64Array,
    row: number,
    numberOf: ReadonlyMap<number, number>,
    withReference: boolean,
  ): MetricReadout {
    const q = Array.from({ length: 101 }, (_, v) => p(row, v));
    const mass = q.reduce((a, b) => a + b, 0);
    const dist = Float64Array.from(q, (x) => (mass > 0 ? x / mass : 0));
    let expected: number | undefined;
    if (mass > 0) expected = dist.reduce((a, x, v) => a + v * x, 0);
    const t1 = this.tok(top, row);
    let reference: number | undefined;
    if (withReference && !this.vocab.eosIds.has(t1)) {
      const n = pythonIntOfFirstLine(this.vocab.decode([t1]));
      reference = n === undefined ? undefined : Math.min(100, Math.max(0, n));
    }
    return {
      q,
      r: [],
      stop: [],
      t: 0,
      numberMass: mass,
      distribution: dist,
      expected,
      greedy: numberOf.get(t1),
      reference,
      undetermined: false,
    };
  }

  /** The plain chains' rows behind the lead: the lead token of the first lead chain gives q, then as plain. */
  private leadRows(row0: number): { leadRow: number; rows: Rows } {
    // Plain chains take 11 rows after the prompt row; each lead chain is [lead, ...plain chain].
    const start = row0 + 12;
    // lead chains: [w 0] [w 1 0] [w 2] ... [w 9]: rows start.. : w,0 | w,1,0 | w,2 | ... | w,9
    const digit = [start + 1, start + 3];
    for (let d = 2; d < 10; d++) digit.push(start + 5 + 2 * (d - 2) + 1);
    return { leadRow: start, rows: { prompt: start, digit, ten: start + 4 } };
  }

  /** Adds one branch's number probabilities, weighted by `weight`, into dist; returns its q, r, t and mass. */
  private branch(p: (row: number, k: number) => number, rows: Rows, weight: number, dist: Float64Array) {
    const q = Array.from({ length: 10 }, (_, d) => p(rows.prompt, d));
    const r = rows.digit.map((row) => Array.from({ length: 10 }, (_, e) => p(row, e)));
    const stop = r.map((re) => Math.max(0, 1 - re.reduce((a, b) => a + b, 0)));
    const t = p(rows.ten, 0);
    let mass = 0;
    for (let d = 0; d < 10; d++) {
      const qd = weight * (q[d] as number);
      const add = (v: number, pr: number) => {
        dist[v] = (dist[v] as number) + pr;
        mass += pr;
      };
      add(d, qd * (stop[d] as number));
      for (let e = 0; e < 10; e++) {
        const pde = qd * ((r[d] as number[])[e] as number);
        if (d === 1 && e === 0) {
          add(10, pde * (1 - t));
          add(100, pde * t);
        } else {
          add(10 * d + e, pde);
        }
      }
    }
    return { q, r, stop, t, mass };
  }

  private tok(top: BigInt64Array, row: number): number {
    return Number(top[row]);
  }

  /** The greedy number along the argmax tokens; undefined when the first (after a lead) token is not a digit. */
  private greedy(top: BigInt64Array, plain: Rows, lead: { leadRow: number; rows: Rows } | undefined) {
    let rows = plain;
    let d = this.digitOf.get(this.tok(top, plain.prompt));
    if (d === undefined && lead && this.tok(top, plain.prompt) === this.vocab.whitespaceLeadId) {
      rows = lead.rows;
      d = this.digitOf.get(this.tok(top, lead.leadRow));
    }
    if (d === undefined) return undefined;
    const e = this.digitOf.get(this.tok(top, rows.digit[d] as number));
    if (e === undefined) return d;
    if (d === 1 && e === 0) return this.digitOf.get(this.tok(top, rows.ten)) === 0 ? 100 : 10;
    return 10 * d + e;
  }

  /** int() of the first line of the reference's two greedy tokens (EOS ends generation, special tokens skipped). */
  private reference(top: BigInt64Array, plain: Rows, lead: { leadRow: number; rows: Rows } | undefined) {
    const t1 = this.tok(top, plain.prompt);
    const parse = (ids: number[]) => {
      const n = pythonIntOfFirstLine(this.vocab.decode(ids.filter((id) => !this.vocab.eosIds.has(id))));
      return { value: n === undefined ? undefined : Math.min(100, Math.max(0, n)), undetermined: false };
    };
    if (this.vocab.eosIds.has(t1)) return parse([]);
    const d = this.digitOf.get(t1);
    if (d !== undefined) return parse([t1, this.tok(top, plain.digit[d] as number)]);
    if (lead && t1 === this.vocab.whitespaceLeadId) return parse([t1, this.tok(top, lead.leadRow)]);
    // Another first token: its text decides unless a second token could still complete an integer.
    const text = this.vocab.decode([t1]).trimStart();
    if (!text.includes('\n') && /^[+-]?(\d(?:_?\d)*_?)?$/.test(text)) return { value: undefined, undetermined: true };
    return parse([t1]);
  }
}

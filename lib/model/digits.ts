/**
 * Reading the score the model writes: greedy digits, stopped as soon as the number is complete, plus an expected
 * score from the digit probabilities.
 *
 * Greedy rule: the first generated token(s) may be one whitespace-only token (the reference's `int()` ignores it),
 * then digits are collected token by token; the number is complete at the first non-digit token, or as soon as no
 * further digit could keep it a score: after two digits (a third would pass 100), except after "10", where a third
 * "0" makes 100 (any other third digit is not part of the number: "105" reads 10, as the reference's 2 tokens do).
 * Decoding stops there, which saves the step the reference spends on a third token it never reads. No digit at all
 * -> no score. The integer is clamped to 0..100.
 *
 * Expected score (documented formula): let q(d) be the probability of digit d at the step that produced the first
 * digit, renormalised over the 10 digits; let r(e) be the probability of digit e at the next step on the greedy path
 * and r(stop) = 1 - sum_e r(e). Then
 *   E = sum_d q(d) * ( r(stop) * d + sum_e r(e) * v(d, e) ),  v(d, e) = min(100, 10 d + e),
 * except v(1, 0) = t * 100 + (1 - t) * 10 when the greedy path is "1","0" and t is its probability of a third "0".
 * It reuses the greedy path's second-step distribution for every first digit (one extra decode row per sequence
 * instead of ten), so it is exact for the greedy first digit and an approximation for the others.
 */

/** Per-vocabulary digit lookup built once from the tokenizer. */
export class DigitVocab {
  /** For each token id: its text when it is made only of ASCII digits, else undefined. */
  private readonly digitText: (string | undefined)[];
  /** For each digit 0..9: the ids whose text is exactly that digit (usually one). */
  readonly idsOfDigit: number[][];

  constructor(vocabSize: number, tokenText: (id: number) => string) {
    this.digitText = new Array<string | undefined>(vocabSize);
    this.idsOfDigit = Array.from({ length: 10 }, () => []);
    for (let id = 0; id < vocabSize; id++) {
      const t = tokenText(id);
      if (/^[0-9]+$/.test(t)) {
        this.digitText[id] = t;
        if (t.length === 1) this.idsOfDigit[Number(t)]?.push(id);
      }
    }
  }

  digitsOf(id: number): string | undefined {
    return this.digitText[id];
  }
}

/** Probabilities of each digit 0..9 under softmax(logits[offset .. offset+V)). */
export function digitProbabilities(logits: ArrayLike<number>, offset: number, vocab: number, v: DigitVocab): number[] {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) {
    const x = logits[offset + i] as number;
    if (x > max) max = x;
  }
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp((logits[offset + i] as number) - max);
  return v.idsOfDigit.map(
    (ids) => ids.reduce((acc, id) => acc + Math.exp((logits[offset + id] as number) - max), 0) / sum,
  );
}

export function argmax(logits: ArrayLike<number>, offset: number, vocab: number): number {
  let best = 0;
  let bestVal = -Infinity;
  for (let i = 0; i < vocab; i++) {
    const x = logits[offset + i] as number;
    if (x > bestVal) {
      bestVal = x;
      best = i;
    }
  }
  return best;
}

/** Greedy number reader for one sequence: feed it each generated token until `done`. */
export class NumberReader {
  digits = '';
  done = false;
  /** Generated token ids so far. */
  readonly tokens: number[] = [];
  /** Digit distributions: [0] at the first digit's step, [1] at the step after it, [2] the one after that. */
  readonly stepProbs: number[][] = [];
  private leadingWhitespace = 0;

  constructor(
    private readonly vocab: DigitVocab,
    private readonly tokenText: (id: number) => string,
    private readonly maxNewTokens = 4,
  ) {}

  /** Feeds one greedy token; `probs` is the digit distribution of the step that produced it. */
  push(id: number, probs?: number[]): void {
    if (this.done) return;
    this.tokens.push(id);
    const digits = this.vocab.digitsOf(id);
    if (this.digits === '') {
      if (digits !== undefined) {
        this.digits = digits;
        if (probs) this.stepProbs.push(probs);
      } else if (this.leadingWhitespace === 0 && /^\s+$/.test(this.tokenText(id))) {
        this.leadingWhitespace++;
      } else {
        this.done = true;
      }
    } else {
      if (probs && this.stepProbs.length < 3) this.stepProbs.push(probs);
      if (digits !== undefined) this.digits += digits;
      else this.done = true;
    }
    const d = this.digits;
    if (d.length >= 2 && d !== '10') {
      this.digits = d.startsWith('100') ? '100' : d.slice(0, 2);
      this.done = true;
    }
    if (this.tokens.length >= this.maxNewTokens) this.done = true;
  }

  /** Integer score 0..100, or undefined when no digit was produced. */
  get score(): number | undefined {
    if (this.digits === '') return undefined;
    return Math.min(100, Number.parseInt(this.digits, 10));
  }

  /** Expected score by the formula in this module's header, or undefined without a first digit. */
  get expected(): number | undefined {
    const [q, r, t] = this.stepProbs;
    if (this.digits === '' || !q) return undefined;
    const qSum = q.reduce((a, b) => a + b, 0);
    if (!(qSum > 0)) return undefined;
    const rDigits = r ?? new Array<number>(10).fill(0);
    const rStop = Math.max(0, 1 - rDigits.reduce((a, b) => a + b, 0));
    const tZero = this.digits.startsWith('10') && t ? (t[0] as number) : 0;
    let e = 0;
    for (let d = 0; d < 10; d++) {
      let value = rStop * d;
      for (let k = 0; k < 10; k++) {
        const v = d === 1 && k === 0 ? tZero * 100 + (1 - tZero) * 10 : Math.min(100, 10 * d + k);
        value += (rDigits[k] as number) * v;
      }
      e += ((q[d] as number) / qSum) * value;
    }
    return Math.min(100, Math.max(0, e));
  }
}

/**
 * Python's `int()` of the first line of a decoded string, as the reference parses its 2-token output; undefined where
 * Python would raise. Accepts surrounding whitespace, a sign and single underscores between digits.
 */
export function pythonIntOfFirstLine(text: string): number | undefined {
  const line = text.split('\n')[0] ?? '';
  const m = /^\s*([+-]?)(\d(?:_?\d)*)\s*$/.exec(line);
  if (!m) return undefined;
  const n = Number.parseInt((m[2] as string).replaceAll('_', ''), 10);
  return m[1] === '-' ? -n : n;
}

/**
 * The MLM-filter inference engine: one run of the scoring graph (onnx/mlm_scorer[_fp16].onnx) per batch of pairs.
 * It runs on whatever thread owns it (the scorer puts it in a worker thread: `session.run` blocks).
 *
 * Per batch: the prompts of every pair and metric are tokenised (tokens.ts), packed into one sequence per pair with
 * the candidate digit chains behind every metric (packing.ts), and the graph returns a few hundred floats per pair:
 * the digit log-probabilities and greedy tokens at each readout row, from which readout.ts reads every metric's exact
 * 0..100 distribution, expected score, greedy integer and the reference's integer. No KV cache and nothing
 * vocabulary-sized crosses into JS.
 *
 * Reference mode is a readout and a prompt switch over the same graph: the reference's 2-token int() reading, its
 * prompt truncation at the end and its tokenisation of control-token strings inside captions (and, in the scorer,
 * no pad-to-square), and its decoding settings: the checkpoint's repetition penalty on the tokens generated so far
 * (generation.ts), from the graph's raw-logit outputs.
 */
import * as ort from './onnxruntime.ts';
import { FilterError, METRICS, type MetricKey, type MetricShort, type Scores } from '../types.ts';
import { packBatch, type PairPrompts } from './packing.ts';
import { chainHistories, penalisedTops, type RawLogits } from './generation.ts';
import { Readout, readoutTokenIds, candidateChains, type MetricReadout, type ScoreVocab } from './readout.ts';
import type { CaptionCut, PromptTokenizer } from './tokens.ts';

export const SCORER_INPUTS = [
  'pixel_values',
  'input_ids',
  'position_ids',
  'branch_ids',
  'chain_ids',
  'readout_positions',
  'readout_token_ids',
] as const;

/** Outputs of graphs exported since the reference's decoding settings are reproduced: raw logits (generation.ts). */
export const RAW_LOGIT_OUTPUTS = ['token_logits', 'top_k_logits', 'top_k_token_ids'] as const;

export interface EngineOptions {
  /** Metrics to score, in output order. @default all four */
  readonly metrics?: readonly MetricKey[];
  /** Reference-compatible readout and prompts (see module header). @default false */
  readonly referenceMode?: boolean;
  /** Also read answers that start with the whitespace token before the digits. @default false */
  readonly whitespaceLead?: boolean;
  /** Token ids that end generation (the reference stops a row at EOS). */
  readonly eosTokenIds?: readonly number[];
  /**
   * Single-token numbers readout (mlm_filter.json `readout`, llama_3): the ids of "0".."100"; one readout row per
   * metric instead of digit chains (readout.ts).
   */
  readonly numberTokenIds?: readonly number[];
  /**
   * Reference mode: the repetition penalty of the reference's generate on the tokens generated so far (the
   * checkpoint's generation_config.json; generation.ts). 1 = none. Default mode ignores it. @default 1
   */
  readonly repetitionPenalty?: number;
  /** Keep every metric's distribution and token ids in the result (tests and diagnostics). @default false */
  readonly captureDetail?: boolean;
}

export interface EngineInput {
  readonly caption: string;
  /** float32 CHW pixel values, as the intake makes them. */
  readonly pixelValues: Float32Array;
}

export interface EngineResult {
  readonly scores: Scores;
  readonly expected: Scores;
  /** The caption was shortened to fit the model's context (default mode): what was kept. */
  readonly captionCut?: CaptionCut;
  /** Why this pair cannot be scored at all (its caption cannot fit even when cut). */
  readonly unscorable?: { readonly code: 'invalid_record'; readonly message: string };
  readonly detail?: Partial<Record<MetricShort, MetricReadout & { readonly inputIds: readonly number[] }>>;
}

/** Work counters, cumulative over the engine's life. */
export interface EngineStats {
  pairs: number;
  /** session.run calls. */
  runs: number;
  /** Decoder positions computed, padding included (what the accelerator pays). */
  decoderPositions: number;
  /** Real (unpadded) decoder positions: image, prompt and candidate tokens. */
  decoderRealTokens: number;
  visionImages: number;
  /** Milliseconds inside session.run, and in the engine's own JS around it. */
  runMs: number;
  jsMs: number;
}

export function emptyStats(): EngineStats {
  return { pairs: 0, runs: 0, decoderPositions: 0, decoderRealTokens: 0, visionImages: 0, runMs: 0, jsMs: 0 };
}

const SHORT: Record<MetricKey, MetricShort> = Object.fromEntries(METRICS.map((m) => [m.key, m.short])) as Record<
  MetricKey,
  MetricShort
>;

export interface EngineModel {
  readonly session: ort.InferenceSession;
  /** Image feature rows per image (the projector's output length). */
  readonly imageTokens: number;
  /** Profiling was enabled at creation: release() ends it, which writes the profile file. */
  readonly profiling?: boolean;
}

/** One batch's graph outputs: `top` the model's greedy tokens, `referenceTop` those of the reference's decoding. */
interface GraphOutputs {
  readonly logprobs: Float32Array;
  readonly top: BigInt64Array;
  readonly referenceTop: BigInt64Array;
  readonly rows: number;
}

export class ScoringEngine {
  readonly metrics: readonly MetricKey[];
  readonly stats: EngineStats = emptyStats();
  private readonly readout: Readout;
  private readonly chains: number[][];
  private readonly tokenIds: ort.Tensor;
  private readonly reference: boolean;
  private readonly captureDetail: boolean;
  /** The penalty reference mode applies (1: none), and each readout row's generated history within a metric. */
  private readonly penalty: number;
  private readonly histories: number[][];
  private readonly readoutIndex: Map<number, number>;
  private pixelBuffer = new Float32Array(0);

  constructor(
    private readonly model: EngineModel,
    private readonly tokenizer: PromptTokenizer,
    options: EngineOptions = {},
  ) {
    const names = model.session.inputNames;
    const missing = SCORER_INPUTS.filter((n) => !names.includes(n));
    if (missing.length > 0) {
      throw new FilterError('model_invalid', `the scoring graph lacks inputs: ${missing.join(', ')}`, {
        inputs: names,
      });
    }
    this.metrics = options.metrics ?? METRICS.map((m) => m.key);
    this.reference = options.referenceMode ?? false;
    this.captureDetail = options.captureDetail ?? false;
    const eos = new Set(options.eosTokenIds ?? []);
    const vocab: ScoreVocab = {
      digitIds: tokenizer.digitIds(),
      numberIds: options.numberTokenIds,
      whitespaceLeadId: options.whitespaceLead ? tokenizer.whitespaceTokenId : undefined,
      eosIds: eos,
      decode: (ids) => tokenizer.decode(ids),
    };
    this.readout = new Readout(vocab);
    this.chains = candidateChains(vocab);
    this.tokenIds = new ort.Tensor('int64', BigInt64Array.from(readoutTokenIds(vocab).map(BigInt)), [
      readoutTokenIds(vocab).length,
    ]);
    // A single-token readout (llama_3) reads the reference's one generated token: nothing precedes it to penalise.
    const oneToken = (options.numberTokenIds?.length ?? 0) > 0;
    this.penalty = this.reference && !oneToken ? (options.repetitionPenalty ?? 1) : 1;
    this.histories = chainHistories(this.chains);
    this.readoutIndex = new Map(readoutTokenIds(vocab).map((id, k) => [id, k]));
    const lacking = RAW_LOGIT_OUTPUTS.filter((n) => !model.session.outputNames.includes(n));
    if (this.penalty !== 1 && lacking.length > 0) {
      throw new FilterError(
        'model_invalid',
        `reference mode applies the checkpoint's repetition penalty ${this.penalty}, but this scoring graph lacks ` +
          `${lacking.join(', ')} (exported before they existed): re-export the model with tools/export`,
        { outputs: model.session.outputNames },
      );
    }
  }

  async release(): Promise<void> {
    if (this.model.profiling) this.model.session.endProfiling();
    await this.model.session.release();
  }

  /** Scores a batch of pairs on every configured metric: one session.run. */
  async score(inputs: readonly EngineInput[]): Promise<EngineResult[]> {
    if (inputs.length === 0) return [];
    const start = performance.now();
    const prompts = inputs.map((p) => this.tokenizer.metricPrompts(this.metrics, p.caption, this.reference));
    const scorable = inputs.map((_, i) => i).filter((i) => prompts[i]?.ids !== undefined);
    let outputs: GraphOutputs | undefined;
    let runMs = 0;
    if (scorable.length > 0) {
      const feeds = this.feeds(
        scorable.map((i) => inputs[i] as EngineInput),
        scorable.map((i) => ({ prompts: prompts[i]?.ids as number[][] })),
      );
      const t = performance.now();
      outputs = this.outputs(await this.model.session.run(feeds));
      runMs = performance.now() - t;
    }
    const results = inputs.map((_, i) => {
      const p = prompts[i] as ReturnType<PromptTokenizer['metricPrompts']>;
      if (!p.ids || !outputs) {
        return { scores: {}, expected: {}, unscorable: { code: 'invalid_record' as const, message: p.error ?? '' } };
      }
      return this.read(outputs, scorable.indexOf(i), p.ids, p.cut);
    });
    this.stats.pairs += inputs.length;
    this.stats.runMs += runMs;
    this.stats.jsMs += performance.now() - start - runMs;
    return results;
  }

  private feeds(inputs: readonly EngineInput[], pairs: readonly PairPrompts[]): Record<string, ort.Tensor> {
    const packed = packBatch(pairs, this.chains, this.model.imageTokens);
    const first = (inputs[0] as EngineInput).pixelValues;
    const side = Math.round(Math.sqrt(first.length / 3));
    if (side * side * 3 !== first.length || inputs.some((p) => p.pixelValues.length !== first.length)) {
      throw new FilterError('bad_pixel_values', 'pixel values must be float32 [3,S,S] of one size per batch', {
        lengths: inputs.map((p) => p.pixelValues.length),
      });
    }
    // One buffer reused across batches (session.run has returned before the next batch fills it): a batch's pixels
    // are megabytes, and allocating them anew each time shows up as garbage-collection time.
    const size = first.length * inputs.length;
    if (this.pixelBuffer.length < size) this.pixelBuffer = new Float32Array(size);
    const pixels = this.pixelBuffer.subarray(0, size);
    inputs.forEach((p, i) => pixels.set(p.pixelValues, i * first.length));
    const b = packed.batch;
    const seq = [b, packed.length];
    this.stats.runs++;
    this.stats.visionImages += b;
    this.stats.decoderPositions += b * packed.length;
    this.stats.decoderRealTokens += packed.realLengths.reduce((a, n) => a + n, 0);
    return {
      pixel_values: new ort.Tensor('float32', pixels, [b, 3, side, side]),
      input_ids: new ort.Tensor('int64', packed.inputIds, seq),
      position_ids: new ort.Tensor('int64', packed.positionIds, seq),
      branch_ids: new ort.Tensor('int64', packed.branchIds, seq),
      chain_ids: new ort.Tensor('int64', packed.chainIds, seq),
      readout_positions: new ort.Tensor('int64', packed.readoutPositions, [b, packed.readoutRows]),
      readout_token_ids: this.tokenIds,
    };
  }

  private outputs(out: ort.InferenceSession.OnnxValueMapType): GraphOutputs {
    const lp = out.token_logprobs;
    const top = out.top_token_ids;
    if (!lp || !top || lp.type !== 'float32' || top.type !== 'int64') {
      throw new FilterError('model_invalid', 'the scoring graph must return token_logprobs (float32), top_token_ids', {
        outputs: Object.keys(out),
      });
    }
    const rows = (lp.dims[1] ?? 0) as number;
    const logprobs = lp.data as Float32Array;
    const greedy = top.data as BigInt64Array;
    if (this.penalty === 1) return { logprobs, top: greedy, rows, referenceTop: greedy };
    const raw = this.rawLogits(out);
    const referenceTop = penalisedTops(raw, greedy.length, this.histories, this.penalty);
    return { logprobs, top: greedy, rows, referenceTop };
  }

  private rawLogits(out: ort.InferenceSession.OnnxValueMapType): RawLogits {
    const logits = out.token_logits;
    const topLogits = out.top_k_logits;
    const topIds = out.top_k_token_ids;
    if (logits?.type !== 'float32' || topLogits?.type !== 'float32' || topIds?.type !== 'int64') {
      throw new FilterError('model_invalid', `the scoring graph must return ${RAW_LOGIT_OUTPUTS.join(', ')}`, {
        outputs: Object.keys(out),
      });
    }
    return {
      tokenLogits: logits.data as Float32Array,
      topLogits: topLogits.data as Float32Array,
      topIds: topIds.data as BigInt64Array,
      topK: topIds.dims[2] as number,
      readoutIndex: this.readoutIndex,
    };
  }

  private read(
    out: GraphOutputs,
    row: number,
    ids: readonly (readonly number[])[],
    cut: CaptionCut | undefined,
  ): EngineResult {
    const scores: Scores = {};
    const expected: Scores = {};
    const detail: NonNullable<EngineResult['detail']> = {};
    const perMetric = this.readout.rowsPerMetric;
    this.metrics.forEach((m, mi) => {
      // Reference mode reads the greedy tokens of the reference's decoding (penalised), default mode the model's own.
      const r = this.readout.metric(
        out.logprobs,
        this.reference ? out.referenceTop : out.top,
        row * out.rows + mi * perMetric,
        this.reference || this.captureDetail,
      );
      const short = SHORT[m];
      const score = this.reference ? r.reference : r.greedy;
      if (score !== undefined) scores[short] = score;
      if (r.expected !== undefined) expected[short] = r.expected;
      if (this.captureDetail) detail[short] = { ...r, inputIds: ids[mi] as number[] };
    });
    return {
      scores,
      expected,
      ...(cut ? { captionCut: cut } : {}),
      ...(this.captureDetail ? { detail } : {}),
    };
  }
}

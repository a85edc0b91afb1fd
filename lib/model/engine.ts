/**
 * The MLM-filter inference engine over the three ONNX parts (vision encoder, token embedding, KV-cached decoder).
 * It runs on whatever thread owns it (the scorer puts it in a worker thread: `session.run` blocks).
 *
 * Shared-prefix scoring (the default): the four metric prompts of a pair share their first tokens (system text,
 * image, caption...). Per batch of pairs: the vision encoder runs once per pair; the exact longest common token
 * prefix of the pair's prompts is prefilled once (pairs batched, LEFT-padded, attention mask and position ids
 * counting only real tokens); then every (pair, metric) suffix runs against a copy of its pair's prefix KV cache,
 * right-aligned (padding sits between the prefix and the suffix, masked, positions continue from the real prefix
 * length), so all rows end on the same column and the score logits are the last column. Rows are grouped by suffix
 * length so that the very different criteria lengths do not turn into padding. Digits are then decoded greedily,
 * batched over the still-open rows, stopping as soon as each number is complete (digits.ts).
 *
 * Reference mode reproduces Victorwz/MLM_Filter: one batched pass per metric over the full prompt (vision encoder
 * included), 2 greedy tokens, `int()` of the first line of their text. It keeps a correct attention mask (the
 * reference passes none with left padding, which makes its batched numbers depend on the batch).
 */
import * as ort from 'onnxruntime-node';
import { FilterError, METRICS, type MetricKey, type MetricShort, type Scores } from '../types.ts';
import { argmax, digitProbabilities, DigitVocab, NumberReader, pythonIntOfFirstLine } from './digits.ts';
import { floatsToHalf, halfToFloats } from './half.ts';
import { IMAGE_PLACEHOLDER_ID, type PromptTokenizer } from './tokens.ts';

type FloatData = Float32Array | Uint16Array;
type FloatType = 'float32' | 'float16';

export interface EngineSessions {
  readonly vision: ort.InferenceSession;
  readonly embed: ort.InferenceSession;
  readonly decoder: ort.InferenceSession;
  /** Profiling was enabled at creation: release() ends it, which writes the profile files. */
  readonly profiling?: boolean;
}

export interface EngineOptions {
  /** Metrics to score, in output order (default: all four). */
  readonly metrics?: readonly MetricKey[];
  /** Reference-compatible mode (see module header). */
  readonly referenceMode?: boolean;
  /** Most generated tokens per sequence in shared-prefix mode (a leading space + 3 digits). */
  readonly maxNewTokens?: number;
  /** Most logits floats one decoder run may return (rows are split to stay under it). Default 64M (256 MB). */
  readonly logitsBudget?: number;
  /** Largest padded/real token ratio accepted when grouping suffix rows; Infinity = one group. Default 1.15. */
  readonly suffixPaddingSlack?: number;
  /** Most rows in one suffix/decode run (default: no limit beyond the logits budget). */
  readonly maxRowsPerRun?: number;
  /** Keep the logits of the score position per metric (tests and diagnostics). */
  readonly captureScoreLogits?: boolean;
  /** Token ids that end generation in reference mode (the reference stops a row at EOS). */
  readonly eosTokenIds?: readonly number[];
}

export interface EngineInput {
  readonly caption: string;
  /** float32 CHW pixel values. */
  readonly pixelValues: Float32Array;
}

export interface MetricTrace {
  /** Prompt ids (image placeholder = -200), as fed. */
  readonly inputIds: number[];
  /** Greedily generated tokens. */
  readonly tokens: number[];
  /** The digits read greedily, before clamping ('' when none). */
  readonly digits: string;
  /** Logits of the first generated token (captureScoreLogits only). */
  scoreLogits?: Float32Array;
}

export interface EngineResult {
  readonly scores: Scores;
  readonly expected: Scores;
  readonly traces: Partial<Record<MetricShort, MetricTrace>>;
}

/** Work counters, cumulative over the engine's life. */
export interface EngineStats {
  /** Decoder positions computed, padding included (what the accelerator pays). */
  decoderPositions: number;
  /** Real (unpadded) decoder tokens: image tokens + text tokens + generated tokens fed back. */
  decoderRealTokens: number;
  decoderRuns: number;
  visionImages: number;
  /** Patch tokens through the vision tower (images x (side / patch)^2), when the patch size is known. */
  visionPatches: number;
  visionRuns: number;
  pairs: number;
}

interface Kv {
  /** Per layer: key and value, [rows, kvHeads, len, headDim]. */
  readonly layers: { key: FloatData; value: FloatData }[];
  readonly rows: number;
  readonly len: number;
}

interface RunRow {
  /** Embeddings of the new tokens, [len, hidden]. */
  readonly embeds: FloatData;
  readonly len: number;
  /** Position of the first new token (= real tokens before it). */
  readonly startPos: number;
  /** Attention mask over the past (length = past len). */
  readonly pastMask: Uint8Array;
}

interface RunOutput {
  /** Logits of each row's last position, float32 [rows, vocab]. */
  readonly lastLogits: Float32Array;
  readonly present: Kv;
  /** Each row's mask over past + new. */
  readonly masks: Uint8Array[];
}

const SHORT: Record<MetricKey, MetricShort> = Object.fromEntries(METRICS.map((m) => [m.key, m.short])) as Record<
  MetricKey,
  MetricShort
>;

function commonPrefixLength(seqs: readonly (readonly number[])[]): number {
  const first = seqs[0] ?? [];
  let n = first.length;
  for (const s of seqs) {
    let i = 0;
    while (i < n && i < s.length && s[i] === first[i]) i++;
    n = i;
  }
  return n;
}

export class ScoringEngine {
  readonly metrics: readonly MetricKey[];
  readonly stats: EngineStats = {
    decoderPositions: 0,
    decoderRealTokens: 0,
    decoderRuns: 0,
    visionImages: 0,
    visionPatches: 0,
    visionRuns: 0,
    pairs: 0,
  };
  private readonly floatType: FloatType;
  private readonly numLayers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly hidden: number;
  private readonly patchSize: number | undefined;
  private readonly logitsToKeepInput: string | undefined;
  private readonly presentNames: string[];
  private readonly digits: DigitVocab;
  private readonly eos: ReadonlySet<number>;
  private readonly opts: Required<Omit<EngineOptions, 'eosTokenIds' | 'metrics'>>;
  private vocab = 0;

  constructor(
    private readonly sessions: EngineSessions,
    private readonly tokenizer: PromptTokenizer,
    dims: { hidden: number; kvHeads: number; headDim: number; patchSize?: number | undefined },
    options: EngineOptions = {},
  ) {
    this.metrics = options.metrics ?? METRICS.map((m) => m.key);
    this.opts = {
      referenceMode: options.referenceMode ?? false,
      maxNewTokens: options.maxNewTokens ?? 4,
      logitsBudget: options.logitsBudget ?? 64 * 1024 * 1024,
      suffixPaddingSlack: options.suffixPaddingSlack ?? 1.15,
      maxRowsPerRun: options.maxRowsPerRun ?? Number.POSITIVE_INFINITY,
      captureScoreLogits: options.captureScoreLogits ?? false,
    };
    const names = sessions.decoder.inputNames;
    this.numLayers = names.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
    for (const required of ['inputs_embeds', 'attention_mask', 'position_ids']) {
      if (!names.includes(required)) {
        throw new FilterError('model_invalid', `decoder_model_merged has no input '${required}'`, { inputs: names });
      }
    }
    if (this.numLayers === 0) {
      throw new FilterError('model_invalid', 'decoder_model_merged has no past_key_values inputs', { inputs: names });
    }
    this.presentNames = sessions.decoder.outputNames.filter((n) => n.startsWith('present.'));
    this.logitsToKeepInput = names.find((n) => n === 'num_logits_to_keep' || n === 'logits_to_keep');
    const embedsMeta = sessions.decoder.inputMetadata.find((m) => m.name === 'inputs_embeds');
    this.floatType = embedsMeta?.isTensor && embedsMeta.type === 'float16' ? 'float16' : 'float32';
    this.hidden = dims.hidden;
    this.kvHeads = dims.kvHeads;
    this.headDim = dims.headDim;
    this.patchSize = dims.patchSize;
    this.digits = new DigitVocab(tokenizer.vocabSize, (id) => tokenizer.tokenText(id));
    this.eos = new Set(options.eosTokenIds ?? []);
  }

  async release(): Promise<void> {
    if (this.sessions.profiling) {
      for (const s of [this.sessions.vision, this.sessions.embed, this.sessions.decoder]) s.endProfiling();
    }
    await Promise.all([this.sessions.vision.release(), this.sessions.embed.release(), this.sessions.decoder.release()]);
  }

  /** Scores a batch of pairs on every configured metric. */
  async score(inputs: readonly EngineInput[]): Promise<EngineResult[]> {
    if (inputs.length === 0) return [];
    this.stats.pairs += inputs.length;
    return this.opts.referenceMode ? this.scoreReference(inputs) : this.scoreShared(inputs);
  }

  // ---- tensors -------------------------------------------------------------------------------------------------

  private floatTensor(data: Float32Array, dims: number[]): ort.Tensor {
    return this.floatType === 'float16'
      ? new ort.Tensor('float16', floatsToHalf(data), dims)
      : new ort.Tensor('float32', data, dims);
  }

  private rawFloatTensor(data: FloatData, dims: number[]): ort.Tensor {
    return this.floatType === 'float16'
      ? new ort.Tensor('float16', data as Uint16Array, dims)
      : new ort.Tensor('float32', data as Float32Array, dims);
  }

  private allocFloat(n: number): FloatData {
    return this.floatType === 'float16' ? new Uint16Array(n) : new Float32Array(n);
  }

  private static toFloat32(t: ort.Tensor): Float32Array {
    if (t.type === 'float16') {
      const d = t.data as unknown;
      return d instanceof Uint16Array ? halfToFloats(d) : Float32Array.from(d as ArrayLike<number>);
    }
    return t.data as Float32Array;
  }

  private static raw(t: ort.Tensor): FloatData {
    return t.data as FloatData;
  }

  // ---- model parts ---------------------------------------------------------------------------------------------

  /** Image features per pair, [imageTokens, hidden] each. */
  private async encodeImages(pixels: readonly Float32Array[]): Promise<{ features: FloatData[]; tokens: number }> {
    const first = pixels[0] as Float32Array;
    const side = Math.round(Math.sqrt(first.length / 3));
    if (side * side * 3 !== first.length || pixels.some((p) => p.length !== first.length)) {
      throw new FilterError('bad_pixel_values', 'pixel values must be float32 [3,S,S] of one size per batch', {
        lengths: pixels.map((p) => p.length),
      });
    }
    const stacked = new Float32Array(first.length * pixels.length);
    pixels.forEach((p, i) => stacked.set(p, i * first.length));
    const out = await this.sessions.vision.run({
      pixel_values: this.floatTensor(stacked, [pixels.length, 3, side, side]),
    });
    const feats = out.image_features ?? Object.values(out)[0];
    if (!feats) throw new FilterError('model_invalid', 'vision_encoder returned no image_features', {});
    const [b, n, h] = feats.dims as number[];
    if (b !== pixels.length || h !== this.hidden || n === undefined) {
      throw new FilterError('model_invalid', 'vision_encoder output does not match the decoder width', {
        dims: feats.dims,
        hidden: this.hidden,
      });
    }
    this.stats.visionRuns++;
    this.stats.visionImages += pixels.length;
    if (this.patchSize) this.stats.visionPatches += pixels.length * Math.floor(side / this.patchSize) ** 2;
    const data = ScoringEngine.raw(feats);
    const per = n * h;
    return { features: pixels.map((_, i) => data.slice(i * per, (i + 1) * per)), tokens: n };
  }

  /** Embeddings of text-only id rows (the image placeholder embeds as id 0 and is replaced afterwards). */
  private async embedRows(rows: readonly (readonly number[])[]): Promise<FloatData[]> {
    const maxLen = Math.max(1, ...rows.map((r) => r.length));
    const ids = new BigInt64Array(rows.length * maxLen);
    rows.forEach((r, i) => r.forEach((id, j) => (ids[i * maxLen + j] = BigInt(id === IMAGE_PLACEHOLDER_ID ? 0 : id))));
    const out = await this.sessions.embed.run({ input_ids: new ort.Tensor('int64', ids, [rows.length, maxLen]) });
    const emb = out.inputs_embeds ?? Object.values(out)[0];
    if (!emb) throw new FilterError('model_invalid', 'embed_tokens returned no inputs_embeds', {});
    const data = ScoringEngine.raw(emb);
    const h = this.hidden;
    return rows.map((r, i) => data.slice(i * maxLen * h, (i * maxLen + r.length) * h));
  }

  /** Splices image features over the placeholder: [len + imageTokens - 1, hidden]. */
  private expand(
    ids: readonly number[],
    textEmb: FloatData,
    image: FloatData | undefined,
  ): { embeds: FloatData; len: number } {
    const slot = ids.indexOf(IMAGE_PLACEHOLDER_ID);
    if (slot < 0 || !image) return { embeds: textEmb, len: ids.length };
    const h = this.hidden;
    const n = image.length / h;
    const len = ids.length - 1 + n;
    const out = this.allocFloat(len * h);
    out.set(textEmb.subarray(0, slot * h), 0);
    out.set(image as never, slot * h);
    out.set(textEmb.subarray((slot + 1) * h) as never, (slot + n) * h);
    return { embeds: out, len };
  }

  /**
   * One decoder run: each row's new tokens are right-aligned after the (shared-length) past; padding is masked and
   * position ids count only real tokens.
   */
  private async runDecoder(
    rows: readonly RunRow[],
    past: Kv | undefined,
    width = 0,
    needLogits = true,
  ): Promise<RunOutput> {
    const b = rows.length;
    const pastLen = past?.len ?? 0;
    const s = Math.max(width, ...rows.map((r) => r.len));
    const h = this.hidden;
    const embeds = this.allocFloat(b * s * h);
    const mask = new BigInt64Array(b * (pastLen + s));
    const pos = new BigInt64Array(b * s);
    const masks: Uint8Array[] = [];
    rows.forEach((r, i) => {
      const pad = s - r.len;
      embeds.set(r.embeds as never, (i * s + pad) * h);
      const m = new Uint8Array(pastLen + s);
      m.set(r.pastMask.subarray(0, pastLen));
      for (let j = 0; j < r.len; j++) m[pastLen + pad + j] = 1;
      masks.push(m);
      for (let j = 0; j < pastLen + s; j++) mask[i * (pastLen + s) + j] = BigInt(m[j] as number);
      // Pads get position 1 like transformers does; they are masked, the value only has to be a valid index.
      for (let j = 0; j < s; j++) pos[i * s + j] = BigInt(j < pad ? 1 : r.startPos + j - pad);
    });
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: this.rawFloatTensor(embeds, [b, s, h]),
      attention_mask: new ort.Tensor('int64', mask, [b, pastLen + s]),
      position_ids: new ort.Tensor('int64', pos, [b, s]),
    };
    for (let l = 0; l < this.numLayers; l++) {
      const dims = [b, this.kvHeads, pastLen, this.headDim];
      const layer = past?.layers[l];
      feeds[`past_key_values.${l}.key`] = this.rawFloatTensor(layer?.key ?? this.allocFloat(0), dims);
      feeds[`past_key_values.${l}.value`] = this.rawFloatTensor(layer?.value ?? this.allocFloat(0), dims);
    }
    if (this.logitsToKeepInput) feeds[this.logitsToKeepInput] = new ort.Tensor('int64', BigInt64Array.from([1n]), []);
    // Without logits (prefix prefill) only the caches are fetched, which spares copying [B,S,V] floats out.
    const out = needLogits
      ? await this.sessions.decoder.run(feeds)
      : await this.sessions.decoder.run(feeds, this.presentNames);
    this.stats.decoderRuns++;
    this.stats.decoderPositions += b * s;
    this.stats.decoderRealTokens += rows.reduce((a, r) => a + r.len, 0);
    let last = new Float32Array(0);
    if (needLogits) {
      const logits = out.logits;
      if (!logits) throw new FilterError('model_invalid', 'decoder_model_merged returned no logits', {});
      const [, k, v] = logits.dims as number[];
      if (k === undefined || v === undefined) {
        throw new FilterError('model_invalid', 'decoder logits must be [B,S,V]', { dims: logits.dims });
      }
      this.vocab = v;
      const all = ScoringEngine.toFloat32(logits);
      last = new Float32Array(b * v);
      for (let i = 0; i < b; i++) last.set(all.subarray((i * k + k - 1) * v, (i * k + k) * v), i * v);
    }
    const layers = [];
    for (let l = 0; l < this.numLayers; l++) {
      const key = out[`present.${l}.key`];
      const value = out[`present.${l}.value`];
      if (!key || !value) throw new FilterError('model_invalid', `decoder returned no present.${l}.key/value`, {});
      layers.push({ key: ScoringEngine.raw(key), value: ScoringEngine.raw(value) });
    }
    return { lastLogits: last, present: { layers, rows: b, len: pastLen + s }, masks };
  }

  /** Rows per run so that the returned logits stay within the budget. */
  private rowsPerRun(newLen: number): number {
    const perRow = (this.logitsToKeepInput ? 1 : newLen) * Math.max(this.vocab, this.tokenizer.vocabSize);
    return Math.max(1, Math.min(this.opts.maxRowsPerRun, Math.floor(this.opts.logitsBudget / perRow)));
  }

  /** Copies the given rows of one or more caches (all of the same length) into a new cache. */
  private gatherKv(sources: readonly { kv: Kv; row: number }[]): Kv {
    const first = sources[0]?.kv;
    if (!first) throw new Error('gatherKv: no rows');
    const rowSize = this.kvHeads * first.len * this.headDim;
    const layers = [];
    for (let l = 0; l < this.numLayers; l++) {
      const key = this.allocFloat(sources.length * rowSize);
      const value = this.allocFloat(sources.length * rowSize);
      sources.forEach(({ kv, row }, i) => {
        const src = kv.layers[l] as { key: FloatData; value: FloatData };
        key.set(src.key.subarray(row * rowSize, (row + 1) * rowSize) as never, i * rowSize);
        value.set(src.value.subarray(row * rowSize, (row + 1) * rowSize) as never, i * rowSize);
      });
      layers.push({ key, value });
    }
    return { layers, rows: sources.length, len: first.len };
  }

  // ---- shared-prefix path --------------------------------------------------------------------------------------

  private async scoreShared(inputs: readonly EngineInput[]): Promise<EngineResult[]> {
    const metrics = this.metrics;
    const ids = inputs.map((p) => metrics.map((m) => this.tokenizer.promptIds(m, p.caption)));
    // The prefix stops at least one token short of every prompt so that each suffix yields its score logits.
    const prefixLen = ids.map((seqs) => Math.min(commonPrefixLength(seqs), ...seqs.map((s) => s.length - 1)));
    const { features } = await this.encodeImages(inputs.map((p) => p.pixelValues));

    const prefixIds = ids.map((seqs, p) => (seqs[0] as number[]).slice(0, prefixLen[p]));
    const suffixIds = ids.flatMap((seqs, p) => seqs.map((s) => s.slice(prefixLen[p])));
    // The template puts the image right after the system text, so it always falls in the shared prefix.
    if (suffixIds.some((s) => s.includes(IMAGE_PLACEHOLDER_ID))) {
      throw new FilterError('prompt_template_invalid', 'the image slot is not part of the shared prompt prefix', {});
    }
    const [prefixEmb, suffixEmb] = await Promise.all([this.embedRows(prefixIds), this.embedRows(suffixIds)]);
    const prefixes = prefixIds.map((r, p) => this.expand(r, prefixEmb[p] as FloatData, features[p]));

    // Prefill all prefixes to one common (left-padded) length so their caches can be mixed freely afterwards.
    const maxPrefix = Math.max(...prefixes.map((x) => x.len));
    const prefixCache: { kv: Kv; row: number; mask: Uint8Array }[] = [];
    const step = this.rowsPerRun(maxPrefix);
    for (let start = 0; start < prefixes.length; start += step) {
      const chunk = prefixes.slice(start, start + step);
      const rows: RunRow[] = chunk.map((x) => ({
        embeds: x.embeds,
        len: x.len,
        startPos: 0,
        pastMask: new Uint8Array(0),
      }));
      const out = await this.runDecoder(rows, undefined, maxPrefix, false);
      chunk.forEach((_, i) => prefixCache.push({ kv: out.present, row: i, mask: out.masks[i] as Uint8Array }));
    }

    // Suffix rows, one per (pair, metric), grouped by length.
    const all = suffixIds.map((s, r) => {
      const p = Math.floor(r / metrics.length);
      return {
        pair: p,
        metric: r % metrics.length,
        embeds: suffixEmb[r] as FloatData,
        len: s.length,
        startPos: (prefixes[p] as { len: number }).len,
      };
    });
    const order = [...all].sort((a, b) => a.len - b.len);
    const groups: (typeof all)[] = [];
    let cur: typeof all = [];
    let sum = 0;
    for (const row of order) {
      const n = cur.length + 1;
      const fits =
        cur.length === 0 ||
        (row.len * n <= this.opts.suffixPaddingSlack * (sum + row.len) && n <= this.rowsPerRun(row.len));
      if (!fits) {
        groups.push(cur);
        cur = [];
        sum = 0;
      }
      cur.push(row);
      sum += row.len;
    }
    if (cur.length > 0) groups.push(cur);

    const readers = all.map(
      () => new NumberReader(this.digits, (id) => this.tokenizer.tokenText(id), this.opts.maxNewTokens),
    );
    const scoreLogits: (Float32Array | undefined)[] = all.map(() => undefined);
    for (const group of groups) {
      const cache = group.map((r) => prefixCache[r.pair] as { kv: Kv; row: number; mask: Uint8Array });
      const out = await this.runDecoder(
        group.map((r, i) => ({
          embeds: r.embeds,
          len: r.len,
          startPos: r.startPos,
          pastMask: (cache[i] as { mask: Uint8Array }).mask,
        })),
        this.gatherKv(cache),
      );
      const index = group.map((r) => r.pair * metrics.length + r.metric);
      if (this.opts.captureScoreLogits) {
        index.forEach((r, i) => (scoreLogits[r] = out.lastLogits.slice(i * this.vocab, (i + 1) * this.vocab)));
      }
      await this.decodeGreedy(
        index.map((r) => readers[r] as NumberReader),
        out,
        group.map((r) => r.startPos + r.len),
      );
    }

    return inputs.map((_, p) => {
      const scores: Scores = {};
      const expected: Scores = {};
      const traces: Partial<Record<MetricShort, MetricTrace>> = {};
      metrics.forEach((m, mi) => {
        const r = p * metrics.length + mi;
        const reader = readers[r] as NumberReader;
        const short = SHORT[m];
        if (reader.score !== undefined) scores[short] = reader.score;
        const e = reader.expected;
        if (e !== undefined) expected[short] = e;
        traces[short] = {
          inputIds: (ids[p] as number[][])[mi] as number[],
          tokens: reader.tokens,
          digits: reader.digits,
          ...(scoreLogits[r] ? { scoreLogits: scoreLogits[r] } : {}),
        };
      });
      return { scores, expected, traces };
    });
  }

  /** Greedy digit decoding over the rows of one run, batching the steps over the rows still open. */
  private async decodeGreedy(readers: NumberReader[], first: RunOutput, nextPos: number[]): Promise<void> {
    let out = first;
    let rows = readers.map((_, i) => i); // rows of `out` -> index into readers
    const v = () => this.vocab;
    const feed = (logits: Float32Array, i: number, reader: NumberReader) => {
      const needProbs = reader.stepProbs.length < (reader.digits === '' ? 1 : 3);
      const tok = argmax(logits, i * v(), v());
      reader.push(tok, needProbs ? digitProbabilities(logits, i * v(), v(), this.digits) : undefined);
    };
    rows.forEach((r, i) => feed(out.lastLogits, i, readers[r] as NumberReader));
    const pos = [...nextPos];
    for (;;) {
      const open = rows.map((r, i) => ({ r, i })).filter(({ r }) => !(readers[r] as NumberReader).done);
      if (open.length === 0) return;
      const tokens = open.map(({ r }) => [(readers[r] as NumberReader).tokens.at(-1) as number]);
      const emb = await this.embedRows(tokens);
      // Every row still open: the cache can be fed back as it is.
      const kv =
        open.length === out.present.rows
          ? out.present
          : this.gatherKv(open.map(({ i }) => ({ kv: out.present, row: i })));
      out = await this.runDecoder(
        open.map(({ r, i }, k) => ({
          embeds: emb[k] as FloatData,
          len: 1,
          startPos: pos[r] as number,
          pastMask: out.masks[i] as Uint8Array,
        })),
        kv,
      );
      open.forEach(({ r }) => (pos[r] = (pos[r] as number) + 1));
      rows = open.map(({ r }) => r);
      rows.forEach((r, i) => feed(out.lastLogits, i, readers[r] as NumberReader));
    }
  }

  // ---- reference mode ------------------------------------------------------------------------------------------

  private async scoreReference(inputs: readonly EngineInput[]): Promise<EngineResult[]> {
    const results: EngineResult[] = inputs.map(() => ({ scores: {}, expected: {}, traces: {} }));
    for (const metric of this.metrics) {
      const short = SHORT[metric];
      // The reference's generate() encodes the images again on every metric pass.
      const { features } = await this.encodeImages(inputs.map((p) => p.pixelValues));
      const ids = inputs.map((p) => this.tokenizer.promptIds(metric, p.caption));
      const emb = await this.embedRows(ids);
      const seqs = ids.map((r, p) => this.expand(r, emb[p] as FloatData, features[p]));
      const step = this.rowsPerRun(Math.max(...seqs.map((x) => x.len)));
      for (let start = 0; start < seqs.length; start += step) {
        const chunk = seqs.slice(start, start + step);
        const out = await this.runDecoder(
          chunk.map((x) => ({ embeds: x.embeds, len: x.len, startPos: 0, pastMask: new Uint8Array(0) })),
          undefined,
        );
        const first = chunk.map((_, i) => argmax(out.lastLogits, i * this.vocab, this.vocab));
        const emb2 = await this.embedRows(first.map((t) => [t]));
        // generate() runs the second step for the whole batch (finished rows just get padding).
        const out2 = await this.runDecoder(
          chunk.map((x, i) => ({
            embeds: emb2[i] as FloatData,
            len: 1,
            startPos: x.len,
            pastMask: out.masks[i] as Uint8Array,
          })),
          out.present,
        );
        chunk.forEach((_, i) => {
          const p = start + i;
          const t1 = first[i] as number;
          const tokens = this.eos.has(t1) ? [t1] : [t1, argmax(out2.lastLogits, i * this.vocab, this.vocab)];
          const text = this.tokenizer.decode(tokens.filter((t) => !this.eos.has(t)));
          const n = pythonIntOfFirstLine(text);
          const res = results[p] as EngineResult;
          if (n !== undefined) res.scores[short] = Math.min(100, Math.max(0, n));
          res.traces[short] = {
            inputIds: ids[p] as number[],
            tokens,
            digits: n === undefined ? '' : String(n),
            ...(this.opts.captureScoreLogits
              ? { scoreLogits: out.lastLogits.slice(i * this.vocab, (i + 1) * this.vocab) }
              : {}),
          };
        });
      }
    }
    return results;
  }
}

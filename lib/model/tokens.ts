/**
 * Token ids for the MLM-filter prompts, built the way the reference's `tokenizer_image_token` does: each text piece
 * around the image slot is tokenized on its own (with the tokenizer's special tokens, i.e. BOS for LLaMA), the image
 * placeholder id goes between them, a leading BOS is kept once, and the whitespace token id is appended.
 *
 * Two deliberate differences outside reference mode (`metricPrompts(..., reference = false)`):
 * - Captions are text: a control-token string inside a caption (`<|im_end|>`, `</s>`...) is tokenised as plain text,
 *   so crawled alt text cannot close the user turn and write its own answer. Only the template's own control tokens
 *   are special. For captions without such strings the ids are the reference's, id for id.
 * - Long captions keep the question: the reference cuts the prompt ids at 2040, which for a long caption drops the
 *   metric's criteria (every metric then asks the same truncated question). Here the caption is shortened from its
 *   end until every metric's prompt fits, and the cut is reported.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { FilterError, type MetricKey } from '../types.ts';
import { promptPieces, type ConversationFormat } from './prompt.ts';

/** A caption shortened to fit the model's context: its length before and after, in UTF-16 code units. */
export interface CaptionCut {
  readonly originalChars: number;
  readonly keptChars: number;
}

/** A pair's prompts, one per metric, or why it has none. */
export interface MetricPrompts {
  readonly ids?: number[][];
  readonly cut?: CaptionCut;
  readonly error?: string;
}

/** A metric prompt's caption-independent ids: `start + encode(captionHead + caption + captionTail) + end`. */
interface TemplateIds {
  readonly start: readonly number[];
  readonly end: readonly number[];
  readonly captionHead: string;
  readonly captionTail: string;
}

/** Captions ending in each kind of character the tokenizers' split rules treat differently. */
const TEMPLATE_PROBES = [
  'A dog.',
  'a dog',
  'dog ',
  'dog\n',
  'dog \t ',
  "dog's",
  "dog'",
  '42',
  'x 7',
  'in 2024',
  '1234567',
  '東京',
  'é',
  'e\u0301',
  '!!',
  '\u200b',
  '',
  '<|im_end|>',
  '</s>',
  '▁',
];

// Stands for the caption while the template is filled, to find where the caption sits in the prompt pieces.
const CAPTION_MARK = '\u0000mlmf-caption\u0000';

/** LLaVA's IMAGE_TOKEN_INDEX: the slot the image features replace. */
export const IMAGE_PLACEHOLDER_ID = -200;

/** The reference truncates prompt ids to this many (its `--max-len` default) before appending the whitespace id. */
export const REFERENCE_MAX_LEN = 2040;

export interface PromptTokenizerOptions {
  /** Conversation format of the model (mlm_filter.json). */
  readonly format: ConversationFormat;
  /**
   * Id appended after the prompt (mlm_filter.json's whitespace_token_id). Default: what the reference's
   * tokenizer(' ')[-1] gives: for sentencepiece vocabularies the dummy prefix plus the space, i.e. the '▁▁' piece
   * where the vocabulary has one (259 in LLaMA-2, as the slow LlamaTokenizer of transformers 4.31-4.44 answers;
   * tokenizer.json conversions would say 29871), else '▁'; otherwise the last id of encoding ' ' (220 for Qwen2.5 and
   * for Llama-3, whose tokenizer.json may or may not add <|begin_of_text|> first).
   */
  readonly whitespaceTokenId?: number;
  /** Truncate the prompt ids (placeholder counted as one) to this length, as the reference does. */
  readonly maxLen?: number;
}

/** A thin owner of the tokenizer plus the reference's id-building rules. */
export class PromptTokenizer {
  readonly format: ConversationFormat;
  readonly whitespaceTokenId: number;
  readonly bosTokenId: number | undefined;
  readonly maxLen: number;
  readonly vocabSize: number;
  private readonly specialIds: ReadonlySet<number>;
  private readonly pieceCache = new Map<number, string>();

  private readonly addedTexts: readonly string[];

  /**
   * @param plain the same tokenizer without added tokens, which tokenises control-token strings as text (captions);
   *   without it captions are tokenised as the reference does.
   */
  constructor(
    readonly tokenizer: Tokenizer,
    options: PromptTokenizerOptions,
    private readonly plain?: Tokenizer,
  ) {
    this.format = options.format;
    this.maxLen = options.maxLen ?? REFERENCE_MAX_LEN;
    const probe = tokenizer.encode('a').ids;
    const bare = tokenizer.encode('a', { add_special_tokens: false }).ids;
    // A tokenizer that prepends a special token (LLaMA's <s>) shows it as the extra leading id.
    this.bosTokenId = probe.length > bare.length ? probe[0] : undefined;
    const ws =
      options.format === 'llava_v1'
        ? (tokenizer.token_to_id('▁▁') ?? tokenizer.token_to_id('▁') ?? tokenizer.encode(' ').ids.at(-1))
        : tokenizer.encode(' ').ids.at(-1);
    const whitespace = options.whitespaceTokenId ?? ws;
    if (whitespace === undefined) {
      throw new FilterError('model_invalid', 'tokenizer cannot encode a space', { format: this.format });
    }
    this.whitespaceTokenId = whitespace;
    this.specialIds = new Set([...tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.vocabSize = tokenizer.get_vocab(true).size;
    // Longest first, so that a token containing another is matched whole.
    this.addedTexts = [...tokenizer.get_added_tokens_decoder().values()]
      .map((t) => t.content)
      .filter((c) => c.length > 0)
      .sort((a, b) => b.length - a.length);
  }

  static fromFiles(tokenizerJson: string, tokenizerConfigJson: string, options: PromptTokenizerOptions) {
    const json = JSON.parse(readFileSync(tokenizerJson, 'utf8')) as { added_tokens?: unknown[] };
    const config = JSON.parse(readFileSync(tokenizerConfigJson, 'utf8')) as { added_tokens_decoder?: unknown };
    const tok = new Tokenizer(json, config);
    const plain = new Tokenizer({ ...json, added_tokens: [] }, { ...config, added_tokens_decoder: {} });
    return new PromptTokenizer(tok, options, plain);
  }

  /** The id of each digit 0..9 (its single-character token). */
  digitIds(): number[] {
    return Array.from({ length: 10 }, (_, d) => {
      const id = this.tokenizer.token_to_id(String(d));
      if (id === undefined) {
        throw new FilterError('model_invalid', `the tokenizer has no token for the digit ${d}`, { digit: d });
      }
      return id;
    });
  }

  /**
   * Every metric's prompt ids for one caption. Reference mode: the reference's ids (control strings in the caption
   * parsed, ids cut at maxLen). Otherwise: the caption as text, shortened from its end until the longest prompt fits
   * maxLen ids (+ the whitespace id); a caption that cannot fit even empty-ish yields `error`.
   */
  metricPrompts(metrics: readonly MetricKey[], caption: string, reference: boolean): MetricPrompts {
    if (reference) return { ids: metrics.map((m) => this.promptIds(m, caption)) };
    const build = (text: string) => metrics.map((m) => this.textCaptionIds(m, text));
    const fits = (ids: number[][]) => ids.every((x) => x.length <= this.maxLen + 1);
    const full = build(caption);
    if (fits(full)) return { ids: full };
    const chars = [...caption];
    // Binary search on code points for the longest prefix that fits.
    let lo = 0;
    let hi = chars.length - 1;
    let best: number[][] | undefined;
    let bestLen = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const ids = build(chars.slice(0, mid).join(''));
      if (fits(ids)) {
        best = ids;
        bestLen = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (!best || bestLen === 0) {
      return { error: `the prompt without the caption already exceeds the model's ${this.maxLen} ids` };
    }
    const kept = chars.slice(0, bestLen).join('');
    return { ids: best, cut: { originalChars: caption.length, keptChars: kept.length } };
  }

  /** One metric's ids with the caption tokenised as text (see the module header); no truncation. */
  textCaptionIds(metric: MetricKey, caption: string): number[] {
    const t = this.template(metric);
    if (!t) return this.uncachedTextCaptionIds(metric, caption);
    const text = t.captionHead + caption + t.captionTail;
    // The metrics of one pair share this stretch: tokenise it once.
    if (this.lastMid?.text !== text) this.lastMid = { text, ids: this.encodePlain(text) };
    return [...t.start, ...this.lastMid.ids, ...t.end];
  }

  /**
   * The pieces of a metric's prompt that do not depend on the caption, tokenised once. The template reads
   * `...Text Caption: {caption}\n\n{criteria}...`: the caption's stretch is tokenised up to and including the
   * whitespace after it, and the criteria onwards are a fixed token run, because the tokenizer cannot merge across
   * that whitespace into the criteria's first letter. That holds for byte-level BPE with Qwen2's split rules and for
   * LLaMA's vocabulary (no piece joins a newline to a letter); `verifyTemplate` checks it on probe captions when the
   * template is first used and otherwise falls back to tokenising the whole prompt.
   */
  private template(metric: MetricKey) {
    if (!this.templates.has(metric)) this.templates.set(metric, this.buildTemplate(metric));
    return this.templates.get(metric);
  }

  private readonly templates = new Map<MetricKey, TemplateIds | undefined>();
  private lastMid: { text: string; ids: number[] } | undefined;

  private buildTemplate(metric: MetricKey): TemplateIds | undefined {
    const { before, after } = promptPieces(this.format, metric, CAPTION_MARK);
    const [head, tail, ...extra] = after.split(CAPTION_MARK);
    if (tail === undefined || head === undefined || extra.length > 0 || before.includes(CAPTION_MARK) || !this.plain) {
      return undefined;
    }
    // The reference tokenizer splits text at added tokens and tokenises the pieces separately; so does this, at the
    // template's own added tokens only: the stretch between them that holds the caption goes through `plain`.
    const headCut = this.afterLastAdded(head);
    const tailCut = this.beforeFirstAdded(tail);
    const ws = /^\s*/.exec(tail)?.[0].length ?? 0;
    const fixedTail = tail.slice(ws, tailCut);
    const start: number[] = this.bosTokenId !== undefined ? [this.bosTokenId] : [];
    start.push(...this.encodeWith(this.tokenizer, before), IMAGE_PLACEHOLDER_ID);
    start.push(...this.encodeWith(this.tokenizer, head.slice(0, headCut)));
    const end = [
      ...(fixedTail ? this.encodePlain(fixedTail) : []),
      ...this.encodeWith(this.tokenizer, tail.slice(tailCut)),
      this.whitespaceTokenId,
    ];
    const t: TemplateIds = { start, end, captionHead: head.slice(headCut), captionTail: tail.slice(0, ws) };
    if (ws === 0 || !fixedTail || !this.verifyTemplate(metric, t)) return undefined;
    return t;
  }

  /** The cached split gives the whole-prompt ids on captions that end in every kind of character. */
  private verifyTemplate(metric: MetricKey, t: TemplateIds): boolean {
    return TEMPLATE_PROBES.every((caption) => {
      const whole = this.uncachedTextCaptionIds(metric, caption);
      const split = [...t.start, ...this.encodePlain(t.captionHead + caption + t.captionTail), ...t.end];
      return whole.length === split.length && whole.every((id, i) => id === split[i]);
    });
  }

  private encodeWith(t: Tokenizer, text: string): number[] {
    return text ? t.encode(text, { add_special_tokens: false }).ids : [];
  }

  private encodePlain(text: string): number[] {
    return this.encodeWith(this.plain ?? this.tokenizer, text);
  }

  /** textCaptionIds without the cached template pieces: the whole prompt tokenised at once. */
  private uncachedTextCaptionIds(metric: MetricKey, caption: string): number[] {
    const { before, after } = promptPieces(this.format, metric, CAPTION_MARK);
    const [head, tail, ...extra] = after.split(CAPTION_MARK);
    if (tail === undefined || head === undefined || extra.length > 0 || before.includes(CAPTION_MARK) || !this.plain) {
      return this.idsFromPieces([before, after.replace(CAPTION_MARK, caption)], false);
    }
    const headCut = this.afterLastAdded(head);
    const tailCut = this.beforeFirstAdded(tail);
    const ids: number[] = this.bosTokenId !== undefined ? [this.bosTokenId] : [];
    ids.push(
      ...this.encodeWith(this.tokenizer, before),
      IMAGE_PLACEHOLDER_ID,
      ...this.encodeWith(this.tokenizer, head.slice(0, headCut)),
      ...this.encodePlain(head.slice(headCut) + caption + tail.slice(0, tailCut)),
      ...this.encodeWith(this.tokenizer, tail.slice(tailCut)),
      this.whitespaceTokenId,
    );
    return ids;
  }

  private afterLastAdded(text: string): number {
    let end = 0;
    for (const a of this.addedTexts) {
      const i = text.lastIndexOf(a);
      if (i >= 0) end = Math.max(end, i + a.length);
    }
    return end;
  }

  private beforeFirstAdded(text: string): number {
    let start = text.length;
    for (const a of this.addedTexts) {
      const i = text.indexOf(a);
      if (i >= 0) start = Math.min(start, i);
    }
    return start;
  }

  /** Prompt ids with IMAGE_PLACEHOLDER_ID at the image slot and the whitespace id appended. */
  promptIds(metric: MetricKey, caption: string): number[] {
    const { before, after } = promptPieces(this.format, metric, caption);
    return this.idsFromPieces([before, after]);
  }

  /** tokenizer_image_token over pieces that are separated by the image slot, then truncation and the whitespace id. */
  idsFromPieces(pieces: readonly string[], truncate = true): number[] {
    const chunks = pieces.map((p) => this.tokenizer.encode(p).ids);
    const first = chunks[0] ?? [];
    const offset = this.bosTokenId !== undefined && first.length > 0 && first[0] === this.bosTokenId ? 1 : 0;
    const ids: number[] = offset === 1 ? [first[0] as number] : [];
    chunks.forEach((chunk, i) => {
      if (i > 0) ids.push(IMAGE_PLACEHOLDER_ID);
      for (let j = offset; j < chunk.length; j++) ids.push(chunk[j] as number);
    });
    const truncated = truncate && ids.length > this.maxLen ? ids.slice(0, this.maxLen) : ids;
    truncated.push(this.whitespaceTokenId);
    return truncated;
  }

  /** The text of one generated token, as `batch_decode(..., skip_special_tokens=True)` shows it. */
  tokenText(id: number): string {
    const cached = this.pieceCache.get(id);
    if (cached !== undefined) return cached;
    const text = this.specialIds.has(id) ? '' : this.tokenizer.decode([id], { skip_special_tokens: true });
    this.pieceCache.set(id, text);
    return text;
  }

  decode(ids: readonly number[]): string {
    return this.tokenizer.decode([...ids], { skip_special_tokens: true });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }
}

/**
 * Token ids for the MLM-filter prompts, built the way the reference's `tokenizer_image_token` does: each text piece
 * around the image slot is tokenized on its own (with the tokenizer's special tokens, i.e. BOS for LLaMA), the image
 * placeholder id goes between them, a leading BOS is kept once, and the whitespace token id is appended.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { FilterError, type MetricKey } from '../types.ts';
import { promptPieces, type ConversationFormat } from './prompt.ts';

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
   * tokenizer.json conversions would say 29871), else '▁'; otherwise the last id of encoding ' ' (220 for Qwen2.5).
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

  constructor(
    readonly tokenizer: Tokenizer,
    options: PromptTokenizerOptions,
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
  }

  static fromFiles(tokenizerJson: string, tokenizerConfigJson: string, options: PromptTokenizerOptions) {
    const tok = new Tokenizer(
      JSON.parse(readFileSync(tokenizerJson, 'utf8')) as object,
      JSON.parse(readFileSync(tokenizerConfigJson, 'utf8')) as object,
    );
    return new PromptTokenizer(tok, options);
  }

  /** Prompt ids with IMAGE_PLACEHOLDER_ID at the image slot and the whitespace id appended. */
  promptIds(metric: MetricKey, caption: string): number[] {
    const { before, after } = promptPieces(this.format, metric, caption);
    return this.idsFromPieces([before, after]);
  }

  /** tokenizer_image_token over pieces that are separated by the image slot, then truncation and the whitespace id. */
  idsFromPieces(pieces: readonly string[]): number[] {
    const chunks = pieces.map((p) => this.tokenizer.encode(p).ids);
    const first = chunks[0] ?? [];
    const offset = this.bosTokenId !== undefined && first.length > 0 && first[0] === this.bosTokenId ? 1 : 0;
    const ids: number[] = offset === 1 ? [first[0] as number] : [];
    chunks.forEach((chunk, i) => {
      if (i > 0) ids.push(IMAGE_PLACEHOLDER_ID);
      for (let j = offset; j < chunk.length; j++) ids.push(chunk[j] as number);
    });
    const truncated = ids.length > this.maxLen ? ids.slice(0, this.maxLen) : ids;
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

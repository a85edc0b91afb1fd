/**
 * The MLM-filter prompts, built byte-identically to the reference scorer (Victorwz/MLM_Filter,
 * mlm_filter_scoring_datacomp_batch_inference_v2.py + LLaVA-Unified's conversation templates).
 *
 * The text comes from the vendored mlm-filter-prompts.json (MIT). In that JSON the conversation `prompt` and
 * `user_turn` strings spell a newline as the two characters `\n` (they were transcribed from Python source); the
 * reference's strings contain real newlines (`"<image>\n" + text`, `"<|im_start|>system\nYou are..."`), so those
 * escapes are turned into newlines here. The instruction template and criteria already hold real newlines.
 */
import { FilterError, METRICS, type MetricKey } from '../types.ts';
import prompts from './mlm-filter-prompts.json' with { type: 'json' };

/**
 * The conversation formats of the released checkpoints (LLaVA-Unified's llava/conversation.py): qwen_instruct (MPT
 * separator style), llava_v1 and llama_3 (separator style TWO, sep " "; llama_3's system text says "user" where
 * llava_v1's says "human").
 */
export const CONVERSATION_FORMATS = ['qwen_instruct', 'llava_v1', 'llama_3'] as const;
export type ConversationFormat = (typeof CONVERSATION_FORMATS)[number];

/** The image placeholder of the template (LLaVA's DEFAULT_IMAGE_TOKEN). */
export const IMAGE_TOKEN = '<image>';

/** The two text pieces around the template's single image slot. The full prompt is `before + '<image>' + after`. */
export interface PromptPieces {
  readonly before: string;
  readonly after: string;
}

const METRIC_KEYS: readonly string[] = METRICS.map((m) => m.key);

function unescapeNewlines(s: string): string {
  return s.replaceAll('\\n', '\n');
}

/** Substitutes `{name}` fields in one pass, so text inserted for one field is never scanned for another. */
function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{([a-z_]+)\}/g, (whole, name: string) =>
    Object.hasOwn(values, name) ? (values[name] as string) : whole,
  );
}

export function isConversationFormat(value: string): value is ConversationFormat {
  return (CONVERSATION_FORMATS as readonly string[]).includes(value);
}

function checkArgs(format: string, metric: string): void {
  if (!isConversationFormat(format)) {
    throw new FilterError('unknown_format', `unknown conversation format '${format}'`, {
      format,
      known: CONVERSATION_FORMATS,
    });
  }
  if (!METRIC_KEYS.includes(metric)) {
    throw new FilterError('unknown_metric', `unknown metric '${metric}'`, { metric, known: METRIC_KEYS });
  }
}

/** The instruction text of one metric for one caption (the reference's LLAVA_INSTRUCTION_TEMPLATE.format(...)). */
export function buildInstruction(metric: MetricKey, caption: string): string {
  checkArgs('qwen_instruct', metric);
  return fill(prompts.instruction_template, {
    caption,
    criteria: prompts.criteria[metric],
    aspect: metric.replaceAll('_', ' '),
  });
}

/**
 * The prompt split at the template's image slot. Token ids are built from these pieces (never by splitting the
 * final string), so a caption that contains the text `<image>` stays text.
 */
export function promptPieces(format: ConversationFormat, metric: MetricKey, caption: string): PromptPieces {
  checkArgs(format, metric);
  const conversation = unescapeNewlines(prompts.conversation_formats[format].prompt);
  const userTurn = unescapeNewlines(prompts.user_turn);
  const [convBefore, convAfter, ...extraConv] = conversation.split('{user_turn}');
  const [turnBefore, turnAfter, ...extraTurn] = userTurn.split(IMAGE_TOKEN);
  if (convAfter === undefined || turnAfter === undefined || extraConv.length > 0 || extraTurn.length > 0) {
    // The vendored JSON is part of this package; this guards edits to it.
    throw new FilterError(
      'prompt_template_invalid',
      'prompt template must hold exactly one {user_turn} and one <image>',
      {
        format,
      },
    );
  }
  const instruction = buildInstruction(metric, caption);
  return {
    before: (convBefore as string) + (turnBefore as string),
    after: fill(turnAfter, { instruction }) + convAfter,
  };
}

/** The exact prompt string the reference feeds its tokenizer for this format, metric and caption. */
export function buildPrompt(format: ConversationFormat, metric: MetricKey, caption: string): string {
  const { before, after } = promptPieces(format, metric, caption);
  return before + IMAGE_TOKEN + after;
}

/** Provenance of the vendored prompt text (for `mlm-filter prompt --verbose` and audit metadata). */
export const PROMPT_SOURCE: { readonly source: string; readonly license: string } = {
  source: prompts.source,
  license: prompts.license,
};

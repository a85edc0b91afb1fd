/**
 * The exported model directory (DESIGN.md, fixed layout): resolving a path or hub id, checking the files, and
 * reading the configuration the scorer needs.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { FilterError, type ModelInfo, type PreprocessSpec } from '../types.ts';
import { isConversationFormat, type ConversationFormat } from './prompt.ts';

export type ModelDtype = 'fp32' | 'fp16';

/** The command that produces a model directory, quoted in every error about a missing or broken one. */
export function exportCommand(source: string, outDir: string): string {
  return `tools/export/export.sh ${source} --out ${outDir}`;
}

const HUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Where a hub id's export is cached: `$MLMF_MODEL_CACHE/<owner>--<name>` or `~/.cache/mlm-filter/models/...`. */
export function cacheDirFor(hubId: string, env: NodeJS.ProcessEnv = process.env): string {
  const root = env.MLMF_MODEL_CACHE || join(homedir(), '.cache', 'mlm-filter', 'models');
  return join(root, hubId.replace('/', '--'));
}

/**
 * Resolves a model argument: an existing directory is used as is; `owner/name` that is not a path resolves to its
 * cached export, else fails with 'model_not_exported' saying what to run.
 */
export function resolveModelDir(model: string, env: NodeJS.ProcessEnv = process.env): string {
  if (existsSync(model)) {
    if (!statSync(model).isDirectory()) {
      throw new FilterError('model_invalid', `model path ${model} is not a directory`, { model });
    }
    return resolve(model);
  }
  if (HUB_ID.test(model)) {
    const cached = cacheDirFor(model, env);
    if (existsSync(cached)) return cached;
    throw new FilterError(
      'model_not_exported',
      `model ${model} has no ONNX export at ${cached}; create it with: ${exportCommand(model, cached)}`,
      { model, expectedDir: cached, command: exportCommand(model, cached) },
    );
  }
  throw new FilterError('model_invalid', `model directory ${model} does not exist`, { model });
}

/**
 * ONNX files of a model directory. `scorer` (onnx/mlm_scorer[_fp16].onnx) is the one-pass scoring graph the scorer
 * runs; the transformers.js-style trio (vision_encoder, embed_tokens, decoder_model_merged) is for users who run the
 * model elsewhere and is optional here.
 */
export const ONNX_PARTS = ['scorer', 'vision_encoder', 'embed_tokens', 'decoder_model_merged'] as const;
export type OnnxPart = (typeof ONNX_PARTS)[number];
const FILE_NAMES: Record<OnnxPart, string> = {
  scorer: 'mlm_scorer',
  vision_encoder: 'vision_encoder',
  embed_tokens: 'embed_tokens',
  decoder_model_merged: 'decoder_model_merged',
};

export function onnxFile(dir: string, part: OnnxPart, dtype: ModelDtype): string {
  return join(dir, 'onnx', `${FILE_NAMES[part]}${dtype === 'fp16' ? '_fp16' : ''}.onnx`);
}

/** What the scorer reads from the directory. */
export interface ModelDirInfo {
  readonly dir: string;
  readonly dtype: ModelDtype;
  readonly files: Record<OnnxPart, string>;
  readonly tokenizerJson: string;
  readonly tokenizerConfigJson: string;
  readonly format: ConversationFormat;
  readonly whitespaceTokenId: number | undefined;
  readonly imageTokenCount: number | undefined;
  /** mlm_filter.json `score_whitespace_lead`: the model may answer with the whitespace token before the digits. */
  readonly whitespaceLead: boolean;
  /**
   * How the answer is read (mlm_filter.json `readout`): `digit_chains` (digit by digit; the default for exports that
   * predate the field) or `single_token_numbers` (llama_3: every number 0..100 is one token).
   */
  readonly readout: Readout;
  /** single_token_numbers: the ids of the tokens "0".."100" (mlm_filter.json `number_token_ids`). */
  readonly numberTokenIds: readonly number[] | undefined;
  readonly model: ModelInfo;
  /** Preprocessing the model was trained with (pad to square when mlm_filter.json says so). */
  readonly preprocess: PreprocessSpec;
  /** The same without padding to square (reference mode: the reference scorer skips it). */
  readonly preprocessNoPad: PreprocessSpec;
  /** config.json, raw (for the decoder's layer/head counts when the ONNX metadata has symbolic dims). */
  readonly config: Record<string, unknown>;
  readonly mlmFilter: Record<string, unknown>;
}

type Json = Record<string, unknown>;

export const READOUTS = ['digit_chains', 'single_token_numbers'] as const;
export type Readout = (typeof READOUTS)[number];

/**
 * The readout of mlm_filter.json, checked: single_token_numbers needs the 101 distinct ids of "0".."100", inside the
 * vocabulary when config.json says its size (an id past it would fail inside the graph, batch after batch).
 */
function readoutOf(
  mlm: Json,
  vocabSize: number | undefined,
  dir: string,
): { readout: Readout; numberTokenIds: number[] | undefined } {
  const readout = mlm.readout ?? 'digit_chains';
  if (!(READOUTS as readonly unknown[]).includes(readout)) {
    throw new FilterError('model_invalid', `mlm_filter.json names an unknown readout ${JSON.stringify(readout)}`, {
      dir,
      readout,
      known: READOUTS,
    });
  }
  if (readout === 'digit_chains') return { readout, numberTokenIds: undefined };
  const ids = mlm.number_token_ids;
  const valid =
    Array.isArray(ids) &&
    ids.length === 101 &&
    ids.every(
      (x) => Number.isInteger(x) && (x as number) >= 0 && (vocabSize === undefined || (x as number) < vocabSize),
    ) &&
    new Set(ids).size === 101;
  if (!valid) {
    throw new FilterError(
      'model_invalid',
      'mlm_filter.json: readout single_token_numbers needs number_token_ids, the 101 distinct ids of "0".."100" ' +
        'in the vocabulary; re-export the model',
      { dir, vocabSize },
    );
  }
  return { readout: 'single_token_numbers', numberTokenIds: ids as number[] };
}

function readJson(path: string, dir: string): Json {
  try {
    const v: unknown = JSON.parse(readFileSync(path, 'utf8'));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (err) {
    throw new FilterError(
      'model_invalid',
      `cannot read ${path}: ${(err as Error).message}`,
      { dir, file: path },
      {
        cause: err,
      },
    );
  }
}

function pick<T>(obj: Json, keys: readonly string[], guard: (v: unknown) => v is T): T | undefined {
  for (const k of keys) if (guard(obj[k])) return obj[k];
  return undefined;
}
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isStr = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isTriple = (v: unknown): v is [number, number, number] =>
  Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === 'number');

const RESAMPLE: Record<number, PreprocessSpec['resample']> = { 0: 'nearest', 2: 'bilinear', 3: 'bicubic' };

/** PreprocessSpec from preprocessor_config.json (SigLIP: square resize; CLIP: shortest edge + centre crop). */
export function preprocessFromConfig(pre: Json, padToSquare: boolean, dir = ''): PreprocessSpec {
  const size = pre.size;
  const crop = pre.crop_size;
  const sideOf = (v: unknown): number | undefined => {
    if (isNum(v)) return v;
    if (v && typeof v === 'object') {
      const o = v as Json;
      if (isNum(o.height) && isNum(o.width)) {
        if (o.height !== o.width) {
          throw new FilterError('model_invalid', 'only square model inputs are supported', { dir, size: o });
        }
        return o.height;
      }
      if (isNum(o.shortest_edge)) return o.shortest_edge;
    }
    return undefined;
  };
  const centerCrop = pre.do_center_crop === true && crop !== undefined;
  const side = centerCrop ? sideOf(crop) : sideOf(size);
  const mean = pre.image_mean;
  const std = pre.image_std;
  if (side === undefined || !isTriple(mean) || !isTriple(std)) {
    throw new FilterError('model_invalid', 'preprocessor_config.json lacks size/crop_size, image_mean or image_std', {
      dir,
    });
  }
  return {
    size: side,
    mean,
    std,
    rescale: isNum(pre.rescale_factor) ? pre.rescale_factor : 1 / 255,
    padToSquare,
    centerCrop: !padToSquare && centerCrop,
    resample: RESAMPLE[isNum(pre.resample) ? pre.resample : 3] ?? 'bicubic',
  };
}

/** Checks the directory for the fixed layout and reads its configuration; missing pieces fail with 'model_invalid'. */
export function readModelDir(dir: string, dtype: ModelDtype): ModelDirInfo {
  const files = Object.fromEntries(ONNX_PARTS.map((p) => [p, onnxFile(dir, p, dtype)])) as Record<OnnxPart, string>;
  const required = [
    files.scorer,
    ...['tokenizer.json', 'tokenizer_config.json', 'config.json', 'preprocessor_config.json', 'mlm_filter.json'].map(
      (f) => join(dir, f),
    ),
  ];
  const missing = required.filter((f) => !existsSync(f));
  if (missing.length > 0) {
    const hint = missing.includes(files.scorer)
      ? ' (exports made before the one-pass scorer lack onnx/mlm_scorer*.onnx: re-export)'
      : '';
    const fp16Hint =
      dtype === 'fp16' && missing.every((f) => f.endsWith('_fp16.onnx'))
        ? ' (this export has no fp16 files: use dtype fp32 or re-export with fp16)'
        : '';
    throw new FilterError(
      'model_invalid',
      `model directory ${dir} is incomplete, missing: ${missing.map((f) => f.slice(dir.length + 1)).join(', ')}` +
        `${fp16Hint || hint}; ` +
        `re-export it with: ${exportCommand('<checkpoint-dir-or-hub-id>', dir)}`,
      { dir, missing, dtype, command: exportCommand('<checkpoint-dir-or-hub-id>', dir) },
    );
  }
  const mlm = readJson(join(dir, 'mlm_filter.json'), dir);
  const config = readJson(join(dir, 'config.json'), dir);
  const pre = readJson(join(dir, 'preprocessor_config.json'), dir);
  const format = pick(mlm, ['conversation_format', 'conv_mode', 'format'], isStr);
  if (format === undefined || !isConversationFormat(format)) {
    throw new FilterError('model_invalid', `mlm_filter.json names no supported conversation format (${format})`, {
      dir,
      format,
    });
  }
  const modelObj = (mlm.model && typeof mlm.model === 'object' ? mlm.model : {}) as Json;
  const name = pick(modelObj, ['name'], isStr) ?? pick(mlm, ['model_name', 'name'], isStr) ?? dir;
  const revision = pick(modelObj, ['revision'], isStr) ?? pick(mlm, ['revision', 'model_revision'], isStr) ?? 'unknown';
  const pad =
    pick(mlm, ['pad_to_square'], isBool) ??
    (pick(mlm, ['image_aspect_ratio'], isStr) ?? pick(config, ['image_aspect_ratio'], isStr)) === 'pad';
  return {
    dir,
    dtype,
    files,
    tokenizerJson: join(dir, 'tokenizer.json'),
    tokenizerConfigJson: join(dir, 'tokenizer_config.json'),
    format,
    whitespaceTokenId: pick(mlm, ['whitespace_token_id', 'after_prompt_token_id'], isNum),
    imageTokenCount: pick(mlm, ['image_token_count', 'num_image_tokens', 'image_tokens'], isNum),
    whitespaceLead: pick(mlm, ['score_whitespace_lead'], isBool) ?? false,
    ...readoutOf(mlm, pick(config, ['vocab_size'], isNum), dir),
    model: { name, revision },
    preprocess: preprocessFromConfig(pre, pad, dir),
    preprocessNoPad: preprocessFromConfig(pre, false, dir),
    config,
    mlmFilter: mlm,
  };
}

/** Creating the three onnxruntime sessions of a model directory, with an explicit, logged CPU fallback. */
import * as ort from 'onnxruntime-node';
import { FilterError } from '../types.ts';
import { ScoringEngine, type EngineOptions, type EngineSessions } from './engine.ts';
import { readModelDir, type ModelDirInfo, type ModelDtype } from './model-dir.ts';
import { PromptTokenizer } from './tokens.ts';

export type ExecutionProvider = 'cuda' | 'webgpu' | 'cpu';

export interface SessionOptions {
  /** Accelerator to run on; falls back to 'cpu' (logged) when it cannot be created here. Default 'cpu'. */
  readonly executionProvider?: ExecutionProvider;
  /** Threads inside one operator (CPU EP). Default: onnxruntime's choice (all cores). */
  readonly intraOpThreads?: number;
  /** Threads across independent operators. Default: onnxruntime's choice. */
  readonly interOpThreads?: number;
  readonly dtype?: ModelDtype;
  /**
   * Diagnostics: onnxruntime's profiler on, each session writing `<prefix>-vision|embed|decoder_<time>.json` (Chrome
   * trace format: every node's run time and provider) when the engine is released. Off by default: it costs time.
   */
  readonly profilePrefix?: string;
}

export type LogFn = (level: 'info' | 'warn', message: string, context: Record<string, unknown>) => void;

export interface LoadedEngine {
  readonly engine: ScoringEngine;
  readonly info: ModelDirInfo;
  /** The provider the sessions actually run on. */
  readonly executionProvider: ExecutionProvider;
}

async function createAll(info: ModelDirInfo, ep: ExecutionProvider, opts: SessionOptions): Promise<EngineSessions> {
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    ...(opts.intraOpThreads ? { intraOpNumThreads: opts.intraOpThreads } : {}),
    ...(opts.interOpThreads ? { interOpNumThreads: opts.interOpThreads } : {}),
  };
  const create = (file: string, name: string): Promise<ort.InferenceSession> =>
    ort.InferenceSession.create(file, {
      ...sessionOptions,
      ...(opts.profilePrefix ? { enableProfiling: true, profileFilePrefix: `${opts.profilePrefix}-${name}` } : {}),
    });
  const [vision, embed, decoder] = await Promise.all([
    create(info.files.vision_encoder, 'vision'),
    create(info.files.embed_tokens, 'embed'),
    create(info.files.decoder_model_merged, 'decoder'),
  ]);
  return { vision, embed, decoder, profiling: opts.profilePrefix !== undefined };
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** Decoder width and KV shape, from the ONNX metadata where static, else config.json (or its text_config). */
export function decoderDims(sessions: EngineSessions, config: Record<string, unknown>) {
  const text = (config.text_config && typeof config.text_config === 'object' ? config.text_config : config) as Record<
    string,
    unknown
  >;
  const get = (k: string) => num(text[k]) ?? num(config[k]);
  const meta = (name: string) => {
    const m = sessions.decoder.inputMetadata.find((x) => x.name === name);
    return m?.isTensor ? m.shape : [];
  };
  const kvShape = meta('past_key_values.0.key');
  const embShape = meta('inputs_embeds');
  const heads = get('num_attention_heads');
  const hidden = num(embShape[2]) ?? get('hidden_size');
  const kvHeads = num(kvShape[1]) ?? get('num_key_value_heads') ?? heads;
  const headDim = num(kvShape[3]) ?? get('head_dim') ?? (hidden && heads ? hidden / heads : undefined);
  if (!hidden || !kvHeads || !headDim) {
    throw new FilterError(
      'model_invalid',
      'cannot tell the decoder width / KV shape from the ONNX file or config.json',
      {
        hidden,
        kvHeads,
        headDim,
      },
    );
  }
  return { hidden, kvHeads, headDim };
}

/** The vision tower's patch size, wherever config.json keeps it (vision_config, mm_* fields). */
function findPatchSize(obj: unknown, depth = 0): number | undefined {
  if (!obj || typeof obj !== 'object' || depth > 3) return undefined;
  const o = obj as Record<string, unknown>;
  const direct = num(o.patch_size);
  if (direct) return direct;
  for (const v of Object.values(o)) {
    const found = findPatchSize(v, depth + 1);
    if (found) return found;
  }
  return undefined;
}

function eosIds(info: ModelDirInfo, tok: PromptTokenizer): number[] {
  const out = new Set<number>();
  const add = (v: unknown) => {
    if (typeof v === 'number') out.add(v);
    else if (Array.isArray(v)) v.forEach(add);
  };
  add(info.config.eos_token_id);
  if (info.config.text_config && typeof info.config.text_config === 'object') {
    add((info.config.text_config as Record<string, unknown>).eos_token_id);
  }
  add(info.mlmFilter.eos_token_id);
  add(info.mlmFilter.eos_token_ids);
  const cfgEos = tok.tokenizer.token_to_id('<|im_end|>');
  if (info.format === 'qwen_instruct' && cfgEos !== undefined) out.add(cfgEos);
  const s = tok.tokenizer.token_to_id('</s>');
  if (info.format === 'llava_v1' && s !== undefined) out.add(s);
  return [...out];
}

/** Loads a resolved model directory into a ready engine (run this on the thread that will score). */
export async function loadEngine(
  dir: string,
  opts: SessionOptions & Omit<EngineOptions, 'eosTokenIds'>,
  log: LogFn,
): Promise<LoadedEngine> {
  const info = readModelDir(dir, opts.dtype ?? 'fp32');
  const requested = opts.executionProvider ?? 'cpu';
  let ep: ExecutionProvider = requested;
  let sessions: EngineSessions;
  try {
    sessions = await createAll(info, requested, opts);
  } catch (err) {
    if (requested === 'cpu') {
      throw new FilterError(
        'model_invalid',
        `cannot load the ONNX model in ${dir}: ${(err as Error).message}`,
        {
          dir,
          dtype: info.dtype,
        },
        { cause: err },
      );
    }
    log('warn', `execution provider '${requested}' is unavailable here, falling back to cpu`, {
      requested,
      error: (err as Error).message,
    });
    ep = 'cpu';
    sessions = await createAll(info, 'cpu', opts);
  }
  const tokenizer = PromptTokenizer.fromFiles(info.tokenizerJson, info.tokenizerConfigJson, {
    format: info.format,
    ...(info.whitespaceTokenId !== undefined ? { whitespaceTokenId: info.whitespaceTokenId } : {}),
  });
  const dims = { ...decoderDims(sessions, info.config), patchSize: findPatchSize(info.config) };
  const engine = new ScoringEngine(sessions, tokenizer, dims, {
    ...opts,
    eosTokenIds: eosIds(info, tokenizer),
  });
  log('info', 'model loaded', { dir, dtype: info.dtype, executionProvider: ep, format: info.format });
  return { engine, info, executionProvider: ep };
}

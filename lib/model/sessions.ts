/** Creating the scoring graph's onnxruntime session of a model directory, with an explicit, logged CPU fallback. */
import * as ort from './onnxruntime.ts';
import { FilterError } from '../types.ts';
import type { Logger } from '../support/logger.ts';
import { ScoringEngine, type EngineModel, type EngineOptions } from './engine.ts';
import { generationSettings, referencePenalty, type GenerationSettings } from './generation.ts';
import { readModelDir, type ModelDirInfo, type ModelDtype } from './model-dir.ts';
import { PromptTokenizer } from './tokens.ts';
import type { ExecutionProvider } from './execution-providers.ts';
import { DEFAULT_ORT_LOG_LEVEL, ortSeverity, type OrtLogLevel } from './ort-log.ts';
import { providerDiagnosis } from './provider-check.ts';

export type { ExecutionProvider };

export interface SessionOptions {
  /**
   * Accelerator to run on; falls back to 'cpu' (logged) when it cannot be created here, unless `fallbackToCpu` is
   * false. Default 'cpu'.
   */
  readonly executionProvider?: ExecutionProvider;
  /**
   * When the requested accelerator cannot be created (provider libraries missing, no GPU or driver too old): true
   * logs a warning and runs on 'cpu'; false fails with FilterError 'execution_provider_unavailable' naming the
   * provider, onnxruntime's error and the fix. The worker sets false (a GPU task silently on CPU is a broken task);
   * the CLI keeps the fallback.
   * @default true
   */
  readonly fallbackToCpu?: boolean;
  /** Threads inside one operator (CPU EP). Default: onnxruntime's choice (all cores). */
  readonly intraOpThreads?: number;
  /** Threads across independent operators. Default: onnxruntime's choice. */
  readonly interOpThreads?: number;
  readonly dtype?: ModelDtype;
  /**
   * Diagnostics: onnxruntime's profiler on, the session writing `<prefix>-scorer_<time>.json` (Chrome
   * trace format: every node's run time and provider) when the engine is released. Off by default: it costs time.
   */
  readonly profilePrefix?: string;
  /** onnxruntime's own log on stderr (lib/model/ort-log.ts). Default 'fatal': failures are reported as coded errors. */
  readonly ortLogLevel?: OrtLogLevel;
}

export interface LoadedEngine {
  readonly engine: ScoringEngine;
  readonly info: ModelDirInfo;
  /** The provider the sessions actually run on. */
  readonly executionProvider: ExecutionProvider;
}

async function createSession(info: ModelDirInfo, ep: ExecutionProvider, opts: SessionOptions): Promise<EngineModel> {
  const logLevel = opts.ortLogLevel ?? DEFAULT_ORT_LOG_LEVEL;
  // The environment's level (read when the process's first session creates it; provider loading logs there) and the
  // session's own.
  ort.env.logLevel = logLevel;
  const session = await ort.InferenceSession.create(info.files.scorer, {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    logSeverityLevel: ortSeverity(logLevel),
    ...(opts.intraOpThreads ? { intraOpNumThreads: opts.intraOpThreads } : {}),
    ...(opts.interOpThreads ? { interOpNumThreads: opts.interOpThreads } : {}),
    ...(opts.profilePrefix ? { enableProfiling: true, profileFilePrefix: `${opts.profilePrefix}-scorer` } : {}),
  });
  if (info.imageTokenCount === undefined) {
    throw new FilterError('model_invalid', 'mlm_filter.json does not say num_image_tokens', { dir: info.dir });
  }
  return { session, imageTokens: info.imageTokenCount, profiling: opts.profilePrefix !== undefined };
}

/**
 * The ids that end the reference's generation: exactly the generation config's when the export recorded it (Qwen2.5:
 * <|im_end|> and <|endoftext|>); for older exports, every eos id the directory names plus the format's end token.
 */
function eosIds(info: ModelDirInfo, tok: PromptTokenizer, generation: GenerationSettings): number[] {
  if (generation.eosTokenIds !== undefined) return [...generation.eosTokenIds];
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

/** One line: the provider, what onnxruntime said, why (what is missing here, when that can be seen) and the fix. */
function unavailable(requested: ExecutionProvider, dir: string, err: unknown): FilterError {
  const fix =
    requested === 'cuda'
      ? 'run scripts/cuda-provider.sh (it puts the CUDA provider and CUDA 13 libraries beside onnxruntime-node; ' +
        'that directory goes on LD_LIBRARY_PATH) on a host with an NVIDIA GPU and driver >= 580, or request cpu'
      : `give the host a GPU and driver that onnxruntime's ${requested} provider supports, or request cpu`;
  const error = String((err as Error)?.message ?? err)
    .replace(/\s+/g, ' ')
    .trim();
  const why = providerDiagnosis(requested) ?? 'MLMF_ORT_LOG_LEVEL=error shows the library or call that failed';
  return new FilterError(
    'execution_provider_unavailable',
    `execution provider '${requested}' is unavailable here: ${error} (${why}). Fix: ${fix}`,
    { requested, dir, error },
    { cause: err },
  );
}

/** Loads a resolved model directory into a ready engine (run this on the thread that will score). */
export async function loadEngine(
  dir: string,
  opts: SessionOptions & Omit<EngineOptions, 'eosTokenIds'>,
  log: Logger,
): Promise<LoadedEngine> {
  const info = readModelDir(dir, opts.dtype ?? 'fp32');
  const generation = generationSettings(info.mlmFilter, dir);
  const requested = opts.executionProvider ?? 'cpu';
  let ep: ExecutionProvider = requested;
  let model: EngineModel;
  try {
    model = await createSession(info, requested, opts);
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
    if (opts.fallbackToCpu === false) {
      if (err instanceof FilterError) throw err;
      throw unavailable(requested, dir, err);
    }
    const why = providerDiagnosis(requested);
    log.warn(`execution provider '${requested}' is unavailable here, falling back to cpu${why ? ` (${why})` : ''}`, {
      requested,
      error: (err as Error).message,
    });
    ep = 'cpu';
    model = await createSession(info, 'cpu', opts);
  }
  const tokenizer = PromptTokenizer.fromFiles(info.tokenizerJson, info.tokenizerConfigJson, {
    format: info.format,
    ...(info.whitespaceTokenId !== undefined ? { whitespaceTokenId: info.whitespaceTokenId } : {}),
  });
  const engine = new ScoringEngine(model, tokenizer, {
    ...opts,
    ...(opts.whitespaceLead === undefined && info.whitespaceLead ? { whitespaceLead: true } : {}),
    eosTokenIds: eosIds(info, tokenizer, generation),
    ...(info.numberTokenIds ? { numberTokenIds: info.numberTokenIds } : {}),
    repetitionPenalty: opts.repetitionPenalty ?? referencePenalty(generation),
  });
  log.info('model loaded', {
    dir,
    dtype: info.dtype,
    executionProvider: ep,
    format: info.format,
    ...(opts.referenceMode ? { repetitionPenalty: opts.repetitionPenalty ?? referencePenalty(generation) } : {}),
  });
  return { engine, info, executionProvider: ep };
}

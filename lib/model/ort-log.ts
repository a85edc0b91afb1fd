/**
 * How much of onnxruntime's own log reaches stderr. Its Linux log sink colours every warning and error red with ANSI
 * codes whatever stderr is (a pipe, a file, NO_COLOR=1) and spreads one failure over several lines (an unavailable
 * CUDA provider: the library path, the dlopen error, the call that failed). The scorer reports every onnxruntime
 * failure itself as one coded line, so onnxruntime's log is off (fatal only) unless the operator raises it with
 * MLMF_ORT_LOG_LEVEL for a diagnosis.
 */
import { FilterError } from '../types.ts';
import type { WorkerEnvName } from '../worker-env.ts';

export const ORT_LOG_LEVELS = ['verbose', 'info', 'warning', 'error', 'fatal'] as const;
export type OrtLogLevel = (typeof ORT_LOG_LEVELS)[number];

export const ORT_LOG_LEVEL_ENV: WorkerEnvName = 'MLMF_ORT_LOG_LEVEL';
export const DEFAULT_ORT_LOG_LEVEL: OrtLogLevel = 'fatal';

/** MLMF_ORT_LOG_LEVEL, default fatal; another value is a bad_config error naming the choices. */
export function ortLogLevelFromEnv(env: NodeJS.ProcessEnv = process.env): OrtLogLevel {
  const raw = env[ORT_LOG_LEVEL_ENV]?.trim().toLowerCase();
  if (!raw) return DEFAULT_ORT_LOG_LEVEL;
  if (!(ORT_LOG_LEVELS as readonly string[]).includes(raw)) {
    throw new FilterError(
      'bad_config',
      `${ORT_LOG_LEVEL_ENV} must be one of ${ORT_LOG_LEVELS.join(', ')}, got ${JSON.stringify(env[ORT_LOG_LEVEL_ENV])}`,
      { name: ORT_LOG_LEVEL_ENV },
    );
  }
  return raw as OrtLogLevel;
}

/** onnxruntime's severity number of a level (a session's logSeverityLevel). */
export function ortSeverity(level: OrtLogLevel): 0 | 1 | 2 | 3 | 4 {
  return ORT_LOG_LEVELS.indexOf(level) as 0 | 1 | 2 | 3 | 4;
}

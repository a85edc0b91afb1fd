/**
 * onnxruntime's official Linux builds (the npm binary and the PyPI wheel alike) carry Microsoft's 1DS telemetry
 * uploader: left alone, every process that creates an onnxruntime environment writes a persistent device id and an
 * event database under `$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime/`, leaves a `/tmp/mat-debug-<pid>.log`,
 * and would upload session, model, provider and error events wherever egress allows. A filter running over crawled
 * data inside a customer's VPC must send nothing to a third party unless the operator asks for it.
 *
 * onnxruntime reads `ORT_DISABLE_TELEMETRY` with getenv() once, when its environment is created, and latches it for
 * the process. Two consequences shape this module:
 * - it must run before the native library is loaded, so it is a side effect of importing this module, which
 *   `onnxruntime.ts` (the only importer of onnxruntime-node) and the scorer's main thread import first;
 * - it must run on the main thread: a worker thread's `process.env` is a private copy that native code never sees,
 *   so the scorer (which loads onnxruntime inside worker threads) applies it before spawning them.
 *
 * The operator opts in with MLMF_ORT_TELEMETRY=1 (README "What leaves your network"); without it telemetry is off
 * even when the environment says ORT_DISABLE_TELEMETRY=0.
 */
export const TELEMETRY_OPT_IN = 'MLMF_ORT_TELEMETRY';

/** True when the environment opts in to onnxruntime's telemetry. */
export function telemetryOptedIn(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'true', 'yes'].includes((env[TELEMETRY_OPT_IN] ?? '').trim().toLowerCase());
}

/** Sets ORT_DISABLE_TELEMETRY from the opt-in; returns whether telemetry stays on. */
export function applyTelemetryPolicy(env: NodeJS.ProcessEnv = process.env): boolean {
  const on = telemetryOptedIn(env);
  // onnxruntime treats "0" as "not disabled", which is what an opted-in container needs over the image's "1".
  env.ORT_DISABLE_TELEMETRY = on ? '0' : '1';
  return on;
}

applyTelemetryPolicy();

/** The worker's stop handling lives in lib/worker/stop-signals.ts (the CLI's `mlm-filter worker` uses it too). */
export * from '../../lib/worker/stop-signals.ts';

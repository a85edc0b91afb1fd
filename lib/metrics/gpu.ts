/**
 * GPU utilisation and memory of the GPU the worker runs on, read with `nvidia-smi` (which the NVIDIA container
 * toolkit mounts into a task that has a GPU and the `utility` driver capability, as functions/worker/Dockerfile asks).
 * onnxruntime has no API for device utilisation, and NVML bindings would be a native module for two numbers a poll.
 *
 * A worker without a GPU emits no GPU metric at all (rather than zeros), so the dashboard's GPU lines are either real
 * samples or absent.
 */
import { execFile } from 'node:child_process';
import { FilterError } from '../types.ts';
import { silentLogger, type Logger } from '../support/logger.ts';

/** The query: one CSV line per visible GPU, `utilization %, memory used MiB, memory total MiB`, no header or units. */
export const NVIDIA_SMI_ARGS: readonly string[] = [
  '--query-gpu=utilization.gpu,memory.used,memory.total',
  '--format=csv,noheader,nounits',
];

/** One GPU's reading. A field nvidia-smi cannot read on this GPU (`[N/A]`, `[Not Supported]`) is NaN. */
export interface GpuSample {
  /** Position in nvidia-smi's output (the GPU index inside the container). */
  readonly index: number;
  readonly utilizationPercent: number;
  readonly memoryUsedMiB: number;
  readonly memoryTotalMiB: number;
}

/** One CSV field: a number; NaN for nvidia-smi's "cannot read this" (`[N/A]`, `[Not Supported]`); else undefined. */
function field(raw: string): number | undefined {
  const v = raw.trim();
  if (/^\[[^\]]*\]$/.test(v)) return NaN;
  return /^\d+(\.\d+)?$/.test(v) ? Number(v) : undefined;
}

/** Parses the output of `nvidia-smi` with {@link NVIDIA_SMI_ARGS}. Throws `gpu_query_failed` on any other shape. */
export function parseNvidiaSmi(text: string): GpuSample[] {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (lines.length === 0) throw new FilterError('gpu_query_failed', 'nvidia-smi printed no GPU', { output: text });
  return lines.map((line, index) => {
    const values = line.split(',').map(field);
    // A message such as "No devices were found" or a changed format must fail, not become a NaN sample.
    if (values.length !== 3 || values.some((v) => v === undefined)) {
      throw new FilterError('gpu_query_failed', `unexpected nvidia-smi line: ${JSON.stringify(line)}`, { line });
    }
    const [utilizationPercent, memoryUsedMiB, memoryTotalMiB] = values as [number, number, number];
    return { index, utilizationPercent, memoryUsedMiB, memoryTotalMiB };
  });
}

/** Where samples go ({@link WorkerMetrics} satisfies it). */
export interface GpuMetricsSink {
  setGpuUtilization(percent: number): void;
  setGpuMemory(usedMiB: number, totalMiB: number): void;
}

export interface GpuSamplerOptions {
  readonly metrics: GpuMetricsSink;
  /** Time between samples, ms. Default 10000: the EMF interval (60 s) then averages six samples. */
  readonly intervalMs?: number;
  /** The executable, looked up on PATH. Default `nvidia-smi`. */
  readonly command?: string;
  /** Environment of the child (its PATH is where the command is looked up). Default: this process's. */
  readonly env?: NodeJS.ProcessEnv;
  /** A poll that takes longer is killed and counts as failed. Default 5000 ms. */
  readonly timeoutMs?: number;
  /** Default: nowhere. */
  readonly logger?: Logger;
}

/** What one run of nvidia-smi gave. */
type Poll = { kind: 'ok'; samples: GpuSample[] } | { kind: 'missing' } | { kind: 'failed'; error: string };

/**
 * Polls nvidia-smi and reports each GPU's utilisation and memory to the metrics. Without nvidia-smi it logs once and
 * stops; a failing poll is logged once and polling goes on (a driver hiccup should not end the GPU graph).
 */
export class GpuSampler {
  private readonly intervalMs: number;
  private readonly command: string;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<GpuSample[] | undefined> | undefined;
  private warned = false;
  private stopped = false;
  /** Successful polls so far. */
  polls = 0;

  constructor(private readonly options: GpuSamplerOptions) {
    this.intervalMs = options.intervalMs ?? 10_000;
    this.command = options.command ?? 'nvidia-smi';
    this.log = options.logger ?? silentLogger;
  }

  /** Samples now, then every interval until {@link stop}. The timer does not keep the process alive. */
  start(): this {
    if (this.timer || this.stopped) return this;
    void this.sampleOnce();
    this.timer = setInterval(() => void this.sampleOnce(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** False once stopped, by {@link stop} or for want of nvidia-smi. */
  get running(): boolean {
    return !this.stopped;
  }

  /** One poll, reported to the metrics; undefined when it failed. A poll still running is awaited, not doubled. */
  sampleOnce(): Promise<GpuSample[] | undefined> {
    if (this.stopped) return Promise.resolve(undefined);
    this.inFlight ??= this.poll().finally(() => (this.inFlight = undefined));
    return this.inFlight;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async poll(): Promise<GpuSample[] | undefined> {
    const result = await this.run();
    if (this.stopped) return undefined;
    if (result.kind === 'missing') {
      this.log.info(`${this.command} not found on PATH: no GPU metrics from this worker`, {
        command: this.command,
      });
      this.stop();
      return undefined;
    }
    if (result.kind === 'failed') {
      if (!this.warned) this.log.warn('GPU sample failed (logged once; polling goes on)', { error: result.error });
      this.warned = true;
      return undefined;
    }
    for (const s of result.samples) {
      this.options.metrics.setGpuUtilization(s.utilizationPercent);
      this.options.metrics.setGpuMemory(s.memoryUsedMiB, s.memoryTotalMiB);
    }
    this.polls++;
    return result.samples;
  }

  private run(): Promise<Poll> {
    return new Promise((resolve) => {
      execFile(
        this.command,
        NVIDIA_SMI_ARGS,
        { env: this.options.env ?? process.env, timeout: this.options.timeoutMs ?? 5000, windowsHide: true },
        (err, stdout) => {
          if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT') return resolve({ kind: 'missing' });
          if (err) return resolve({ kind: 'failed', error: String(err.message).trim() });
          try {
            resolve({ kind: 'ok', samples: parseNvidiaSmi(stdout) });
          } catch (parseErr) {
            resolve({ kind: 'failed', error: (parseErr as Error).message });
          }
        },
      );
    });
  }
}

/**
 * Starts GPU sampling for a worker whose scorer runs on `provider`: only `cuda` runs on an NVIDIA GPU that
 * nvidia-smi can see (WebGPU's adapter may be any vendor's, the CPU has none). Undefined (and one log line) otherwise.
 */
export function startGpuSampling(
  provider: string,
  metrics: GpuMetricsSink,
  logger: Logger,
  options: Omit<GpuSamplerOptions, 'metrics' | 'logger'> = {},
): GpuSampler | undefined {
  if (provider !== 'cuda') {
    logger.info(`no GPU metrics: the execution provider is ${provider}, not cuda`, { executionProvider: provider });
    return undefined;
  }
  return new GpuSampler({ ...options, metrics, logger }).start();
}

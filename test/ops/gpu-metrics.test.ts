/**
 * GPU metrics (lib/metrics/gpu.ts): the nvidia-smi parser on its output text, and the sampler running a fake
 * `nvidia-smi` executable (test/helpers/fake-nvidia-smi.ts) found first on PATH, reporting into a real WorkerMetrics
 * whose EMF output is read back.
 */
import { thrownCode } from '../helpers/thrown-code.ts';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { GpuSampler, parseNvidiaSmi, startGpuSampling } from '../../lib/metrics/gpu.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { WorkerMetrics } from '../../lib/metrics/worker-metrics.ts';
import { fakeNvidiaSmi } from '../helpers/fake-nvidia-smi.ts';
import { Logger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

// nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits, as the driver prints
// it: an H200 under load, a g5 (A10G) and a g6 (L4) pair, a MIG slice (no utilisation counter), and failures.
const H200 = '87, 40515, 143771\n';
const TWO_GPUS = '100, 20112, 23028\r\n3, 431, 23034\r\n';
const MIG_SLICE = '[N/A], 13, 9984\n';
const NO_DEVICES = 'No devices were found\n';
const NO_DRIVER =
  "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n";

/** The GPU distributions in the EMF documents a WorkerMetrics flush writes. */
function gpuValues(lines: string[]): { util: number[]; memory: number[] } {
  const out = { util: [] as number[], memory: [] as number[] };
  for (const line of lines) {
    const doc = JSON.parse(line) as Record<string, { Values?: number[] } | undefined>;
    out.util.push(...(doc[METRIC.GpuUtilization]?.Values ?? []));
    out.memory.push(...(doc[METRIC.GpuMemoryUtilization]?.Values ?? []));
  }
  return out;
}

describe('parseNvidiaSmi', () => {
  test('one GPU: utilisation, memory used and total (MiB)', () => {
    assert.deepEqual(parseNvidiaSmi(H200), [
      { index: 0, utilizationPercent: 87, memoryUsedMiB: 40515, memoryTotalMiB: 143771 },
    ]);
  });

  test('several GPUs, CRLF line ends: one sample per line, in order', () => {
    const s = parseNvidiaSmi(TWO_GPUS);
    assert.deepEqual(
      s.map((g) => [g.index, g.utilizationPercent, g.memoryUsedMiB, g.memoryTotalMiB]),
      [
        [0, 100, 20112, 23028],
        [1, 3, 431, 23034],
      ],
    );
  });

  test('a counter the GPU does not have ([N/A]) is NaN, the others are read', () => {
    const [g] = parseNvidiaSmi(MIG_SLICE);
    assert.ok(Number.isNaN(g!.utilizationPercent));
    assert.equal(g!.memoryUsedMiB, 13);
    assert.equal(g!.memoryTotalMiB, 9984);
  });

  test('messages instead of data, a changed format or nothing: gpu_query_failed', () => {
    for (const text of [
      NO_DEVICES,
      NO_DRIVER,
      '',
      '\n',
      '87 %, 40515 MiB, 143771 MiB\n',
      '87, 40515\n',
      '1, 2, 3, 4\n',
    ]) {
      assert.equal(
        thrownCode(() => parseNvidiaSmi(text)),
        'gpu_query_failed',
        JSON.stringify(text),
      );
    }
  });
});

describe('GpuSampler with an nvidia-smi executable on PATH', () => {
  test('polls every interval and the worker metrics emit GpuUtilization and GpuMemoryUtilization', async () => {
    const smi = await fakeNvidiaSmi(TWO_GPUS);
    const lines: string[] = [];
    const metrics = new WorkerMetrics({ emit: (l) => lines.push(l), emfIntervalMs: 0, processMetrics: false });
    const logs: string[] = [];
    const sampler = new GpuSampler({
      metrics,
      intervalMs: 30,
      env: { ...process.env, PATH: smi.path() },
      logger: new Logger(({ msg }) => logs.push(msg)),
    }).start();
    try {
      await waitFor('three polls', () => sampler.polls >= 3, 10_000, 20);
    } finally {
      sampler.stop();
    }
    assert.ok((await smi.calls()) >= 3);
    metrics.flushEmf();
    const { util, memory } = gpuValues(lines);
    assert.deepEqual(
      util.sort((a, b) => a - b),
      [3, 100],
      'both GPUs, each distinct value once',
    );
    assert.deepEqual(
      memory.sort((a, b) => a - b),
      [Number(((100 * 431) / 23034).toPrecision(3)), Number(((100 * 20112) / 23028).toPrecision(3))],
    );
    const prom = await metrics.prometheusText();
    assert.match(prom, new RegExp(`mlmf_gpu_memory_total_bytes ${23034 * 1024 * 1024}\\b`));
    assert.deepEqual(logs, []);
    await smi.remove();
  });

  test('no nvidia-smi on PATH: one log line, polling stops, no GPU metric', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'mlmf-no-smi-'));
    const lines: string[] = [];
    const metrics = new WorkerMetrics({ emit: (l) => lines.push(l), emfIntervalMs: 0, processMetrics: false });
    const logs: { level: string; msg: string }[] = [];
    const sampler = new GpuSampler({
      metrics,
      intervalMs: 10,
      env: { ...process.env, PATH: empty },
      logger: new Logger(({ level, msg }) => logs.push({ level, msg })),
    }).start();
    await waitFor('the sampler to give up', () => !sampler.running, 10_000, 20);
    metrics.flushEmf();
    assert.equal(logs.length, 1, JSON.stringify(logs));
    assert.match(logs[0]!.msg, /nvidia-smi not found/);
    assert.deepEqual(gpuValues(lines), { util: [], memory: [] });
    assert.ok(!lines.some((l) => l.includes(METRIC.GpuUtilization)), 'no GpuUtilization member at all');
    await rm(empty, { recursive: true, force: true });
  });

  test('an nvidia-smi that fails: logged once, polling goes on, nothing emitted', async () => {
    const smi = await fakeNvidiaSmi(NO_DRIVER, 9);
    const lines: string[] = [];
    const metrics = new WorkerMetrics({ emit: (l) => lines.push(l), emfIntervalMs: 0, processMetrics: false });
    const logs: { level: string; msg: string }[] = [];
    const sampler = new GpuSampler({
      metrics,
      intervalMs: 20,
      env: { ...process.env, PATH: smi.path() },
      logger: new Logger(({ level, msg }) => logs.push({ level, msg })),
    }).start();
    try {
      await waitFor('four failed polls', async () => (await smi.calls()) >= 4, 10_000, 20);
      assert.ok(sampler.running, 'still polling');
    } finally {
      sampler.stop();
    }
    metrics.flushEmf();
    assert.deepEqual(
      logs.map((l) => l.level),
      ['warn'],
    );
    assert.equal(sampler.polls, 0);
    assert.deepEqual(gpuValues(lines), { util: [], memory: [] });
    await smi.remove();
  });

  test('startGpuSampling: only for the cuda execution provider', async () => {
    const smi = await fakeNvidiaSmi(H200);
    const metrics = new WorkerMetrics({ emit: null, emfIntervalMs: 0, processMetrics: false });
    const logs: string[] = [];
    const env = { ...process.env, PATH: smi.path() };
    for (const provider of ['cpu', 'webgpu']) {
      assert.equal(startGpuSampling(provider, metrics, new Logger(({ msg }) => logs.push(msg)), { env }), undefined);
    }
    assert.equal(logs.length, 2);
    const sampler = startGpuSampling('cuda', metrics, new Logger(({ msg }) => logs.push(msg)), {
      env,
      intervalMs: 60_000,
    });
    assert.ok(sampler);
    try {
      await waitFor('the first poll', () => sampler.polls >= 1, 10_000, 20);
    } finally {
      sampler.stop();
    }
    assert.equal(await smi.calls(), 1, 'nvidia-smi ran for cuda only, once at start');
    assert.match(await metrics.prometheusText(), /mlmf_gpu_utilization_percent 87\b/);
    await smi.remove();
  });
});

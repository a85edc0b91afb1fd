export { WorkerMetrics, PROM, observed, type ObservedOutcome, type WorkerMetricsOptions } from './worker-metrics.ts';
export {
  emfDocument,
  ValueCounter,
  EMF_MAX_METRICS,
  EMF_MAX_VALUES,
  type EmfDistribution,
  type EmfMetric,
  type EmfUnit,
} from './emf.ts';
export {
  GpuSampler,
  NVIDIA_SMI_ARGS,
  parseNvidiaSmi,
  startGpuSampling,
  type GpuMetricsSink,
  type GpuSample,
  type GpuSamplerOptions,
} from './gpu.ts';

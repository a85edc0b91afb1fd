/**
 * Why an accelerator provider cannot start, where that can be seen without onnxruntime's own log: onnxruntime loads a
 * provider's library from the directory of its own libonnxruntime.so, so a CUDA provider that was never installed
 * (onnxruntime-node's npm package ships CPU binaries only; scripts/cuda-provider.sh adds it) is a missing file there.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { ExecutionProvider } from './execution-providers.ts';

const PROVIDER_LIBRARIES: Partial<Record<ExecutionProvider, readonly string[]>> = {
  cuda: ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'],
};

/** The directory of onnxruntime-node's native library on this platform. */
export function ortLibraryDir(): string {
  const main = createRequire(import.meta.url).resolve('onnxruntime-node');
  return join(dirname(main), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

/** What is missing for `provider`, in a few words; undefined when nothing visible is (the cause is then elsewhere). */
export function providerDiagnosis(provider: ExecutionProvider, dir = ortLibraryDir()): string | undefined {
  const missing = (PROVIDER_LIBRARIES[provider] ?? []).filter((name) => !existsSync(join(dir, name)));
  if (missing.length === 0) return undefined;
  return `onnxruntime's ${provider} provider is not installed: no ${missing.join(', ')} in ${dir}`;
}

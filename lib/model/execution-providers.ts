/**
 * The onnxruntime execution providers the scorer can run on: the one list behind the CLI's --execution-provider
 * choices, the worker's MLMF_EXECUTION_PROVIDER, the session loader's type, and the CDK construct's prop and context
 * key (infra imports it from here), so a provider added or dropped changes every surface at once.
 */
export const EXECUTION_PROVIDERS = ['cuda', 'webgpu', 'cpu'] as const;

export type ExecutionProvider = (typeof EXECUTION_PROVIDERS)[number];

export function isExecutionProvider(value: unknown): value is ExecutionProvider {
  return (EXECUTION_PROVIDERS as readonly unknown[]).includes(value);
}

/** `cuda | webgpu | cpu`: how help texts and the environment contract spell the list. */
export const EXECUTION_PROVIDER_CHOICES = EXECUTION_PROVIDERS.join(' | ');

/**
 * A stand-in `nvidia-smi` for hosts without an NVIDIA GPU: a real executable script (run by the code under test as a
 * child process, found on PATH like the real one) that insists on the exact query the worker makes, counts its
 * calls and prints the given text. Tests put its directory first on PATH.
 */
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { NVIDIA_SMI_ARGS } from '../../lib/metrics/gpu.ts';

export interface FakeNvidiaSmi {
  /** The directory holding `nvidia-smi`. */
  readonly dir: string;
  /** `dir` first, then `rest` (default: this process's PATH). */
  path(rest?: string): string;
  /** How many times the script has run. */
  calls(): Promise<number>;
  remove(): Promise<void>;
}

/** `output` on stdout and `exitCode`, for the worker's query; anything else exits 2 naming the arguments. */
export async function fakeNvidiaSmi(output: string, exitCode = 0): Promise<FakeNvidiaSmi> {
  const dir = await mkdtemp(join(tmpdir(), 'mlmf-nvidia-smi-'));
  await writeFile(join(dir, 'output.txt'), output);
  const script = [
    '#!/bin/sh',
    `echo call >> '${dir}/calls'`,
    `if [ "$#" -ne ${NVIDIA_SMI_ARGS.length} ] || [ "$1" != '${NVIDIA_SMI_ARGS[0]}' ] || [ "$2" != '${NVIDIA_SMI_ARGS[1]}' ]; then`,
    '  echo "fake nvidia-smi: unexpected arguments: $*" >&2',
    '  exit 2',
    'fi',
    `cat '${dir}/output.txt'`,
    `exit ${exitCode}`,
    '',
  ].join('\n');
  const bin = join(dir, 'nvidia-smi');
  await writeFile(bin, script);
  await chmod(bin, 0o755);
  return {
    dir,
    path: (rest = process.env.PATH ?? '') => (rest ? `${dir}${delimiter}${rest}` : dir),
    calls: async () =>
      (await readFile(join(dir, 'calls'), 'utf8').catch(() => '')).split('\n').filter((l) => l !== '').length,
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

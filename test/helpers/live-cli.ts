/** A `mlm-filter` process the test talks to while it runs: stdin kept open, signals, what it has written so far. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ShardIndex } from '../../lib/sinks/webdataset.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;

export interface LiveCli {
  readonly child: ChildProcessWithoutNullStreams;
  /** stderr so far. */
  stderr(): string;
  /** stdout so far. */
  stdout(): string;
  /** Settles when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The committed tiny random-weight model the CLI tests score with. */
export const TINY_MODEL = new URL('../fixtures/models/tiny-llava-qwen', import.meta.url).pathname;

/** `filter` of `input` into `out` on the tiny model, accepting every scored pair, without progress output. */
export function tinyFilterArgs(input: string, out: string, ...more: string[]): string[] {
  const args = ['filter', '--input', input, '--out', out, '--model', TINY_MODEL, '--threshold', 'itm>=0'];
  return [...args, '--progress', 'none', ...more];
}

/** Starts the CLI with piped stdio; a process still running after `limitMs` is killed (the test then fails on it). */
export function startCli(args: string[], limitMs = 120_000, env: NodeJS.ProcessEnv = process.env): LiveCli {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  // The pipe may be closed by the process's exit while a test still holds it open.
  child.stdin.on('error', () => undefined);
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    }),
  );
  return { child, exited, stderr: () => err, stdout: () => out };
}

/** Runs the CLI to its end with stdin closed; one still running after `limitMs` is killed (then `signal` is SIGKILL). */
export async function runCliToEnd(args: string[], limitMs: number, env?: NodeJS.ProcessEnv) {
  const cli = startCli(args, limitMs, env);
  cli.child.stdin.end();
  const { code, signal } = await cli.exited;
  return { code, signal, out: cli.stdout(), err: cli.stderr() };
}

/** Resolves with the process's exit, or undefined when it is still running after `deadlineMs`. */
export async function exitWithin(cli: LiveCli, deadlineMs: number) {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), deadlineMs)));
  try {
    return await Promise.race([cli.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Outcomes visible in an --out directory while a run writes it: complete reject lines + samples of indexed shards. */
export function visibleOutcomes(out: string): number {
  const rejects = join(out, 'rejects.jsonl');
  const lines = existsSync(rejects) ? readFileSync(rejects).toString('utf8').split('\n').length - 1 : 0;
  const curated = join(out, 'curated');
  if (!existsSync(curated)) return lines;
  let samples = 0;
  for (const name of readdirSync(curated).filter((n) => n.endsWith('.index.json'))) {
    try {
      samples += (JSON.parse(readFileSync(join(curated, name), 'utf8')) as ShardIndex).count;
    } catch {
      // renamed into place whole, so unreadable only if it vanished between the listing and the read
    }
  }
  return lines + samples;
}

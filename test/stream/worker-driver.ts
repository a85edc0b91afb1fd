/**
 * A stream worker process as the crash, zombie and broker-outage suites drive it: by default worker-process.ts (the
 * container entry with the fast stand-in scorer, MLMF_TEST_SCORER_DELAY_MS per batch), its stdout and stderr lines
 * kept, waits on a log line, signals, a graceful stop and kill -9.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

const FAST_WORKER = new URL('./worker-process.ts', import.meta.url).pathname;

export interface WorkerOptions {
  /** Names the worker in failure messages. */
  readonly name?: string;
  /** Node's arguments: the worker entry and what it takes (default: tsx running worker-process.ts). */
  readonly args?: readonly string[];
}

export class WorkerProcess {
  readonly name: string;
  readonly lines: string[] = [];
  /** Set as soon as the process ends, whatever the reason. */
  exited: { code: number | null; signal: string | null } | undefined;
  private readonly child: ChildProcess;
  private readonly watchers = new Set<(line: string) => void>();

  constructor(env: Record<string, string>, options: WorkerOptions = {}) {
    this.name = options.name ?? 'worker';
    this.child = spawn(process.execPath, options.args ?? ['--import', 'tsx', FAST_WORKER], {
      env: { ...process.env, AWS_EC2_METADATA_DISABLED: 'true', MLMF_HEALTH_PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const input of [this.child.stdout!, this.child.stderr!]) {
      createInterface({ input }).on('line', (line) => {
        this.lines.push(line);
        for (const watch of [...this.watchers]) watch(line);
      });
    }
    this.child.on('exit', (code, signal) => (this.exited = { code, signal }));
  }

  count(re: RegExp): number {
    return this.lines.filter((l) => re.test(l)).length;
  }

  /** Resolves once a line matches `re` (one already logged counts); fails after `timeoutMs` or when the worker exits. */
  waitLog(re: RegExp, timeoutMs = 60_000): Promise<void> {
    if (this.lines.some((l) => re.test(l))) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.watchers.delete(watch);
        this.child.off('exit', onExit);
        if (err) reject(err);
        else resolve();
      };
      const watch = (line: string) => re.test(line) && done();
      const onExit = () => done(new Error(`${this.name} exited before logging ${re}\n${this.tail()}`));
      const timer = setTimeout(() => done(new Error(`${this.name} never logged ${re}\n${this.tail()}`)), timeoutMs);
      this.watchers.add(watch);
      this.child.once('exit', onExit);
    });
  }

  /** Throws when the worker has exited: it must ride out what the test does to it. */
  assertRunning(): void {
    if (this.exited) throw new Error(`${this.name} exited (${JSON.stringify(this.exited)})\n${this.tail()}`);
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exited) this.child.kill(sig);
  }

  /** SIGTERM (a graceful drain); resolves with the exit code. */
  async stop(): Promise<number | null> {
    await this.endWith('SIGTERM');
    return this.exited!.code;
  }

  /** kill -9; resolves once the process is gone. */
  async kill9(): Promise<void> {
    await this.endWith('SIGKILL');
  }

  /** The last `n` lines, without the metrics (EMF) documents. */
  tail(n = 12): string {
    const lines = this.lines.filter((l) => !l.includes('"_aws"')).slice(-n);
    return `${this.name}:\n${lines.join('\n')}`;
  }

  private async endWith(sig: NodeJS.Signals): Promise<void> {
    if (this.exited) return;
    const exit = once(this.child, 'exit');
    this.child.kill(sig);
    await exit;
  }
}

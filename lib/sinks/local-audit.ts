import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Decision, ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { toAuditEvent } from './audit-event.ts';

/** Options of the local audit sink: audit events as JSON lines (the CLI's `rejects.jsonl`). */
export interface LocalAuditSinkOptions {
  readonly path: string;
  readonly model: ModelInfo;
  /** Decisions written. Default: rejects only. */
  readonly decisions?: readonly Decision[];
}

export class LocalAuditSink implements Sink {
  readonly name = 'local-audit';
  readonly durability = 'durable' as const;
  /** Appends are chained in call order. */
  readonly overlappingWrites = true;
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    private readonly fh: FileHandle,
    private readonly options: LocalAuditSinkOptions,
  ) {}

  static async open(options: LocalAuditSinkOptions): Promise<LocalAuditSink> {
    try {
      await mkdir(dirname(options.path), { recursive: true });
      return new LocalAuditSink(await open(options.path, 'a'), options);
    } catch (err) {
      throw new FilterError('output_unwritable', `cannot open ${options.path}: ${(err as Error).message}`, {
        path: options.path,
      });
    }
  }

  write(outcomes: readonly Outcome[]): Promise<void> {
    const wanted = this.options.decisions ?? ['reject'];
    const lines = outcomes
      .filter((o) => wanted.includes(o.decision))
      .map((o) => JSON.stringify(toAuditEvent(o, this.options.model)) + '\n')
      .join('');
    if (!lines) return Promise.resolve();
    const done = this.chain.then(() => this.fh.appendFile(lines));
    this.chain = done.catch(() => undefined);
    return done;
  }

  async flush(): Promise<void> {
    await this.chain;
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.flush();
    await this.fh.close();
  }
}

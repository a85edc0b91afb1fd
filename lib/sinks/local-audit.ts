import { constants } from 'node:fs';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  AUDIT_LINE_MAX_BYTES,
  decodeAuditEvent,
  encodeAuditEvent,
  toAuditEvent,
  type AuditEvent,
} from '../formats/audit-event.ts';
import { boundedLines } from '../formats/lines.ts';
import type { Decision, ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';

export { AUDIT_LINE_MAX_BYTES };

/** Never through a symlink: a link planted at rejects.jsonl must not append to (or truncate) a file elsewhere. */
const APPEND_NOFOLLOW = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW;
const UPDATE_NOFOLLOW = constants.O_RDWR | constants.O_NOFOLLOW;

/** Bytes read at a time while looking back for the last newline. */
const TAIL_STEP = 64 * 1024;

/** Where the last complete line of a file ends (after its newline); 0 when it has none. */
async function completeLength(fh: FileHandle): Promise<number> {
  const size = (await fh.stat()).size;
  const buf = Buffer.alloc(TAIL_STEP);
  for (let end = size; end > 0; end -= TAIL_STEP) {
    const start = Math.max(0, end - TAIL_STEP);
    const { bytesRead } = await fh.read(buf, 0, end - start, start);
    const nl = buf.subarray(0, bytesRead).lastIndexOf(10);
    if (nl !== -1) return start + nl + 1;
  }
  return 0;
}

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
      const fh = await open(options.path, APPEND_NOFOLLOW, 0o666);
      if (!(await fh.stat()).isFile()) {
        await fh.close();
        throw new Error('it is not a regular file');
      }
      return new LocalAuditSink(fh, options);
    } catch (err) {
      throw new FilterError('output_unwritable', `cannot open ${options.path}: ${(err as Error).message}`, {
        path: options.path,
      });
    }
  }

  /**
   * Makes an audit file that a stopped run (kill -9) left behind consistent, and reads back every event it then holds:
   * a last line without its newline (an append cut short) is cut off, so its records count as never written. Throws
   * on a complete line that is not an audit event (the file is not one this sink wrote), or one longer than
   * AUDIT_LINE_MAX_BYTES (read no further than that). Opened without following a symlink: a regular file or nothing
   * is truncated.
   */
  static async recover(path: string, visit: (event: AuditEvent) => void): Promise<void> {
    let fh: FileHandle;
    try {
      fh = await open(path, UPDATE_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    try {
      if (!(await fh.stat()).isFile()) throw new Error(`${path} is not a regular file`);
      await fh.truncate(await completeLength(fh));
      await LocalAuditSink.readEvents(fh, visit);
    } finally {
      await fh.close();
    }
  }

  private static async readEvents(fh: FileHandle, visit: (event: AuditEvent) => void): Promise<void> {
    const stream = fh.createReadStream({ start: 0, autoClose: false, highWaterMark: 1 << 20 });
    for await (const line of boundedLines(stream, AUDIT_LINE_MAX_BYTES)) {
      if (line.size === 0) continue;
      if (line.size > AUDIT_LINE_MAX_BYTES) {
        throw new Error(`line ${line.number} is ${line.size} bytes, over the ${AUDIT_LINE_MAX_BYTES}-byte bound`);
      }
      const event = decodeAuditEvent(line.bytes);
      if (!event.ok) throw new Error(`line ${line.number} is not an audit event (${event.error.message})`);
      visit(event.value);
    }
  }

  write(outcomes: readonly Outcome[]): Promise<void> {
    const wanted = this.options.decisions ?? ['reject'];
    const lines = outcomes
      .filter((o) => wanted.includes(o.decision))
      .map((o) => encodeAuditEvent(toAuditEvent(o, this.options.model)) + '\n')
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

import { open } from 'node:fs/promises';
import { FilterError } from '../types.ts';

/**
 * A minimal, bounded tar reader for WebDataset shards (ustar, GNU long names, pax `path`/`size`) over a local file or
 * a stream (TarBytes below): it holds one member at a time, a member over the size limit is skipped without being
 * kept, and it reports where a shard stops being readable (a cut-off header or member, a corrupt header) instead of
 * throwing: the caller turns that into a reject and goes on with the next shard.
 */
export type TarEvent =
  /** A regular file. `data` is absent when the member was over the limit and skipped unread. */
  | {
      readonly type: 'member';
      readonly name: string;
      readonly size: number;
      readonly offset: number;
      readonly data?: Buffer;
    }
  /** The shard is unreadable from `offset` (the header where the bad part starts) to its end. */
  | {
      readonly type: 'unreadable';
      readonly kind: 'truncated_shard' | 'corrupt_shard' | 'unreadable_shard';
      readonly offset: number;
      readonly message: string;
      /** The member being read when the shard ended, when its header was whole. */
      readonly name?: string;
    };

const BLOCK = 512;
const padded = (n: number) => Math.ceil(n / BLOCK) * BLOCK;
/** Most bytes of a pax or GNU long-name header's data read into memory. */
const MAX_META_BYTES = 1024 * 1024;

const cstr = (buf: Buffer, start: number, len: number) => {
  const end = buf.indexOf(0, start);
  return buf.toString('utf8', start, end === -1 || end > start + len ? start + len : end);
};

/** Parses a numeric header field: octal text, or GNU base-256 (high bit set). NaN when it is neither. */
function numeric(buf: Buffer, start: number, len: number): number {
  if (buf[start]! & 0x80) {
    if (buf[start]! & 0x40) return NaN; // negative
    let n = buf[start]! & 0x3f;
    for (let i = start + 1; i < start + len; i++) n = n * 256 + buf[i]!;
    return n;
  }
  const text = buf
    .toString('latin1', start, start + len)
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (text === '') return 0;
  return /^[0-7]+$/.test(text) ? parseInt(text, 8) : NaN;
}

function checksumOk(header: Buffer): boolean {
  const stored = numeric(header, 148, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : header[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** Parses pax records (`<len> <key>=<value>\n`); undefined when malformed. */
function parsePax(data: Buffer): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    const space = data.indexOf(0x20, i);
    if (space === -1) return undefined;
    const len = Number(data.toString('latin1', i, space));
    if (!Number.isSafeInteger(len) || len <= space - i || i + len > data.length) return undefined;
    const record = data.toString('utf8', space + 1, i + len - 1);
    const eq = record.indexOf('=');
    if (eq === -1) return undefined;
    out[record.slice(0, eq)] = record.slice(eq + 1);
    i += len;
  }
  return out;
}

/**
 * The bytes of one tar shard, read front to back: a local file (positional reads; a member over the limit is skipped
 * without reading it) or a stream (an S3 object's body; skipped bytes are read and dropped). A read error that is a
 * FilterError is the transport's, not the shard's (a connection reset mid-object): readTar throws it, so the caller
 * can retry; any other read error makes the rest of the shard unreadable, as a local file's I/O error does.
 */
export interface TarBytes {
  /** Fills `buf` from the current position; fewer bytes only at the end of the shard. */
  read(buf: Buffer): Promise<number>;
  /** Moves `n` bytes forward without keeping them; returns how many there were (fewer at the end). */
  skip(n: number): Promise<number>;
  close(): Promise<void>;
  /** True once the bytes ended because their source was cut (a gzip stream without its end), not at its end. */
  cut?(): boolean;
}

/** A local tar file as TarBytes. */
export async function openTarFile(path: string): Promise<TarBytes> {
  const fh = await open(path, 'r');
  const size = (await fh.stat()).size;
  let pos = 0;
  return {
    async read(buf) {
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      pos += got;
      return got;
    },
    async skip(n) {
      const moved = Math.max(0, Math.min(n, size - pos));
      pos += moved;
      return moved;
    },
    close: () => fh.close(),
  };
}

/**
 * A stream of chunks (a Readable, an S3 body) as TarBytes. It pulls one chunk at a time, so memory stays at a chunk
 * plus what the caller asks for, whatever the shard's size; close() ends the stream early.
 */
export function streamTarBytes(chunks: AsyncIterable<Uint8Array>): TarBytes {
  const it = chunks[Symbol.asyncIterator]();
  let head: Buffer = Buffer.alloc(0);
  let ended = false;
  const fill = async (): Promise<boolean> => {
    while (head.length === 0 && !ended) {
      const next = await it.next();
      if (next.done) ended = true;
      else
        head = Buffer.isBuffer(next.value)
          ? next.value
          : Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    }
    return head.length > 0;
  };
  const take = async (n: number, into?: Buffer): Promise<number> => {
    let got = 0;
    while (got < n && (await fill())) {
      const k = Math.min(head.length, n - got);
      if (into) head.copy(into, got, 0, k);
      head = head.subarray(k);
      got += k;
    }
    return got;
  };
  return {
    read: (buf) => take(buf.length, buf),
    skip: (n) => take(n),
    close: async () => {
      if (!ended) await it.return?.();
    },
  };
}

type Unreadable = Extract<TarEvent, { type: 'unreadable' }>;
const truncated = (offset: number, message: string, name?: string): Unreadable => ({
  type: 'unreadable',
  kind: 'truncated_shard',
  offset,
  message,
  ...(name !== undefined ? { name } : {}),
});
const corrupt = (offset: number, message: string): Unreadable => ({
  type: 'unreadable',
  kind: 'corrupt_shard',
  offset,
  message,
});

/** A parsed header block: what it says, or why the shard is unreadable from it. */
type Header = { typeflag: string; size: number; name: string } | Unreadable | 'end';

function parseHeader(
  header: Buffer,
  offset: number,
  longName: string | undefined,
  pax: Record<string, string>,
): Header {
  if (header.every((b) => b === 0)) return 'end';
  if (!checksumOk(header)) return corrupt(offset, 'a header has a bad checksum');
  const typeflag = String.fromCharCode(header[156]!);
  let size = numeric(header, 124, 12);
  if (pax.size !== undefined) size = /^\d+$/.test(pax.size) ? Number(pax.size) : NaN;
  if (!Number.isFinite(size) || size < 0) return corrupt(offset, 'a header has an invalid size');
  let name = cstr(header, 0, 100);
  const prefix = header.toString('latin1', 257, 263) === 'ustar\0' ? cstr(header, 345, 155) : '';
  if (prefix) name = `${prefix}/${name}`;
  if (longName !== undefined) name = longName;
  if (pax.path !== undefined) name = pax.path;
  return { typeflag, size, name };
}

/**
 * A regular file as readTarEntries yields it: its header, and `read` to take its data. A member the caller does not
 * read is skipped when the reader moves on (unread: positional readers never touch its bytes), so what a member
 * costs in memory is the caller's choice, made before the bytes exist.
 */
export interface TarEntry {
  readonly type: 'member';
  readonly name: string;
  readonly size: number;
  readonly offset: number;
  /**
   * Reads the member's data, once, before the next entry is asked for. Undefined when the shard ends inside the
   * member (the next event says so). Absent when the member is over the size limit.
   */
  readonly read?: () => Promise<Buffer | undefined>;
}

/**
 * Yields the regular files of a tar shard in order, then at most one `unreadable` event (which ends the shard).
 * `input` is a local path or TarBytes; either is closed when the generator ends.
 */
export async function* readTar(input: string | TarBytes, maxMemberBytes: number): AsyncGenerator<TarEvent> {
  for await (const entry of readTarEntries(input, maxMemberBytes)) {
    if (entry.type === 'unreadable' || !entry.read) {
      yield entry;
      continue;
    }
    const { name, size, offset } = entry;
    const data = await entry.read();
    // Undefined: the shard ends inside the member, and the next event is that.
    if (data) yield { type: 'member', name, size, offset, data };
  }
}

/** readTar with the data left to the caller (TarEntry.read): members the caller has no use for are never read. */
export async function* readTarEntries(
  input: string | TarBytes,
  maxMemberBytes: number,
): AsyncGenerator<TarEntry | Unreadable> {
  let bytes: TarBytes;
  try {
    bytes = typeof input === 'string' ? await openTarFile(input) : input;
  } catch (err) {
    yield {
      type: 'unreadable',
      kind: 'unreadable_shard',
      offset: 0,
      message: `cannot open: ${(err as Error).message}`,
    };
    return;
  }
  try {
    yield* readMembers(bytes, maxMemberBytes);
  } catch (err) {
    if (err instanceof FilterError) throw err;
    yield { type: 'unreadable', kind: 'unreadable_shard', offset: 0, message: `read error: ${(err as Error).message}` };
  } finally {
    await bytes.close().catch(() => undefined);
  }
}

async function* readMembers(bytes: TarBytes, maxMemberBytes: number): AsyncGenerator<TarEntry | Unreadable> {
  const header = Buffer.alloc(BLOCK);
  let pos = 0;
  let longName: string | undefined;
  let pax: Record<string, string> = {};
  const read = async (buf: Buffer) => {
    const got = await bytes.read(buf);
    pos += got;
    return got;
  };
  const skip = async (n: number) => {
    const moved = n > 0 ? await bytes.skip(n) : 0;
    pos += moved;
    return moved;
  };
  for (;;) {
    const offset = pos;
    const got = await read(header);
    // An empty shard holds nothing; one that ends between members without its end-of-archive blocks was cut (a
    // copy or download stopped at a member boundary): what follows is missing, as GNU tar says.
    if (got === 0) {
      if (bytes.cut?.()) return yield truncated(offset, 'its compressed stream ends early (unexpected end of file)');
      return offset === 0 ? undefined : yield truncated(offset, 'the shard ends without its end-of-archive blocks');
    }
    if (got < BLOCK) return yield truncated(offset, 'the shard ends inside a header');
    const h = parseHeader(header, offset, longName, pax);
    if (h === 'end') return;
    if ('type' in h) return yield h;
    const { typeflag, size, name } = h;
    const pad = padded(size) - size;
    if (typeflag === 'x' || typeflag === 'L') {
      if (size > MAX_META_BYTES) return yield corrupt(offset, `a ${size}-byte extended header`);
      const data = Buffer.alloc(size);
      if ((await read(data)) < size) return yield truncated(offset, 'the shard ends inside a header');
      await skip(pad);
      if (typeflag === 'L') longName = cstr(data, 0, data.length);
      else {
        const parsed = parsePax(data);
        if (!parsed) return yield corrupt(offset, 'a malformed pax header');
        pax = parsed;
      }
      continue;
    }
    longName = undefined;
    pax = {};
    // Directories, links, global pax headers: skipped. A member over the limit: reported without a way to read it.
    const regular = typeflag === '0' || typeflag === '\0' || typeflag === '7';
    if (!regular || size > maxMemberBytes) {
      if (regular) yield { type: 'member', name, size, offset };
      const moved = await skip(size + pad);
      // Cut inside what it skips: the shard is truncated there, whatever the member would have been worth.
      if (moved < size) {
        const message = `the shard ends inside member ${JSON.stringify(name)} (${moved} of ${size} bytes)`;
        return yield truncated(offset, message, name);
      }
      continue;
    }
    let state: 'unread' | 'read' | 'cut' = 'unread';
    let have = 0;
    const readData = async (): Promise<Buffer | undefined> => {
      if (state !== 'unread') throw new Error(`member ${name} was read already`);
      // Filled whole by the read or dropped: no need to zero it first (a 60 MiB member costs one copy, not two).
      const data = Buffer.allocUnsafeSlow(size);
      have = await read(data);
      state = have < size ? 'cut' : 'read';
      return state === 'read' ? data : undefined;
    };
    yield { type: 'member', name, size, offset, read: readData };
    // A member skipped unread is cut off as surely as one read: the same event either way.
    if (state === 'unread') {
      have = await skip(size);
      if (have < size) state = 'cut';
    }
    if (state === 'cut') {
      const message = `the shard ends inside member ${JSON.stringify(name)} (${have} of ${size} bytes)`;
      return yield truncated(offset, message, name);
    }
    // The member is whole; the shard ending inside its padding is cut all the same (what followed is missing).
    if ((await skip(pad)) < pad) {
      return yield truncated(pos, `the shard ends inside the padding after member ${JSON.stringify(name)}`);
    }
  }
}

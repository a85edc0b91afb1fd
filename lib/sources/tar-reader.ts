import { open } from 'node:fs/promises';

/**
 * A minimal, bounded tar reader for WebDataset shards (ustar, GNU long names, pax `path`/`size`). It reads with
 * positional reads, so a member over the size limit is skipped without being read, and it reports where a shard
 * stops being readable (a cut-off header or member, a corrupt header) instead of throwing: the caller turns that into
 * a reject and goes on with the next shard.
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

/** Yields the regular files of a tar file in order, then at most one `unreadable` event (which ends the shard). */
export async function* readTar(path: string, maxMemberBytes: number): AsyncGenerator<TarEvent> {
  let fh;
  try {
    fh = await open(path, 'r');
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
    const fileSize = (await fh.stat()).size;
    const header = Buffer.alloc(BLOCK);
    let pos = 0;
    let longName: string | undefined;
    let pax: Record<string, string> = {};
    const readExact = async (buf: Buffer, at: number) => {
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, at + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got;
    };
    for (;;) {
      const offset = pos;
      if (offset >= fileSize) return; // no end-of-archive blocks: accepted when the file ends between members
      const got = await readExact(header, offset);
      if (got < BLOCK) {
        yield { type: 'unreadable', kind: 'truncated_shard', offset, message: `the shard ends inside a header` };
        return;
      }
      if (header.every((b) => b === 0)) return; // end of archive
      if (!checksumOk(header)) {
        yield { type: 'unreadable', kind: 'corrupt_shard', offset, message: 'a header has a bad checksum' };
        return;
      }
      const typeflag = String.fromCharCode(header[156]!);
      let size = numeric(header, 124, 12);
      if (pax.size !== undefined) size = /^\d+$/.test(pax.size) ? Number(pax.size) : NaN;
      if (!Number.isFinite(size) || size < 0) {
        yield { type: 'unreadable', kind: 'corrupt_shard', offset, message: 'a header has an invalid size' };
        return;
      }
      let name = cstr(header, 0, 100);
      const prefix = header.toString('latin1', 257, 263) === 'ustar\0' ? cstr(header, 345, 155) : '';
      if (prefix) name = `${prefix}/${name}`;
      if (longName !== undefined) name = longName;
      if (pax.path !== undefined) name = pax.path;
      const dataAt = offset + BLOCK;
      pos = dataAt + padded(size);

      if (typeflag === 'x' || typeflag === 'L') {
        if (size > MAX_META_BYTES) {
          yield { type: 'unreadable', kind: 'corrupt_shard', offset, message: `a ${size}-byte extended header` };
          return;
        }
        const data = Buffer.alloc(size);
        if ((await readExact(data, dataAt)) < size) {
          yield { type: 'unreadable', kind: 'truncated_shard', offset, message: 'the shard ends inside a header' };
          return;
        }
        if (typeflag === 'L') longName = cstr(data, 0, data.length);
        else {
          const parsed = parsePax(data);
          if (!parsed) {
            yield { type: 'unreadable', kind: 'corrupt_shard', offset, message: 'a malformed pax header' };
            return;
          }
          pax = parsed;
        }
        continue;
      }
      longName = undefined;
      pax = {};
      if (typeflag !== '0' && typeflag !== '\0' && typeflag !== '7') continue; // directories, links, global pax: skipped
      if (size > maxMemberBytes) {
        yield { type: 'member', name, size, offset };
        continue;
      }
      if (dataAt + size > fileSize) {
        yield {
          type: 'unreadable',
          kind: 'truncated_shard',
          offset,
          name,
          message: `the shard ends inside member ${JSON.stringify(name)} (${fileSize - dataAt} of ${size} bytes)`,
        };
        return;
      }
      const data = Buffer.alloc(size);
      if ((await readExact(data, dataAt)) < size) {
        yield { type: 'unreadable', kind: 'truncated_shard', offset, name, message: `the shard ends inside a member` };
        return;
      }
      yield { type: 'member', name, size, offset, data };
    }
  } catch (err) {
    yield { type: 'unreadable', kind: 'unreadable_shard', offset: 0, message: `read error: ${(err as Error).message}` };
  } finally {
    await fh.close();
  }
}

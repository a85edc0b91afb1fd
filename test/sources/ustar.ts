/**
 * Hand-built ustar bytes for the WebDataset tests: whole shards, cut-off shards, lying headers, and sparse shards
 * whose big members are holes.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';

const BLOCK = 512;

/** One ustar header. `size` is what the header claims; `sizeField` overrides its 12 bytes (e.g. base-256). */
export function ustarHeader(name: string, size: number, sizeField?: Buffer): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  if (sizeField) sizeField.copy(h, 124, 0, 12);
  else {
    const octal = size.toString(8);
    // 11 digits + NUL when it fits; a 12-digit octal without NUL (as some writers emit) for 8 GiB and up.
    h.write(octal.length <= 11 ? `${octal.padStart(11, '0')}\0` : octal.padStart(12, '0'), 124, 'latin1');
  }
  h.write('00000000000\0', 136, 'latin1');
  h.write('0', 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** A member: header + data padded to the block size. */
export function ustarMember(name: string, data: Buffer): Buffer {
  const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return Buffer.concat([ustarHeader(name, data.length), data, Buffer.alloc(pad)]);
}

/** A whole tar: members then the two zero blocks. */
export function ustar(members: [string, Buffer][]): Buffer {
  return Buffer.concat([...members.map(([n, d]) => ustarMember(n, d)), Buffer.alloc(2 * BLOCK)]);
}

/** GNU base-256 encoding of a size field (12 bytes, high bit set). */
export function base256(n: bigint): Buffer {
  const b = Buffer.alloc(12);
  for (let i = 11; i >= 1; i--) {
    b[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  b[0] = 0x80;
  return b;
}

/** The members of one WebDataset sample: `<key>.<ext>` image, `<key>.txt` caption and, with `meta`, `<key>.json`. */
export function sampleMembers(
  key: string,
  image: Buffer,
  caption: string,
  meta?: Record<string, unknown>,
  ext = 'jpg',
): [string, Buffer][] {
  const members: [string, Buffer][] = [
    [`${key}.${ext}`, image],
    [`${key}.txt`, Buffer.from(caption)],
  ];
  if (meta) members.push([`${key}.json`, Buffer.from(JSON.stringify(meta))]);
  return members;
}

/** A member of a sparse tar: its data, or only a header claiming `size` bytes over a hole (never written). */
export type SparseMember =
  { readonly name: string; readonly data: Buffer } | { readonly name: string; readonly size: number };

/** Writes a tar whose size-only members are holes: a few KiB on disk for members of any claimed size. */
export function writeSparseTar(path: string, members: readonly SparseMember[]): void {
  const fd = openSync(path, 'w');
  try {
    let pos = 0;
    for (const m of members) {
      if ('data' in m) {
        const whole = ustarMember(m.name, m.data);
        writeSync(fd, whole, 0, whole.length, pos);
        pos += whole.length;
      } else {
        writeSync(fd, ustarHeader(m.name, m.size), 0, BLOCK, pos);
        pos += BLOCK + Math.ceil(m.size / BLOCK) * BLOCK;
      }
    }
    ftruncateSync(fd, pos + 2 * BLOCK);
  } finally {
    closeSync(fd);
  }
}

/** Hand-built ustar bytes for WebDataset source tests: whole shards, cut-off shards and lying headers. */

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

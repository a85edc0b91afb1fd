/**
 * Hostile JPEGs for the tests, made at test time: a frame header hidden behind a bogus FF 00 "segment" (issue 12,
 * part 1) and progressive JPEGs with as many scans as asked (part 2), written by hand because no encoder writes them.
 */
import sharp from 'sharp';

/** Offset of the first marker `code` in `b` (FF code), walking the segments before the first scan. */
function markerAt(b: Buffer, code: number): number {
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) throw new Error(`no marker at ${i}`);
    if (b[i + 1] === code) return i;
    if (b[i + 1] === 0xda) break;
    i += 2 + b.readUInt16BE(i + 2);
  }
  throw new Error(`marker ${code.toString(16)} not found`);
}

/**
 * A small JPEG (64x64 unless told) whose markers, read by a reader that takes `FF 00` for a segment with a length,
 * say `width` x `height`, while libjpeg reads a 65500x65500 frame header: libjpeg skips FF 00 as garbage and scans on
 * to the hidden SOF, then an APP2 whose payload swallows the visible SOF. Progressive (SOF2) when asked, so a decode
 * at the hidden size would want whole-image coefficient buffers (~13 GB).
 */
export async function hiddenFrameJpeg(
  opts: { width?: number; height?: number; hidden?: number; progressive?: boolean } = {},
): Promise<Buffer> {
  const { width = 64, height = 64, hidden = 65500, progressive = false } = opts;
  const base = await sharp({ create: { width, height, channels: 3, background: { r: 120, g: 60, b: 200 } } })
    .jpeg({ quality: 50, progressive })
    .toBuffer();
  const sof = markerAt(base, progressive ? 0xc2 : 0xc0);
  const sofLen = 2 + base.readUInt16BE(sof + 2); // FF Cx + length + payload
  const visible = base.subarray(sof, sof + sofLen);
  const big = Buffer.from(visible);
  big.writeUInt16BE(hidden, 5); // height
  big.writeUInt16BE(hidden, 7); // width
  const app2 = Buffer.from([0xff, 0xe2, 0, 0]);
  app2.writeUInt16BE(2 + sofLen, 2); // its payload is the visible SOF
  const hiddenRegion = Buffer.concat([big, app2]);
  const bogus = Buffer.from([0xff, 0x00, 0, 0]);
  bogus.writeUInt16BE(2 + hiddenRegion.length, 2); // "length" of FF 00 for a reader that takes it for a segment
  return Buffer.concat([base.subarray(0, sof), bogus, hiddenRegion, base.subarray(sof)]);
}

/** MSB-first bit writer with JPEG byte stuffing (FF -> FF 00); pads the last byte with 1s. */
class Bits {
  private readonly bytes: number[] = [];
  private acc = 0;
  private n = 0;
  put(value: number, len: number): void {
    for (let i = len - 1; i >= 0; i--) {
      this.acc = (this.acc << 1) | ((value >> i) & 1);
      if (++this.n === 8) this.flushByte();
    }
  }
  private flushByte(): void {
    this.bytes.push(this.acc);
    if (this.acc === 0xff) this.bytes.push(0);
    this.acc = 0;
    this.n = 0;
  }
  done(): Buffer {
    if (this.n > 0) this.put(0xff, 8 - this.n);
    return Buffer.from(this.bytes);
  }
}

function segment(code: number, payload: number[] | Buffer): Buffer {
  const head = Buffer.from([0xff, code, 0, 0]);
  head.writeUInt16BE(2 + payload.length, 2);
  return Buffer.concat([head, Buffer.from(payload)]);
}

/**
 * A valid grey progressive JPEG of width x height (multiples of 8): one DC scan, then `scans - 1` AC first scans
 * (bands 1-63, Al 0) that each code every block as part of an end-of-band run. Repeating a first scan at Al 0 is no
 * bogus progression for libjpeg (the expected Ah stays 0), so it reads them all: the cost is blocks x scans. With
 * `bogusAt`, scan number `bogusAt` is a refinement (Ah 1) of bits never sent: libjpeg's bogus-progression warning.
 */
export function manyScansJpeg(width: number, height: number, scans: number, bogusAt?: number): Buffer {
  const blocks = (width / 8) * (height / 8);
  const parts: Buffer[] = [Buffer.from([0xff, 0xd8])];
  parts.push(segment(0xdb, [0x00, ...new Array<number>(64).fill(1)]));
  parts.push(segment(0xc2, [8, height >> 8, height & 255, width >> 8, width & 255, 1, 1, 0x11, 0]));
  // DC table 0: one code, "0" -> category 0 (difference 0).
  parts.push(segment(0xc4, [0x00, 1, ...new Array<number>(15).fill(0), 0x00]));
  // AC table 0: EOBr for r = 0..14 (0x00, 0x10, ... 0xE0), 4-bit codes 0000..1110.
  const eob = Array.from({ length: 15 }, (_, r) => r << 4);
  parts.push(segment(0xc4, [0x10, 0, 0, 0, 15, ...new Array<number>(12).fill(0), ...eob]));
  // DC first scan: every block's difference is 0.
  parts.push(segment(0xda, [1, 1, 0x00, 0, 0, 0x00]));
  const dc = new Bits();
  for (let k = 0; k < blocks; k++) dc.put(0, 1);
  parts.push(dc.done());
  // One AC scan's data: EOB runs covering every block (a run is at most 32767).
  const ac = new Bits();
  for (let left = blocks; left > 0;) {
    const run = Math.min(left, 32767);
    const r = 31 - Math.clz32(run);
    ac.put(r, 4);
    if (r > 0) ac.put(run - (1 << r), r);
    left -= run;
  }
  const acData = ac.done();
  for (let s = 2; s <= scans; s++) {
    const refine = s === bogusAt;
    parts.push(segment(0xda, [1, 1, 0x00, 1, 63, refine ? 0x10 : 0x00]));
    parts.push(acData);
  }
  parts.push(Buffer.from([0xff, 0xd9]));
  return Buffer.concat(parts);
}

/**
 * The DataComp uid list of the kept samples: the `.npy` subset file that DataComp's `resharder.py` reads to cut a
 * pool down to those samples (`--subset-file`). Its layout, as resharder.py checks it: a 1-D NumPy structured array
 * of dtype `np.dtype("u8,u8")` (fields `f0`, `f1`: the uid's high and low 64 bits, little-endian), sorted
 * ascending, so that `np.searchsorted` finds each uid; the uid is the 32-hex-digit `uid` of a sample's `.json`.
 *
 * Written by hand: the .npy format is a 10-byte preamble, a Python-literal header dict padded to 64 bytes and the raw
 * array bytes (numpy.lib.format, version 1.0), and no well-kept npm package writes a structured dtype (the ones that
 * write .npy at all take plain numeric arrays).
 */
import { constants } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';

/** A DataComp uid: 128 bits as 32 hex digits. */
const UID = /^[0-9a-f]{32}$/i;

/** The DataComp uid a record's metadata carries (its `.json`'s `uid`), or undefined. */
export function datacompUid(metadata: Record<string, unknown> | undefined): string | undefined {
  const uid = metadata?.uid;
  return typeof uid === 'string' && UID.test(uid) ? uid.toLowerCase() : undefined;
}

/**
 * Kept uids, 16 bytes each in one growing buffer (a pool's 10^7 kept samples take 160 MB here, not the ~1 GB of as
 * many strings), sorted and deduplicated when written.
 */
export class UidList {
  private words = new Uint32Array(4 * 1024);
  private n = 0;

  get count(): number {
    return this.n;
  }

  add(uid: string): void {
    if (!UID.test(uid)) throw new Error(`not a DataComp uid (32 hex digits): ${JSON.stringify(uid)}`);
    if (4 * (this.n + 1) > this.words.length) {
      const grown = new Uint32Array(this.words.length * 2);
      grown.set(this.words);
      this.words = grown;
    }
    // Big-endian 32-bit words, most significant first: comparing them in order compares the uids.
    for (let w = 0; w < 4; w++) this.words[4 * this.n + w] = parseInt(uid.slice(8 * w, 8 * w + 8), 16);
    this.n++;
  }

  /** Indices of the distinct uids in ascending order. */
  private sorted(): number[] {
    const w = this.words;
    const cmp = (a: number, b: number) => {
      for (let k = 0; k < 4; k++) if (w[4 * a + k] !== w[4 * b + k]) return w[4 * a + k]! - w[4 * b + k]!;
      return 0;
    };
    const order = Array.from({ length: this.n }, (_, i) => i).sort(cmp);
    return order.filter((idx, i) => i === 0 || cmp(order[i - 1]!, idx) !== 0);
  }

  /** The .npy bytes: header, then (f0, f1) per uid as little-endian u64 (f0 = high 64 bits). */
  toNpy(): Buffer {
    const order = this.sorted();
    const header = npyHeader(
      `{'descr': [('f0', '<u8'), ('f1', '<u8')], 'fortran_order': False, 'shape': (${order.length},), }`,
    );
    const body = Buffer.alloc(16 * order.length);
    order.forEach((idx, i) => {
      const w = this.words;
      // u64 little-endian = low 32-bit word first.
      body.writeUInt32LE(w[4 * idx + 1]!, 16 * i);
      body.writeUInt32LE(w[4 * idx]!, 16 * i + 4);
      body.writeUInt32LE(w[4 * idx + 3]!, 16 * i + 8);
      body.writeUInt32LE(w[4 * idx + 2]!, 16 * i + 12);
    });
    return Buffer.concat([header, body]);
  }

  /** Writes the list to `path` whole or not at all (temp file, fsync, rename); returns the distinct uids written. */
  async write(path: string): Promise<number> {
    const bytes = this.toNpy();
    const tmp = `${path}.tmp-${process.pid}`;
    await unlink(tmp).catch(() => undefined);
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o666);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    return (bytes.length - bytes.readUInt16LE(8) - 10) / 16;
  }
}

/** numpy.lib.format 1.0: magic, version, header length, the dict padded with spaces to a 64-byte boundary, '\n'. */
function npyHeader(dict: string): Buffer {
  const unpadded = 10 + dict.length + 1;
  const padded = dict + ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const preamble = Buffer.from([0x93, ...Buffer.from('NUMPY'), 1, 0, 0, 0]);
  preamble.writeUInt16LE(padded.length, 8);
  return Buffer.concat([preamble, Buffer.from(padded, 'latin1')]);
}

/**
 * LMDB trusts its file: opening a data.mdb that is not one of its environments crashes the process (a segmentation
 * fault, no message). This reads both meta pages first, without loading LMDB; a store damaged past them is still
 * LMDB's to trust.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { FilterError } from '../errors.ts';

/** LMDB's meta page magic (0xBEEFC0DE), and where the LMDB build lmdb-js ships writes it and the page size. */
const LMDB_MAGIC = 0xbeefc0de;
const MAGIC_AT = 24;
const PAGE_SIZE_AT = 48;

/** Throws score_cache_unusable when `dir`/data.mdb exists and is not an LMDB environment's data file. */
export function checkStoreHeader(dir: string): void {
  let fd: number;
  try {
    fd = openSync(join(dir, 'data.mdb'), 'r');
  } catch {
    return; // none yet (LMDB makes it), or unreadable (LMDB's own open says why)
  }
  try {
    const { size } = fstatSync(fd);
    if (size === 0) return; // LMDB initialises an empty file
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    const pageSize = head.readUInt32LE(PAGE_SIZE_AT);
    const sane = pageSize >= 4096 && pageSize <= 65536 && (pageSize & (pageSize - 1)) === 0 && size >= 2 * pageSize;
    const second = Buffer.alloc(64);
    if (sane) readSync(fd, second, 0, 64, pageSize);
    if (!sane || head.readUInt32LE(MAGIC_AT) !== LMDB_MAGIC || second.readUInt32LE(MAGIC_AT) !== LMDB_MAGIC) {
      const message = `score cache ${dir}: data.mdb is not an LMDB store (move it away or give another directory)`;
      throw new FilterError('score_cache_unusable', message, { dir });
    }
  } finally {
    closeSync(fd);
  }
}

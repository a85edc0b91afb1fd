/**
 * The --score-cache directory as the user handles it: what may be opened as one (checked before LMDB creates a file
 * in it), its statistics (`mlm-filter cache stats`) and clearing it (`mlm-filter cache clear`).
 *
 * A score cache directory holds LMDB's two files and nothing else: a directory with other files is not one (a typo
 * like `--score-cache .` must not litter a project with data.mdb, and `cache clear` must never remove what it did
 * not make).
 */
import { readdir, realpath, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { FilterError } from '../errors.ts';
import { checkStoreHeader } from './lmdb-header.ts';
import { IMAGE_DATABASES, type ImageEntry } from './store.ts';

/** The files of an LMDB environment: all a score cache directory may hold. */
export const STORE_FILES: readonly string[] = ['data.mdb', 'lock.mdb'];

/** A score entry's key: a SHA-256 in hex (lib/cache/key.ts). */
const SCORE_KEY = /^[0-9a-f]{64}$/;

/** The main database's keys that name the image dedupe's sub-databases (their values are LMDB's, not entries). */
const SUB_DATABASES: ReadonlySet<string> = new Set(Object.values(IMAGE_DATABASES));

/** The main database's score keys and values, the sub-database names skipped (their values do not decode). */
function* scoreEntries(db: Store): Generator<{ key: string; value: unknown }> {
  for (const key of db.getKeys({})) {
    if (typeof key === 'string' && SUB_DATABASES.has(key)) continue;
    yield { key, value: db.get(key) };
  }
}

/** When an entry (score or image) was first scored: `first.at`, or undefined. */
const firstAt = (value: unknown): string | undefined => {
  const at = (value as { first?: { at?: unknown } } | undefined)?.first?.at;
  return typeof at === 'string' ? at : undefined;
};

/** `missing`: made by the first run; `empty`: an empty directory; `store`: holds a store (data.mdb). */
export type CacheDirState = 'missing' | 'empty' | 'store';

/** What `dir` is as a score cache; throws the one-line error of a path that cannot be one. */
export async function checkCacheDir(dir: string): Promise<CacheDirState> {
  const s = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FilterError('score_cache_unusable', `cannot use score cache ${dir}: ${err.message}`, { dir });
  });
  if (!s) return 'missing';
  if (!s.isDirectory()) {
    throw new FilterError('score_cache_unusable', `score cache ${dir} is a file: give a directory`, { dir });
  }
  const names = await readdir(dir);
  const foreign = names.filter((name) => !STORE_FILES.includes(name));
  if (foreign.length > 0) {
    const shown = foreign.slice(0, 3).join(', ') + (foreign.length > 3 ? `, ... (${foreign.length} in all)` : '');
    const message = `score cache ${dir} holds files a score cache does not (${shown}): give a new or empty directory`;
    throw new FilterError('score_cache_foreign', message, { dir });
  }
  if (!names.includes('data.mdb')) return 'empty';
  checkStoreHeader(dir);
  return 'store';
}

/**
 * Refuses a cache inside --out or an --out inside the cache, symlinks resolved: an --overwrite (or a user clearing
 * a run's output) would delete a cache other runs rely on, and the cache is not a run's output.
 */
export async function checkCacheOutsideOut(cache: string, out: string): Promise<void> {
  const [c, o] = await Promise.all([realish(cache), realish(out)]);
  const within = (inner: string, outer: string) => {
    const rel = relative(outer, inner);
    return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
  };
  if (within(c, o) || within(o, c)) {
    const message = `--score-cache ${cache} and --out ${out} overlap: keep the cache outside the run's output (an --overwrite would remove it)`;
    throw new FilterError('score_cache_in_output', message, { dir: cache, out });
  }
}

/** The real path of `path`, or of its nearest existing ancestor joined with the rest. */
async function realish(path: string): Promise<string> {
  const abs = resolve(path);
  const real = await realpath(abs).catch(() => undefined);
  if (real) return real;
  const parent = dirname(abs);
  return parent === abs ? abs : join(await realish(parent), basename(abs));
}

export interface CacheStats {
  readonly dir: string;
  /** Score entries. */
  readonly entries: number;
  /** Keys that are not score entries (none in a store only this module's runs wrote). */
  readonly otherKeys: number;
  /** Accepted images the image dedupe remembers (--dedupe-images). */
  readonly images: number;
  /** data.mdb + lock.mdb: their size, and the disk blocks allocated to them (LMDB files may be sparse). */
  readonly fileBytes: number;
  readonly diskBytes: number;
  /** The pages LMDB has used so far: what the store holds, free pages it will reuse included. */
  readonly usedBytes: number;
  /** When the oldest and newest entries were first scored (ISO), when there are entries. */
  readonly oldest?: string;
  readonly newest?: string;
  /** Other processes with the store open (LMDB's reader table, stale slots of dead processes cleared). */
  readonly openBy: number;
}

/** Reads every entry once (a full scan: seconds per million entries). */
export async function cacheStats(dir: string): Promise<CacheStats> {
  const db = await openExisting(dir);
  try {
    const openBy = otherReaders(db);
    let entries = 0;
    let otherKeys = 0;
    let oldest: string | undefined;
    let newest: string | undefined;
    for (const { key, value } of scoreEntries(db)) {
      const at = firstAt(value);
      if (typeof key !== 'string' || !SCORE_KEY.test(key) || at === undefined) {
        otherKeys++;
        continue;
      }
      entries++;
      if (oldest === undefined || at < oldest) oldest = at;
      if (newest === undefined || at > newest) newest = at;
    }
    const env = db.getStats() as { pageSize: number; lastPageNumber: number };
    const files = await Promise.all(STORE_FILES.map((name) => stat(join(dir, name)).catch(() => undefined)));
    const fileBytes = files.reduce((sum, s) => sum + (s?.size ?? 0), 0);
    const diskBytes = files.reduce((sum, s) => sum + (s ? s.blocks * 512 : 0), 0);
    const usedBytes = (env.lastPageNumber + 1) * env.pageSize;
    const images = imageDatabases(db)?.images.getCount() ?? 0;
    return { dir, entries, otherKeys, images, fileBytes, diskBytes, usedBytes, oldest, newest, openBy };
  } finally {
    await db.close();
  }
}

export interface ClearResult {
  /** Entries removed. */
  readonly removed: number;
  /**
   * `deleted`: the files removed (the disk returned); `emptied`: entries removed inside the store because a run had
   * it open or only old entries were asked for (the file keeps its size; LMDB reuses the pages); `none`: no store.
   */
  readonly mode: 'deleted' | 'emptied' | 'none';
  readonly openBy: number;
}

/**
 * Clears the score cache in `dir`, or with `olderThan` (epoch ms) only the entries first scored before it. Refuses a
 * directory that is not a score cache. With no other process holding the store, the whole cache is deleted;
 * otherwise its entries are removed in one LMDB write transaction, which waits for a run's write in progress and
 * which runs see as misses from then on.
 */
export async function clearCache(dir: string, options: { olderThan?: number } = {}): Promise<ClearResult> {
  if ((await checkCacheDir(dir)) !== 'store') return { removed: 0, mode: 'none', openBy: 0 };
  const db = await openExisting(dir);
  let whole: { removed: number; openBy: number };
  try {
    refuseForeignKeys(db, dir);
    const openBy = otherReaders(db);
    if (options.olderThan !== undefined || openBy > 0) {
      return { removed: await removeEntries(db, options.olderThan), mode: 'emptied', openBy };
    }
    let removed = 0;
    for (const key of db.getKeys({})) if (!(typeof key === 'string' && SUB_DATABASES.has(key))) removed++;
    whole = { removed, openBy };
  } finally {
    await db.close();
  }
  // Nobody else has it open: remove the files (the disk comes back). A run that opened it since keeps the old
  // environment until it ends (its file is unlinked, not truncated); the next run starts a new one.
  await Promise.all(STORE_FILES.map((name) => rm(join(dir, name), { force: true })));
  await rmdir(dir).catch(() => undefined);
  return { ...whole, mode: 'deleted' };
}

/**
 * Removes the entries first scored before `olderThan` (every entry without it) in one write transaction, and the
 * dedupe's accepted images recorded before it, from its image table and from every bucket that files them.
 */
async function removeEntries(db: Store, olderThan: number | undefined): Promise<number> {
  const cutoff = olderThan === undefined ? undefined : new Date(olderThan).toISOString();
  const doomed = (value: unknown) => {
    const at = firstAt(value);
    return cutoff === undefined || (at !== undefined && at < cutoff);
  };
  const image = imageDatabases(db);
  return db.transaction(() => {
    const keys = [...scoreEntries(db)].filter(({ value }) => doomed(value)).map(({ key }) => key);
    for (const key of keys) void db.remove(key);
    if (!image) return keys.length;
    const { images, buckets } = image;
    for (const { key, value } of images.getRange({})) if (doomed(value)) void images.remove(key);
    for (const { key, value } of buckets.getRange({})) {
      const kept = value.split('\n').filter((line) => !doomed(JSON.parse(line) as ImageEntry));
      if (kept.length === 0) void buckets.remove(key);
      else void buckets.put(key, kept.join('\n'));
    }
    return keys.length;
  });
}

/**
 * The image dedupe's sub-databases of a store, or undefined when no run used --dedupe-images (looked up by name
 * first: opening one would create it, and stats must not write).
 */
function imageDatabases(db: Store) {
  const named = (name: string) => Array.from(db.getKeys({ start: name, limit: 1 }))[0] === name;
  if (!named(IMAGE_DATABASES.images)) return undefined;
  return {
    images: db.openDB<ImageEntry, string>({ name: IMAGE_DATABASES.images, compression: false }),
    buckets: db.openDB<string, string>({ name: IMAGE_DATABASES.buckets, encoding: 'string', compression: false }),
  };
}

type Store = import('lmdb').RootDatabase<unknown, string>;

/** The store in `dir`, which must hold one; a data.mdb that is not LMDB is score_cache_unusable. */
async function openExisting(dir: string): Promise<Store> {
  if ((await checkCacheDir(dir)) !== 'store') {
    throw new FilterError('score_cache_unusable', `no score cache in ${dir} (no data.mdb)`, { dir });
  }
  const { open } = await import('lmdb');
  try {
    return open<unknown, string>({ path: dir, compression: false });
  } catch (err) {
    throw new FilterError('score_cache_unusable', `cannot open score cache ${dir}: ${(err as Error).message}`, { dir });
  }
}

/** A store whose first keys are not score keys is someone else's LMDB: never cleared by us. */
function refuseForeignKeys(db: Store, dir: string): void {
  for (const key of db.getKeys({ limit: 100 })) {
    if (typeof key === 'string' && SUB_DATABASES.has(key)) continue;
    if (typeof key !== 'string' || !SCORE_KEY.test(key)) {
      const message = `score cache ${dir}: data.mdb holds keys a score cache does not (${JSON.stringify(key)}): not cleared`;
      throw new FilterError('score_cache_foreign', message, { dir });
    }
  }
}

/** Processes other than this one with a reader slot in the store (after a read of ours: one slot is ours). */
function otherReaders(db: Store): number {
  (db as unknown as { readerCheck?: () => void }).readerCheck?.();
  Array.from(db.getKeys({ limit: 1 }));
  const { numReaders } = db.getStats() as { numReaders: number };
  return Math.max(0, numReaders - 1);
}

/**
 * What a run checks of --score-cache before anything is created or loaded: outside --out, and missing, empty or a
 * store. Returns a line saying which, for `filter --dry-run`.
 */
export async function checkCachePlace(dir: string, out: string): Promise<string> {
  await checkCacheOutsideOut(dir, out);
  const state = await checkCacheDir(dir);
  if (state === 'missing') return `score cache: ${resolve(dir)} (missing: a run creates it)`;
  if (state === 'empty') return `score cache: ${resolve(dir)} (an empty directory: a run makes a store in it)`;
  const size = (await stat(join(dir, 'data.mdb'))).size;
  return `score cache: ${resolve(dir)} (a store, data.mdb ${(size / 2 ** 20).toFixed(1)} MiB; reused)`;
}

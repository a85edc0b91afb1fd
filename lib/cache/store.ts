/**
 * The CLI's embedded score store: LMDB through the `lmdb` package (lmdb-js). Why LMDB: many processes may open one
 * environment at once, readers never block and writers are serialised by LMDB's own lock, so two runs on one
 * --score-cache are safe without a lock of ours; a crash cannot corrupt it (copy-on-write B-tree, no log to replay);
 * and lmdb-js is well kept, with prebuilt binaries published as npm optional packages (@lmdb/lmdb-<platform>), so
 * nothing is compiled at install. The fleet's shared store (issue 24) is another implementation of ScoreStore.
 */
import { mkdirSync } from 'node:fs';
import { open, type Database, type RootDatabase } from 'lmdb';
import { FilterError, type CachedFirst, type ScoreResult } from '../types.ts';
import { checkStoreHeader } from './lmdb-header.ts';
import { MAX_BUCKET_ENTRIES } from './near-index.ts';

/** Where a cached score was first computed. */
export type FirstOccurrence = CachedFirst;

export interface ScoreEntry {
  readonly result: ScoreResult;
  readonly first: FirstOccurrence;
}

export interface ScoreStore {
  get(key: string): Promise<ScoreEntry | undefined>;
  /** Stores the entry unless the key already has one: the first occurrence stays the first. */
  putIfAbsent(key: string, entry: ScoreEntry): Promise<void>;
  /** Entries not stored because the store reached its size bound (a store without one leaves it undefined). */
  readonly notStored?: number;
  close(): Promise<void>;
}

// The bound lives with the bucket scheme, so the DynamoDB store reads it without loading LMDB.
export { MAX_BUCKET_ENTRIES };

/**
 * The image dedupe's named sub-databases: LMDB files their names as keys of the main database, so whoever walks the
 * score entries (lib/cache/admin.ts) skips these two.
 */
export const IMAGE_DATABASES = { images: 'images', buckets: 'image-buckets' } as const;

/** A growth bound for the memory map (sparse: a small cache uses little disk); 64 GiB holds ~100M entries. */
const MAP_SIZE = 64 * 1024 ** 3;

/**
 * The score store and, in named sub-databases of the same environment (one file, one lock), the image store:
 * `images` (digest -> ImageEntry) and `image-buckets` (bucket key -> the entries filed under it, as JSON lines in
 * one string value). A near query reads 68 buckets, mostly empty: one plain get each and no second read per
 * candidate (a dupSort cursor per bucket cost ~40 us, a msgpack entry read per candidate ~11 us; entries never
 * change once written, so a copy in each bucket cannot go stale).
 */
export class LmdbScoreStore implements ScoreStore, ImageStore {
  notStored = 0;
  /** The image dedupe's sub-databases, opened on its first use: a store only the score cache uses never has them. */
  private imageDbs?: { images: Database<ImageEntry, string>; buckets: Database<string, string> };

  private constructor(
    private readonly db: RootDatabase<ScoreEntry, string>,
    private readonly maxBytes: number,
  ) {}

  private get image(): { images: Database<ImageEntry, string>; buckets: Database<string, string> } {
    this.imageDbs ??= {
      images: this.db.openDB<ImageEntry, string>({ name: IMAGE_DATABASES.images, compression: false }),
      buckets: this.db.openDB<string, string>({
        name: IMAGE_DATABASES.buckets,
        encoding: 'string',
        compression: false,
      }),
    };
    return this.imageDbs;
  }

  /**
   * `maxBytes`: stop storing new entries once the B-tree's pages hold this much (lookups go on). The tree, not the
   * file: pages freed by `mlm-filter cache clear --older-than` count again as room. Writes already past the check
   * when the bound is reached still land (a few pages over at most).
   */
  static open(dir: string, options: { maxBytes?: number } = {}): LmdbScoreStore {
    checkStoreHeader(dir);
    try {
      mkdirSync(dir, { recursive: true });
      // noMetaSync: one fsync per commit instead of two. A system crash may undo the last commit but never corrupts
      // the store (LMDB keeps ACI without the D): a cache loses a few entries, scored again later.
      const db = open<ScoreEntry, string>({ path: dir, mapSize: MAP_SIZE, compression: false, noMetaSync: true });
      return new LmdbScoreStore(db, options.maxBytes ?? Infinity);
    } catch (err) {
      const message = `cannot open score cache ${dir}: ${(err as Error).message}`;
      throw new FilterError('score_cache_unusable', message, { dir });
    }
  }

  /** Pages of the score tree, in bytes (mdb_stat: ~10 us, read only when a bound is set). */
  treeBytes(): number {
    const s = this.db.getStats() as { pageSize: number; treeBranchPageCount: number; treeLeafPageCount: number };
    const overflow = (s as { overflowPages?: number }).overflowPages ?? 0;
    return (s.treeBranchPageCount + s.treeLeafPageCount + overflow) * s.pageSize;
  }

  async get(key: string): Promise<ScoreEntry | undefined> {
    return this.db.get(key);
  }

  async putIfAbsent(key: string, entry: ScoreEntry): Promise<void> {
    if (this.maxBytes !== Infinity && this.treeBytes() >= this.maxBytes) {
      this.notStored++;
      return;
    }
    // The check and the put run in one write transaction: another process's entry for the key is never overwritten.
    await this.db.ifNoExists(key, () => void this.db.put(key, entry));
  }

  async getImage(digest: string): Promise<ImageEntry | undefined> {
    return this.image.images.get(digest);
  }

  async putImageIfAbsent(entry: ImageEntry, buckets: readonly string[]): Promise<ImageEntry> {
    // One write transaction: LMDB serialises writers across processes, so of two runs recording one digest at once
    // the first stays first and the second reads it back here.
    const { images, buckets: bucketDb } = this.image;
    return this.db.transaction(() => {
      const held = images.get(entry.digest);
      if (held) return held;
      void images.put(entry.digest, entry);
      const line = JSON.stringify(entry);
      for (const key of buckets) {
        const held = bucketDb.get(key);
        if (held === undefined) void bucketDb.put(key, line);
        else if (lineCount(held) < MAX_BUCKET_ENTRIES) void bucketDb.put(key, `${held}\n${line}`);
      }
      return entry;
    });
  }

  async bucket(key: string): Promise<ImageEntry[]> {
    const lines = this.image.buckets.get(key);
    return lines === undefined ? [] : lines.split('\n').map((line) => JSON.parse(line) as ImageEntry);
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}

function lineCount(text: string): number {
  let n = 1;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  return n;
}

/**
 * An accepted image as the image dedupe remembers it (issue 24): its exact digest, its perceptual hash and the pair
 * first accepted with it. A replay of that same pair (same id and same source origin) is never its own duplicate:
 * a crash between recording and commit must not drop the pair on replay.
 */
export interface ImageEntry {
  /** Hex digest of the image's decoded pixels (lib/cache/image-digest.ts): the exact-duplicate key. */
  readonly digest: string;
  /** The 64-bit perceptual hash as 16 lower-case hex digits: the near-duplicate key. */
  readonly phash: string;
  readonly first: FirstOccurrence;
}

/**
 * What an image dedupe needs from a store: entries by digest, and buckets of entries by a hash chunk (the
 * multi-index hashing of lib/cache/near-index.ts decides the bucket keys; stores only keep them). The embedded LMDB
 * store and the fleet's DynamoDB store both implement it.
 */
export interface ImageStore {
  getImage(digest: string): Promise<ImageEntry | undefined>;
  /**
   * Stores the entry unless its digest already has one, and adds it to each bucket of `buckets`; returns the entry
   * that holds the digest afterwards (the earlier one when another writer was first). Atomic per digest. A store may
   * bound a bucket's size (the LMDB one files at most MAX_BUCKET_ENTRIES): ImageDedupe finds exact copies by digest.
   */
  putImageIfAbsent(entry: ImageEntry, buckets: readonly string[]): Promise<ImageEntry>;
  /** The entries filed under one bucket key (empty when none). */
  bucket(key: string): Promise<ImageEntry[]>;
  close(): Promise<void>;
}

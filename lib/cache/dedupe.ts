/**
 * The image dedupe policy (issue 24): a pair whose image was already accepted, by this run or any earlier run on
 * the same store, is rejected `duplicate_image`, pointing at the pair first accepted with it. `exact`: the same
 * decoded tensor (lib/cache/image-digest.ts pixelDigest); `near`: a perceptual hash within `maxDistance` bits
 * (multi-index hashing, lib/cache/near-index.ts).
 *
 * Rules:
 * - Only accepted images count: the pipeline calls `check` before scoring (a duplicate costs no scorer call) and
 *   `recordAccepted` only once the policy accepted the pair. A rejected first occurrence never makes later copies
 *   duplicates.
 * - Exactly once: an entry whose first occurrence is the pair itself (same id and same source record) is never its
 *   duplicate. A replay after a crash between recording and commit, a re-run of the same input, a backfill job
 *   delivered twice, all decide the pair as the first time.
 * - Who is first, when two pairs with one image are in flight at once (one batch, or two runs): the one recorded
 *   first. `recordAccepted` of the other returns the duplicate reason; its own decision was accept, so it is turned
 *   into that reject. A pair the policy rejects is not recorded and keeps its own reasons. Exact copies are decided
 *   atomically by the store (putImageIfAbsent per digest, across processes); near copies are decided in recording
 *   order within a run (near records are serialised and re-check the index first; exact ones run at once), but
 *   two runs recording two near (not exact) copies at the same moment may both accept theirs.
 * - Entries are kept per preprocessing (the hashes are of the model's tensor): a model with another input size or
 *   resizing starts an empty memory in the same store.
 */
import { createHash } from 'node:crypto';
import { FilterError, type PreparedImage, type PreprocessSpec, type Reason, type SourceOrigin } from '../types.ts';
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { perceptualHash, pixelDigest, specTag } from './image-digest.ts';
import { bucketsOf, hamming, MAX_DISTANCE, probeKeys } from './near-index.ts';
import type { ImageEntry, ImageStore } from './store.ts';

export type DedupeMode = 'exact' | 'near';

/**
 * The default `near` distance, measured (BENCHMARKS.md, "Image dedupe: near distance", bench/cache/phash-distance.ts):
 * no two different images there were within 13 bits; copies (re-encoded, resized, WebP, cropped 2-5%, +-10%
 * brightness, a watermark) were within 6 bits for 95.6% and within 8 for 98.2% (a 5% crop is the farthest). Balanced
 * hashes (32 bits set) are an even distance apart, so 6 and 7 are one setting. 6 rather than 8: a query within 6
 * reads 4 x 17 buckets, within 8 it reads 4 x 137 (~25x the lookups: 1.9 ms per pair on LMDB, a third of a JPEG's
 * intake, bench/cache/dedupe-cost.ts); `near:8` stays one option away.
 */
export const DEFAULT_NEAR_DISTANCE = 6;

export interface ImageDedupeOptions {
  readonly mode: DedupeMode;
  /** `near` only: the largest Hamming distance of two hashes called the same image. Default DEFAULT_NEAR_DISTANCE. */
  readonly maxDistance?: number;
  /** The preprocessing of the tensors hashed (the scorer's): entries are kept apart per preprocessing. */
  readonly spec: PreprocessSpec;
}

/** The dedupe a `--dedupe-images` value asks for. */
export interface DedupeSetting {
  readonly mode: DedupeMode;
  readonly maxDistance: number;
}

/** `exact`, `near` or `near:D` (D in 0..32); anything else is a `bad_config` error naming the value. */
export function parseDedupeImages(value: string): DedupeSetting {
  const m = /^(exact|near)(?::(0|[1-9]\d?))?$/.exec(value);
  const distance = m?.[2] === undefined ? undefined : Number(m[2]);
  if (!m || (m[1] === 'exact' && distance !== undefined) || (distance !== undefined && distance > MAX_DISTANCE)) {
    throw new FilterError(
      'bad_config',
      `--dedupe-images must be exact, near or near:D with D in 0..${MAX_DISTANCE} (bits of 64), got ${JSON.stringify(value)}`,
      { option: 'dedupeImages', value },
    );
  }
  const mode = m[1] as DedupeMode;
  return { mode, maxDistance: mode === 'exact' ? 0 : (distance ?? DEFAULT_NEAR_DISTANCE) };
}

/**
 * `dedupeImages` parsed; refused (`missing_option`) without the `scoreCache` directory that holds its store and, for
 * a run (`run`, not for --print-config: a config file may hold both), (`bad_usage`) with a top fraction, whose first
 * pass stages pairs that its cut may still reject: only accepted images may be remembered.
 */
export function dedupeSetting(
  options: { readonly dedupeImages?: string; readonly scoreCache?: string; readonly topFraction?: unknown },
  run = true,
): DedupeSetting | undefined {
  if (options.dedupeImages === undefined) return undefined;
  const setting = parseDedupeImages(options.dedupeImages);
  if (!options.scoreCache) {
    throw new FilterError(
      'missing_option',
      '--dedupe-images needs --score-cache DIR: the accepted images are remembered in that directory',
      { option: 'dedupeImages' },
    );
  }
  if (run && options.topFraction !== undefined) {
    throw new FilterError(
      'bad_usage',
      '--dedupe-images cannot run with --top-fraction: pairs are accepted only at the end, after the ranking',
      { option: 'dedupeImages' },
    );
  }
  return setting;
}

/** The pair being decided, as the dedupe sees it. */
export interface DedupePair {
  readonly id: string;
  readonly origin: SourceOrigin;
}

export interface DedupeCounts {
  /** Pairs rejected for an image with the same digest as an accepted one. */
  exact: number;
  /** Pairs rejected for an image within the near distance of an accepted one (not the same digest). */
  near: number;
}

interface Match {
  readonly entry: ImageEntry;
  readonly distance: number;
  readonly exact: boolean;
}

export class ImageDedupe {
  readonly mode: DedupeMode;
  readonly maxDistance: number;
  readonly counts: DedupeCounts = { exact: 0, near: 0 };
  /** Bucket keys are prefixed with it: one store holds the entries of several preprocessings apart. */
  private readonly space: string;
  private readonly digests = new WeakMap<PreparedImage, string>();
  /** Local input paths as given -> absolute, without symlinks (see canonical). */
  private readonly paths = new Map<string, string>();
  /** Records in this run, one after another: of two near copies in flight, the second sees the first. */
  private recording: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: ImageStore,
    private readonly options: ImageDedupeOptions,
  ) {
    this.mode = options.mode;
    this.maxDistance = options.mode === 'exact' ? 0 : (options.maxDistance ?? DEFAULT_NEAR_DISTANCE);
    if (!Number.isInteger(this.maxDistance) || this.maxDistance < 0 || this.maxDistance > MAX_DISTANCE) {
      throw new Error(`near distance ${this.maxDistance} is not in 0..${MAX_DISTANCE}`);
    }
    this.space = createHash('sha256').update(specTag(options.spec)).digest('hex').slice(0, 8);
  }

  /** Undefined, or the `duplicate_image` reject of a pair whose image was already accepted by another pair. */
  async check(image: PreparedImage, pair: DedupePair): Promise<Reason | undefined> {
    const match = await this.match(image, pair);
    return match && this.duplicate(match);
  }

  /**
   * Records the image of a pair the policy accepted. Undefined when this pair is (now, or already was) its first
   * occurrence; the `duplicate_image` reason when another pair was recorded with it first (the caller rejects it).
   * Call it before the image's tensor is released: the digest is computed from it.
   */
  recordAccepted(image: PreparedImage, pair: DedupePair): Promise<Reason | undefined> {
    // Exact copies are decided by the store's atomic put per digest: no need to wait for other records (on the
    // fleet's table a record is a transaction, ~10-20 ms; serialised, that would cap a worker's accepted pairs).
    if (this.mode === 'exact') return this.record(image, pair);
    const next = this.recording.then(() => this.record(image, pair));
    this.recording = next.catch(() => undefined);
    return next;
  }

  private async record(image: PreparedImage, pair: DedupePair): Promise<Reason | undefined> {
    if (this.mode === 'near') {
      const match = await this.match(image, pair);
      if (match) return this.duplicate(match);
    }
    const phash = this.phashOf(image);
    const entry: ImageEntry = {
      digest: this.digestOf(image),
      phash,
      first: { id: pair.id, source: this.canonical(pair.origin), at: new Date().toISOString() },
    };
    const held = await this.store.putImageIfAbsent(entry, this.bucketKeys(bucketsOf(phash)));
    if (this.isSelf(held, pair)) return undefined;
    return this.duplicate({ entry: held, distance: hamming(held.phash, phash), exact: true });
  }

  /** The accepted image with this pair's digest, else the closest within the distance; never the pair's own. */
  private async match(image: PreparedImage, pair: DedupePair): Promise<Match | undefined> {
    const phash = this.phashOf(image);
    // All buckets asked at once: LMDB answers each synchronously within one read transaction, a remote store in
    // parallel (one await per bucket cost ~10 us each on LMDB).
    const buckets = await Promise.all(
      this.bucketKeys(probeKeys(phash, this.maxDistance)).map((k) => this.store.bucket(k)),
    );
    const seen = new Map<string, ImageEntry>();
    for (const entry of buckets.flat()) seen.set(entry.digest, entry);
    let best: Match | undefined;
    let sameHash = false;
    for (const entry of seen.values()) {
      const distance = hamming(entry.phash, phash);
      if (distance > this.maxDistance) continue;
      if (distance === 0) sameHash = true;
      if (this.mode === 'exact' || this.isSelf(entry, pair)) continue;
      if (!best || distance < best.distance) best = { entry, distance, exact: false };
    }
    // Equal tensors have equal hashes: the digest is computed only when an entry has this hash, and looked up by
    // itself (the entry holding it need not be that one, nor in a bucket read: a full bucket files no more).
    if (sameHash) {
      const held = await this.store.getImage(this.digestOf(image));
      if (held && !this.isSelf(held, pair)) return { entry: held, distance: 0, exact: true };
    }
    return best;
  }

  private duplicate(match: Match): Reason {
    const { id, source, at } = match.entry.first;
    if (match.exact) this.counts.exact++;
    else this.counts.near++;
    const how = match.exact ? 'the same image' : `a near copy (${match.distance} bits apart)`;
    return {
      code: 'duplicate_image',
      message: `${how} was accepted first with pair ${id}`,
      detail: { first: { id, source, at }, match: match.exact ? 'exact' : 'near', distance: match.distance },
    };
  }

  /** The entry was recorded by this very pair: same id, same source record (a replay, a re-run). */
  private isSelf(entry: ImageEntry, pair: DedupePair): boolean {
    return entry.first.id === pair.id && isDeepStrictEqual(entry.first.source, this.canonical(pair.origin));
  }

  /**
   * A record's source as entries keep it: a local input's path absolute and without symlinks, so that a re-run or a
   * --resume that names the input another way (from another directory, through a link) is still the same record and
   * never its own duplicate. Other paths (s3://, http(s)://, `-` for stdin) and other sources are kept as they are.
   */
  private canonical(origin: SourceOrigin): SourceOrigin {
    if (origin.kind !== 'file' && origin.kind !== 'webdataset') return origin;
    if (origin.path === '-' || /^[a-z][a-z0-9+.-]*:\/\//i.test(origin.path)) return origin;
    let path = this.paths.get(origin.path);
    if (path === undefined) {
      try {
        path = realpathSync(origin.path);
      } catch {
        path = resolve(origin.path);
      }
      this.paths.set(origin.path, path);
    }
    return { ...origin, path };
  }

  private bucketKeys(keys: readonly string[]): string[] {
    return keys.map((k) => `${this.space}/${k}`);
  }

  private phashOf(image: PreparedImage): string {
    return image.phash ?? perceptualHash(image.pixelValues, this.options.spec);
  }

  private digestOf(image: PreparedImage): string {
    let digest = this.digests.get(image);
    if (digest === undefined) {
      digest = pixelDigest(image, this.options.spec);
      this.digests.set(image, digest);
    }
    return digest;
  }
}

/**
 * Contracts shared by every stage. Data flows one way:
 * source -> pair -> intake -> scorer -> policy -> sinks -> ack.
 * Field names that appear in records, audit events or the curated layout are fixed by docs/DESIGN.md.
 */

/** The four MLM-filter metrics, by their full key (as in the prompts) and their short name (as in scores). */
export const METRICS = [
  { key: 'image_text_matching', short: 'itm' },
  { key: 'object_detail_fulfillment', short: 'odf' },
  { key: 'caption_text_quality', short: 'ctq' },
  { key: 'semantic_understanding', short: 'su' },
] as const;

export type MetricKey = (typeof METRICS)[number]['key'];
export type MetricShort = (typeof METRICS)[number]['short'];
export type Scores = Partial<Record<MetricShort, number>>;

/** Where an image comes from. `bytes` is used by sources that carry the image inline (WebDataset shards). */
export type ImageRef =
  | { kind: 'url'; url: string }
  | { kind: 'base64'; data: Buffer }
  | { kind: 's3'; bucket: string; key: string }
  | { kind: 'bytes'; data: Buffer; ext?: string };

/** A validated image-text pair. */
export interface Pair {
  /** Given by the record, else derived deterministically from url (or image digest) + caption. */
  readonly id: string;
  readonly caption: string;
  readonly image: ImageRef;
  /** The image URL when the record had one (kept for audit events and the curated metadata). */
  readonly url?: string;
  /** Every other field of the record, passed through untouched. */
  readonly metadata: Record<string, unknown>;
}

/** Fixed reject reason codes (DESIGN.md). Extensible: add, never rename. */
export type ReasonCode =
  | 'invalid_record'
  | 'fetch_failed'
  | 'undecodable_image'
  | 'image_too_small'
  | 'below_threshold'
  | 'duplicate'
  | 'scoring_failed'
  | 'intake_failed'
  | 'duplicate_image';

export interface Reason {
  readonly code: ReasonCode;
  /** Human-readable, names the field / metric / host involved. */
  readonly message: string;
  /** Machine-readable context, e.g. {status: 404}, {metric: 'itm', score: 12, threshold: 66}. */
  readonly detail?: Record<string, unknown>;
}

// The error classes live with the error catalog; re-exported here, where most modules import their types from.
export { FilterError, RejectError } from './errors.ts';

/** Where a raw record came from: carried into audit events (`source`) and used for deterministic shard names. */
export type SourceOrigin =
  | { kind: 'kafka'; topic: string; partition: number; offset: string }
  | { kind: 'sqs'; queueUrl: string; messageId: string }
  | { kind: 'file'; path: string; line: number }
  | { kind: 'webdataset'; path: string; key: string };

/** A partition of a Kafka topic: the unit a consumer group assigns, revokes and commits. */
export interface PartitionRef {
  readonly topic: string;
  readonly partition: number;
}

/** A WebDataset sample as read from a tar shard: key plus its members by extension. */
export interface RawSample {
  readonly key: string;
  readonly members: Record<string, Buffer>;
}

/** One raw record as the source delivered it. */
export interface SourceRecord {
  readonly raw: Buffer | string | RawSample;
  readonly origin: SourceOrigin;
  /** The record's full size in bytes when `raw` holds only its first bytes (a source refused to buffer it all). */
  readonly size?: number;
}

/**
 * A unit of acknowledgement. The pipeline's batch ledger hands it to its `committer` once every record's outcome is
 * written to every sink, in the order the source produced the batches. `revoked` fires when the source loses
 * ownership (Kafka rebalance): the ledger then drops the batch's in-flight work without committing it.
 */
export interface SourceBatch {
  readonly records: readonly SourceRecord[];
  /** The only thing that acknowledges this batch. */
  readonly committer: Committer;
  readonly revoked?: AbortSignal;
  /**
   * Bytes the source reserved through the pipeline's ByteAdmission for this batch's records; the pipeline gives
   * them back when the batch is committed or dropped. Absent when the source reserved nothing.
   */
  readonly bytes?: number;
}

/**
 * The pipeline's bound on record bytes in flight (read and not yet committed), offered to sources whose records can
 * be large (WebDataset samples): a source reserves a record's bytes before it reads them and carries the total in
 * SourceBatch.bytes. A source holding a batch it has not yielded yet must yield it before waiting on reserve: the
 * bytes that would free the room may be its own.
 */
export interface ByteAdmission {
  /** The most bytes ever held at once: a record over it could never be admitted (its source refuses it). */
  readonly capacity: number;
  /** Takes `bytes` now if there is room; false (nothing taken) if not. */
  tryReserve(bytes: number): boolean;
  /** Waits for room for `bytes`; rejects when `signal` aborts or the run stops. */
  reserve(bytes: number, signal: AbortSignal): Promise<void>;
  /** Gives back bytes reserved that no yielded batch carries (a record read and then let go). */
  unreserve(bytes: number): void;
}

/**
 * How a source acknowledges batches: the Kafka transaction (offsets committed in the same transaction as the staged
 * topic messages), the consumer's offset commit, the SQS batch delete, or nothing for files. Called by the batch
 * ledger only, once per batch, in source order; a source keeps whatever it needs per batch itself.
 */
export interface Committer {
  readonly kind: 'kafka-transaction' | 'kafka-offsets' | 'sqs-delete' | 'none';
  /** Makes the batch's consumption permanent. A batch revoked meanwhile is not committed (resolves quietly). */
  commit(batch: SourceBatch): Promise<void>;
  /** This run will not commit the batch (a sink failed for good, hard stop): make it redeliverable where it can. */
  release(batch: SourceBatch, error: Error): Promise<void>;
}

/** Files have nothing to acknowledge: a re-run reads them again. */
export const NO_COMMIT: Committer = {
  kind: 'none',
  commit: async () => {},
  release: async () => {},
};

export interface Source {
  /** Yields batches until the input ends or `signal` aborts. Bounded: it must not read ahead without limit. */
  batches(signal: AbortSignal, admission?: ByteAdmission): AsyncIterable<SourceBatch>;
  /** Total records when known in advance (for ETA), else undefined. */
  readonly sizeHint?: number;
  close(): Promise<void>;
}

/** An image after intake: the encoded bytes (kept for the curated sink) and the model's input tensor. */
export interface PreparedImage {
  /** Encoded bytes to store in the curated shard (the original when it was jpg/png/webp, else re-encoded). */
  readonly encoded: Buffer;
  readonly ext: 'jpg' | 'png' | 'webp';
  /** Size of the decoded original. */
  readonly width: number;
  readonly height: number;
  /** float32 CHW, already rescaled and normalised for the model. */
  readonly pixelValues: Float32Array;
  /** [3, H, W] */
  readonly shape: readonly [number, number, number];
  /** 64-bit perceptual hash of the tensor, 16 hex digits (lib/cache/image-digest.ts): only when an image dedupe asked. */
  readonly phash?: string;
}

/** How the model wants its pixels, from preprocessor_config.json + mlm_filter.json. */
export interface PreprocessSpec {
  /** Output side length (square). */
  readonly size: number;
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
  /** Multiplier from 0..255 to the model's range, usually 1/255. */
  readonly rescale: number;
  /** Pad to a square with the mean colour before resizing (LLaVA `image_aspect_ratio: pad`), else plain resize. */
  readonly padToSquare: boolean;
  /** When not padding: resize the shortest edge then centre-crop (CLIP processors), else squash to square (SigLIP). */
  readonly centerCrop: boolean;
  readonly resample: 'bicubic' | 'bilinear' | 'nearest';
}

/** Input to the scorer for one pair. */
export interface ScoreInput {
  readonly id: string;
  readonly caption: string;
  readonly pixelValues: Float32Array;
}

/** Scorer output for one pair. */
export interface ScoreResult {
  /** Integer scores 0..100 read greedily, as the reference does. */
  readonly scores: Scores;
  /** Expected score from the digit probabilities (continuous; ranks better, breaks ties). */
  readonly expected?: Scores;
  /** The caption was shortened from its end to fit the model's context (lengths in UTF-16 code units). */
  readonly captionCut?: { readonly originalChars: number; readonly keptChars: number };
  /** The pair cannot be scored at all (e.g. its caption cannot fit the model even when cut): a reject. */
  readonly unscorable?: { readonly code: 'invalid_record'; readonly message: string };
}

export interface ModelInfo {
  readonly name: string;
  readonly revision: string;
}

/** The MLM scorer seen from the pipeline. Implementations run inference off the main thread. */
export interface Scorer {
  readonly model: ModelInfo;
  readonly preprocess: PreprocessSpec;
  readonly metrics: readonly MetricShort[];
  /** Preferred batch size; the pipeline batches up to it. */
  readonly maxBatch: number;
  score(batch: readonly ScoreInput[], signal?: AbortSignal): Promise<ScoreResult[]>;
  close(): Promise<void>;
}

export type Decision = 'accept' | 'reject';

/** The end state of one record: exactly one per input record. */
export interface Outcome {
  readonly record: SourceRecord;
  /** Absent when the record could not be decoded into a pair. */
  readonly pair?: Pair;
  /** Id of the pair, or a deterministic id of the raw record when it was invalid. */
  readonly id: string;
  readonly decision: Decision;
  readonly reasons: readonly Reason[];
  readonly scores: Scores;
  readonly expected?: Scores;
  /** The caption was shortened to fit the model's context before scoring (ScoreResult.captionCut). */
  readonly captionCut?: ScoreResult['captionCut'];
  /** The scores came from the score cache (--score-cache), computed first for this pair (lib/cache). */
  readonly cached?: { readonly first: CachedFirst };
  /** The image as stored by the curated sink; the pixel tensor is dropped after scoring to bound memory. */
  readonly image?: StoredImage;
}

/** Where cached scores were first computed: the pair's id, its source record and when the entry was written. */
export interface CachedFirst {
  readonly id: string;
  readonly source: SourceOrigin;
  /** ISO time. */
  readonly at: string;
}

export type StoredImage = Pick<PreparedImage, 'encoded' | 'ext' | 'width' | 'height'>;

/**
 * What a sink's resolved `write` means. `durable`: the outcomes are stored for good (a file, an S3 object, a topic
 * message acked by the brokers). `staged`: they are staged in the Kafka transaction that the source's committer
 * commits with the batch's offsets; they become visible exactly when the batch is committed, never before.
 */
export type SinkDurability = 'durable' | 'staged';

/**
 * A destination for outcomes. `write` resolves once the outcomes it was given are durable or staged (`durability`);
 * a sink may hold them in a shard until it flushes by count or idle time; it must flush on its own within a bounded
 * time.
 */
export interface Sink {
  readonly name: string;
  readonly durability: SinkDurability;
  /**
   * True when `write` may be called again before an earlier call has resolved: the sink applies calls in call order
   * and resolves each once its outcomes are durable. The pipeline then hands a batch to the sink as soon as the
   * previous batch has been handed over, instead of after it is durable, so a sink that makes writes durable per
   * shard can fill whole shards. Default false: one write at a time (a transactional sink commits each write before
   * the next begins). A failed write that is retried may then land after later writes.
   */
  readonly overlappingWrites?: boolean;
  write(outcomes: readonly Outcome[]): Promise<void>;
  /** Makes everything written durable now (drain). */
  flush(): Promise<void>;
  /**
   * The run's batch ledger revoked batches of these partitions (the source lost them to a rebalance): what the sink
   * holds or staged for them belongs to batches that will not be committed and come again, to this worker or
   * another. Called synchronously as the revocation happens, before any later step of the batches' commits, and
   * possibly more than once for a partition: it must be idempotent and must not throw.
   */
  revoked?(partitions: readonly PartitionRef[]): void;
  close(): Promise<void>;
}

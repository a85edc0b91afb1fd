/**
 * Gathers what the report shows from audit events (rejects.jsonl, an audit topic) and curated shards (accepted
 * samples' `<key>.json`, read by the `.index.json` offsets without scanning the tar). Bounded memory whatever the
 * input size: counts and histograms are fixed-size, the gallery is a reservoir, the timeline is a fixed number of
 * cells that coarsen as the axis grows, and the dedupe set keeps the most recent ids only.
 */
import type { MetricShort } from '../types.ts';
import { decodeAcceptedMessage } from '../formats/accepted-event.ts';
import {
  decodeAuditEvent,
  presentScores,
  type AuditReason,
  type AuditScores,
  type AuditSource,
} from '../formats/audit-event.ts';
import { EventTally } from '../formats/event-tally.ts';
import { RecentIds } from '../pipeline/recent-ids.ts';

export const BINS = 10;

/** A reason as the report shows it. */
export interface ReportReason {
  code: string;
  message: string;
  detail?: Record<string, unknown>;
}

/** Where an accepted sample's image bytes lie (a member of a curated tar shard). */
export interface ImageLocation {
  tar: string;
  offset: number;
  size: number;
  ext: string;
}

/** One event as the report reads it: an audit event, an accepted-topic event or a curated sample's metadata. */
export interface ReportEvent {
  id: string;
  decision: 'accept' | 'reject';
  caption: string | null;
  url: string | null;
  scores: Partial<Record<MetricShort, number>>;
  reasons: ReportReason[];
  /** Event time, ms (absent for curated samples, whose metadata has no time). */
  ts?: number;
  /** Input position (JSONL line, Kafka offset of a single-partition topic) when the source says it. */
  position?: number;
  image?: ImageLocation;
}

export interface ReportSample extends ReportEvent {
  /** data: URI of a small thumbnail (accepted samples with image bytes). */
  thumbnail?: string;
}

export interface TimelineBucket {
  start: number;
  end: number;
  accepted: number;
  rejected: number;
}

/** Everything the HTML shows, also embedded in it as JSON (`#report-data`) for scripts and tests. */
export interface ReportData {
  v: 1;
  title: string;
  generatedAt: string;
  input: string;
  totals: { events: number; accepted: number; rejected: number; duplicates: number; malformed: number };
  acceptRate: number | null;
  reasons: { code: string; count: number; share: number }[];
  belowThresholdByMetric: Record<string, number>;
  /** Per metric, counts per score bin (0-9 ... 90-100) for accepted and rejected pairs. */
  histograms: Record<
    MetricShort,
    { accepted: number[]; rejected: number[]; mean: { accepted: number | null; rejected: number | null } }
  >;
  timeline: { axis: 'time' | 'position' | null; buckets: TimelineBucket[] };
  samples: { accepted: ReportSample[]; rejected: ReportSample[] };
  notes: string[];
}

/**
 * Reads one audit event (a line of rejects.jsonl, an audit-topic message) or, with `kind` 'accepted', an
 * accepted-topic message, through the format's one decode; null when it is not one.
 */
export function parseReportEvent(
  value: string | Buffer,
  kind: 'audit' | 'accepted' = 'audit',
  key?: string | Buffer | null,
): ReportEvent | null {
  if (kind === 'audit') {
    const decoded = decodeAuditEvent(value);
    return decoded.ok ? reportEventOf(decoded.value) : null;
  }
  const decoded = decodeAcceptedMessage(value, key);
  if (!decoded.ok) return null;
  const { event } = decoded.value;
  return decoded.value.kind === 'audit'
    ? reportEventOf(decoded.value.event)
    : reportEventOf({ ...event, decision: 'accept', reasons: [] });
}

/** What the report shows of an audit event, an accepted-topic message or a curated sample's metadata. */
export function reportEventOf(e: {
  id: string;
  decision: 'accept' | 'reject';
  reasons: readonly AuditReason[];
  scores?: AuditScores;
  caption?: string | null;
  url?: string | null;
  source?: AuditSource;
  ts?: string;
}): ReportEvent {
  const ts = e.ts !== undefined ? Date.parse(e.ts) : NaN;
  const src = e.source;
  const position =
    src?.kind === 'file'
      ? src.line
      : src?.kind === 'kafka' && /^\d+$/.test(src.offset)
        ? Number(src.offset)
        : undefined;
  return {
    id: e.id,
    decision: e.decision,
    caption: e.caption ?? null,
    url: e.url ?? null,
    scores: e.scores ? (presentScores(e.scores) as Partial<Record<MetricShort, number>>) : {},
    reasons: e.reasons.map((r) => ({ code: r.code, message: r.message, detail: r.detail })),
    ts: Number.isFinite(ts) ? ts : undefined,
    position,
  };
}

/** Deterministic PRNG (mulberry32) so a report of the same input shows the same gallery. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface CollectorOptions {
  /** Samples shown per decision in the gallery. Default 24. */
  readonly samples?: number;
  /** Timeline buckets at most. Default 40. */
  readonly timelineBuckets?: number;
}

/** Most recent ids remembered for dedupe: redeliveries (at-least-once sources) arrive close to the original. */
export const DEDUPE_CAPACITY = 200_000;
/** Cells of the streaming timeline axis; the final buckets (<= 40) are drawn from them. */
const TIMELINE_CELLS = 4096;

/**
 * Accept/reject counts along one axis (time or input position) in at most `maxCells` cells: a cell is
 * [k * width, (k + 1) * width); when there are too many, the width doubles and neighbouring cells merge. Integer
 * axes spanning fewer than `maxCells` units stay exact.
 */
export class StreamingAxis {
  private cells = new Map<number, [number, number]>();
  private width = 1;
  lo = Infinity;
  hi = -Infinity;
  count = 0;

  constructor(private readonly maxCells = TIMELINE_CELLS) {}

  add(x: number, accept: boolean): void {
    this.count++;
    if (x < this.lo) this.lo = x;
    if (x > this.hi) this.hi = x;
    const k = Math.floor(x / this.width);
    const cell = this.cells.get(k) ?? [0, 0];
    cell[accept ? 0 : 1]++;
    this.cells.set(k, cell);
    while (this.cells.size > this.maxCells) this.coarsen();
  }

  private coarsen(): void {
    this.width *= 2;
    const merged = new Map<number, [number, number]>();
    for (const [k, [a, r]] of this.cells) {
      const key = Math.floor(k / 2);
      const cell = merged.get(key) ?? [0, 0];
      cell[0] += a;
      cell[1] += r;
      merged.set(key, cell);
    }
    this.cells = merged;
  }

  /** `n` equal buckets over [lo, hi]; each cell counts in the bucket of its start (clamped into [lo, hi]). */
  buckets(n: number): TimelineBucket[] {
    const { lo, hi } = this;
    const width = hi > lo ? (hi - lo) / n : 1;
    const out: TimelineBucket[] = Array.from({ length: n }, (_, i) => ({
      start: lo + i * width,
      end: lo + (i + 1) * width,
      accepted: 0,
      rejected: 0,
    }));
    for (const [k, [a, r]] of this.cells) {
      const x = Math.min(hi, Math.max(lo, k * this.width));
      const b = out[Math.min(n - 1, Math.floor((x - lo) / width))]!;
      b.accepted += a;
      b.rejected += r;
    }
    return out;
  }
}

/** Counts per integer score 0..100 as the report's {@link BINS} bins (0-9 ... 90-100). */
const tenBins = (counts: readonly number[]) => {
  const bins = new Array<number>(BINS).fill(0);
  counts.forEach((n, s) => (bins[Math.min(BINS - 1, Math.floor(s / 10))]! += n));
  return bins;
};

export class ReportCollector {
  private readonly sampleSize: number;
  private readonly maxBuckets: number;
  private readonly seen = new RecentIds(DEDUPE_CAPACITY);
  private duplicates = 0;
  private malformedCount = 0;
  private readonly tally = new EventTally();
  private readonly reservoir = { accept: [] as ReportEvent[], reject: [] as ReportEvent[] };
  private readonly rand = prng(0x5eed);
  private readonly ts = new StreamingAxis();
  private readonly pos = new StreamingAxis();
  private events = 0;
  private allTs = true;
  private allPos = true;
  readonly notes: string[] = [];

  constructor(options: CollectorOptions = {}) {
    this.sampleSize = options.samples ?? 24;
    this.maxBuckets = options.timelineBuckets ?? 40;
  }

  malformed(n = 1): void {
    this.malformedCount += n;
  }

  /** Counts an event (once per id: an accept on both the audit and accepted topic counts once). */
  add(e: ReportEvent): void {
    if (this.seen.seen(e.id)) {
      this.duplicates++;
      return;
    }
    this.tally.add(e);
    const accept = e.decision === 'accept';
    this.events++;
    if (e.ts === undefined) this.allTs = false;
    else if (this.allTs) this.ts.add(e.ts, accept);
    if (e.position === undefined) this.allPos = false;
    else if (this.allPos) this.pos.add(e.position, accept);
    // Reservoir sampling (algorithm R): a uniform sample of each decision whatever the input size.
    const pool = this.reservoir[e.decision];
    const n = accept ? this.tally.accepted : this.tally.rejected;
    if (pool.length < this.sampleSize) pool.push(e);
    else {
      const j = Math.floor(this.rand() * n);
      if (j < this.sampleSize) pool[j] = e;
    }
  }

  private timeline(): ReportData['timeline'] {
    const axis = this.events === 0 ? null : this.allTs ? 'time' : this.allPos ? 'position' : null;
    if (!axis) {
      if (this.events) {
        this.notes.push(
          'Accept rate over time is not shown: some events carry neither a time nor an input position ' +
            '(curated samples have no time; WebDataset inputs have no line number).',
        );
      }
      return { axis: null, buckets: [] };
    }
    const xs = axis === 'time' ? this.ts : this.pos;
    // At least ~10 events per bucket, else the rate line is noise (0 % / 100 % spikes).
    const n = xs.hi > xs.lo ? Math.max(1, Math.min(this.maxBuckets, Math.floor(xs.count / 10))) : 1;
    return { axis, buckets: xs.buckets(n) };
  }

  /** The collected numbers; `samples` still need thumbnails (see build.ts). */
  data(title: string, input: string, now = new Date()): ReportData {
    const histograms = {} as ReportData['histograms'];
    for (const [metric, h] of this.tally.histograms) {
      const na = h.accept.reduce((a, b) => a + b, 0);
      const nr = h.reject.reduce((a, b) => a + b, 0);
      histograms[metric] = {
        accepted: tenBins(h.accept),
        rejected: tenBins(h.reject),
        mean: { accepted: na ? h.sumAccept / na : null, rejected: nr ? h.sumReject / nr : null },
      };
    }
    const { accepted, rejected, events } = this.tally;
    const byId = (a: ReportEvent, b: ReportEvent) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    return {
      v: 1,
      title,
      generatedAt: now.toISOString(),
      input,
      totals: {
        events,
        accepted,
        rejected,
        duplicates: this.duplicates,
        malformed: this.malformedCount,
      },
      acceptRate: events && accepted > 0 ? accepted / events : events ? (this.sawAcceptSource ? 0 : null) : null,
      reasons: this.tally.reasons.rows(rejected),
      belowThresholdByMetric: this.tally.reasons.byMetric(),
      histograms,
      timeline: this.timeline(),
      samples: { accepted: [...this.reservoir.accept].sort(byId), rejected: [...this.reservoir.reject].sort(byId) },
      notes: this.notes,
    };
  }

  /** Set when the input could have shown accepts (curated shards, an accepted topic), so 0 accepts means 0 %. */
  sawAcceptSource = false;
}

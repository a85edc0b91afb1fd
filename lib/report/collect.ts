/**
 * Gathers what the report shows from audit events (rejects.jsonl, an audit topic) and curated shards (accepted
 * samples' `<key>.json`, read by the `.index.json` offsets without scanning the tar). Bounded memory whatever the
 * input size: counts and histograms are fixed-size, the gallery is a reservoir, the timeline is a fixed number of
 * cells that coarsen as the axis grows, and the dedupe set keeps the most recent ids only.
 */
import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';
import { ReasonTally } from '../policy/reason-tally.ts';

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

/** Parses one audit/accepted event line (lib/sinks/audit-event.ts shape); null when it is not one. */
export function parseReportEvent(text: string, fallbackDecision?: 'accept'): ReportEvent | null {
  let o: Record<string, unknown>;
  try {
    const raw = JSON.parse(text) as unknown;
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return null;
    o = raw as Record<string, unknown>;
  } catch {
    return null;
  }
  return fromObject(o, fallbackDecision);
}

/** Builds a {@link ReportEvent} from an audit event or a curated sample's `<key>.json` object. */
export function fromObject(o: Record<string, unknown>, fallbackDecision?: 'accept'): ReportEvent | null {
  const id = typeof o.id === 'string' ? o.id : '';
  const decision = o.decision === 'accept' || o.decision === 'reject' ? o.decision : fallbackDecision;
  if (!id || !decision) return null;
  const s = o.scores && typeof o.scores === 'object' ? (o.scores as Record<string, unknown>) : {};
  const scores: Partial<Record<MetricShort, number>> = {};
  for (const { short } of METRICS)
    if (typeof s[short] === 'number' && Number.isFinite(s[short])) scores[short] = s[short];
  const reasons: ReportReason[] = Array.isArray(o.reasons)
    ? o.reasons
        .filter((r): r is Record<string, unknown> => !!r && typeof r === 'object' && typeof r.code === 'string')
        .map((r) => ({
          code: String(r.code),
          message: typeof r.message === 'string' ? r.message : '',
          detail: r.detail && typeof r.detail === 'object' ? (r.detail as Record<string, unknown>) : undefined,
        }))
    : [];
  const ts = typeof o.ts === 'string' ? Date.parse(o.ts) : NaN;
  const src = o.source && typeof o.source === 'object' ? (o.source as Record<string, unknown>) : {};
  const position =
    src.kind === 'file' && typeof src.line === 'number'
      ? src.line
      : src.kind === 'kafka' && typeof src.offset === 'string' && /^\d+$/.test(src.offset)
        ? Number(src.offset)
        : undefined;
  return {
    id,
    decision,
    caption: typeof o.caption === 'string' ? o.caption : null,
    url: typeof o.url === 'string' ? o.url : null,
    scores,
    reasons,
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

export class ReportCollector {
  private readonly sampleSize: number;
  private readonly maxBuckets: number;
  private readonly seen = new Set<string>();
  private accepted = 0;
  private rejected = 0;
  private duplicates = 0;
  private malformedCount = 0;
  private readonly tally = new ReasonTally();
  private readonly hist = new Map<MetricShort, { accepted: number[]; rejected: number[]; sumA: number; sumR: number }>(
    METRICS.map((m) => [
      m.short,
      { accepted: new Array(BINS).fill(0), rejected: new Array(BINS).fill(0), sumA: 0, sumR: 0 },
    ]),
  );
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
    if (this.seen.has(e.id)) {
      this.duplicates++;
      return;
    }
    this.seen.add(e.id);
    if (this.seen.size > DEDUPE_CAPACITY) this.seen.delete(this.seen.values().next().value!);
    const accept = e.decision === 'accept';
    if (accept) this.accepted++;
    else {
      this.rejected++;
      this.tally.add(e.reasons);
    }
    for (const { short } of METRICS) {
      const v = e.scores[short];
      if (v === undefined) continue;
      const h = this.hist.get(short)!;
      const bin = Math.max(0, Math.min(BINS - 1, Math.floor(v / 10)));
      if (accept) {
        h.accepted[bin]!++;
        h.sumA += v;
      } else {
        h.rejected[bin]!++;
        h.sumR += v;
      }
    }
    this.events++;
    if (e.ts === undefined) this.allTs = false;
    else if (this.allTs) this.ts.add(e.ts, accept);
    if (e.position === undefined) this.allPos = false;
    else if (this.allPos) this.pos.add(e.position, accept);
    // Reservoir sampling (algorithm R): a uniform sample of each decision whatever the input size.
    const pool = this.reservoir[e.decision];
    const n = accept ? this.accepted : this.rejected;
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
    for (const [metric, h] of this.hist) {
      const na = h.accepted.reduce((a, b) => a + b, 0);
      const nr = h.rejected.reduce((a, b) => a + b, 0);
      histograms[metric] = {
        accepted: h.accepted,
        rejected: h.rejected,
        mean: { accepted: na ? h.sumA / na : null, rejected: nr ? h.sumR / nr : null },
      };
    }
    const events = this.accepted + this.rejected;
    const byId = (a: ReportEvent, b: ReportEvent) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    return {
      v: 1,
      title,
      generatedAt: now.toISOString(),
      input,
      totals: {
        events,
        accepted: this.accepted,
        rejected: this.rejected,
        duplicates: this.duplicates,
        malformed: this.malformedCount,
      },
      acceptRate:
        events && this.accepted > 0 ? this.accepted / events : events ? (this.sawAcceptSource ? 0 : null) : null,
      reasons: [...this.tally.byCode]
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .map(([code, count]) => ({ code, count, share: this.rejected ? count / this.rejected : 0 })),
      belowThresholdByMetric: Object.fromEntries([...this.tally.belowThresholdByMetric].sort((a, b) => b[1] - a[1])),
      histograms,
      timeline: this.timeline(),
      samples: { accepted: [...this.reservoir.accept].sort(byId), rejected: [...this.reservoir.reject].sort(byId) },
      notes: this.notes,
    };
  }

  /** Set when the input could have shown accepts (curated shards, an accepted topic), so 0 accepts means 0 %. */
  sawAcceptSource = false;
}

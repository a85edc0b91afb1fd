import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';
import { binLabel, SCORE_BINS, type MonitorSnapshot } from './aggregate.ts';

/** Horizontal bar of `value / max` over `width` cells, with eighth-cell precision. */
export function bar(value: number, max: number, width: number): string {
  if (max <= 0 || value <= 0) return '';
  const eighths = Math.max(1, Math.round((value / max) * width * 8));
  const partial = ['', '▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8]!;
  return '█'.repeat(Math.floor(eighths / 8)) + partial;
}

const pct = (x: number | null) => (x === null ? 'n/a' : `${(x * 100).toFixed(1)}%`);
const pad = (s: string, n: number) => (s.length >= n ? s.slice(0, n) : s + ' '.repeat(n - s.length));
const lpad = (s: string, n: number) => (s.length >= n ? s : ' '.repeat(n - s.length) + s);

export interface RenderOptions {
  /** Terminal width in columns. Default 100. */
  readonly columns?: number;
  /** Header line (topics, mode). */
  readonly title?: string;
}

/** One metric's histogram as lines of `width` columns. */
function histogramBlock(metric: MetricShort, s: MonitorSnapshot['scores'][MetricShort], width: number): string[] {
  const max = Math.max(...s.bins);
  const countWidth = Math.max(3, String(max).length);
  const barWidth = Math.max(4, width - 7 - countWidth - 2);
  const head = `${metric.toUpperCase()} n=${s.count} mean=${s.mean === null ? '-' : s.mean.toFixed(1)} p50=${s.p50 ?? '-'}`;
  const lines = [pad(head, width)];
  for (let i = SCORE_BINS - 1; i >= 0; i--) {
    const n = s.bins[i]!;
    lines.push(
      pad(`${lpad(binLabel(i), 6)} ${pad(bar(n, max, barWidth), barWidth)} ${lpad(String(n), countWidth)}`, width),
    );
  }
  return lines;
}

/** The monitor's terminal frame for one snapshot (plain text; the caller clears the screen). */
export function renderSnapshot(s: MonitorSnapshot, options: RenderOptions = {}): string {
  const columns = Math.max(60, options.columns ?? 100);
  const out: string[] = [];
  if (options.title) out.push(options.title);
  out.push(
    `events ${s.events}   accepted ${s.accepted}   rejected ${s.rejected}   accept rate ${pct(s.acceptRate)}` +
      (s.duplicates ? `   duplicates ${s.duplicates}` : '') +
      (s.malformed ? `   malformed ${s.malformed}` : ''),
  );
  out.push(
    `last ${s.window.seconds} s: ${s.window.eventsPerSecond.toFixed(2)} events/s   ` +
      `accepted ${s.window.accepted}   rejected ${s.window.rejected}   accept rate ${pct(s.window.acceptRate)}`,
  );
  out.push(`newest event ${s.lastEventAt ?? '-'}   (as of ${s.at})`);
  if (!s.acceptsVisible) out.push('(accepts not visible: pass --accepted-topic, or audit accepts in the worker)');
  out.push('');
  out.push(`${pad('reject reason', 24)} ${lpad('count', 9)} ${lpad('share', 7)}`);
  if (s.reasons.length === 0) out.push('  (none yet)');
  const maxReason = Math.max(0, ...s.reasons.map((r) => r.count));
  for (const r of s.reasons) {
    let line = `${pad(r.code, 24)} ${lpad(String(r.count), 9)} ${lpad(pct(r.share), 7)} ${bar(r.count, maxReason, 20)}`;
    if (r.code === 'below_threshold' && Object.keys(s.belowThresholdByMetric).length) {
      line +=
        '  ' +
        Object.entries(s.belowThresholdByMetric)
          .map(([m, n]) => `${m} ${n}`)
          .join(', ');
    }
    out.push(line);
  }
  out.push('');
  out.push('score histograms (accepted + rejected)');
  // As many histograms side by side as fit the terminal.
  const blockWidth = 34;
  const perRow = Math.max(1, Math.min(METRICS.length, Math.floor((columns + 2) / (blockWidth + 2))));
  for (let i = 0; i < METRICS.length; i += perRow) {
    const blocks = METRICS.slice(i, i + perRow).map((m) => histogramBlock(m.short, s.scores[m.short], blockWidth));
    for (let row = 0; row < blocks[0]!.length; row++)
      out.push(
        blocks
          .map((b) => b[row])
          .join('  ')
          .trimEnd(),
      );
    out.push('');
  }
  return out.join('\n');
}

/**
 * The filter command's progress display: a bar on a TTY, a line every 10 s otherwise. It counts pairs as they are
 * decided, not as their batch is committed: on stdin a batch whose accepts wait in an open shard commits late, while
 * its rejects are already in rejects.jsonl. The ETA is the pairs left over the rate since the first decision (model
 * load excluded), computed here: cli-progress's own estimate reads only its last few redraws and shows `ETA NFs`
 * (its INF cut to two characters) whenever those saw no new pair, which with a batching scorer is most of the time.
 */
import cliProgress from 'cli-progress';
import type { Outcome } from '../types.ts';

/** Pairs decided so far (a resumed run starts from what its output holds), and the rate since the first one. */
export class DecidedCounts {
  accepted: number;
  rejected: number;
  private decided = 0;
  private firstAt: number | undefined;

  constructor(
    previous: { readonly accepted: number; readonly rejected: number } = { accepted: 0, rejected: 0 },
    private readonly now: () => number = Date.now,
  ) {
    this.accepted = previous.accepted;
    this.rejected = previous.rejected;
  }

  add(outcome: Pick<Outcome, 'decision'>): void {
    this.firstAt ??= this.now();
    this.decided++;
    if (outcome.decision === 'accept') this.accepted++;
    else this.rejected++;
  }

  get records(): number {
    return this.accepted + this.rejected;
  }

  /** Pairs per second since the first decision; 0 until a second has passed. */
  get rate(): number {
    const seconds = this.firstAt === undefined ? 0 : (this.now() - this.firstAt) / 1000;
    return seconds >= 1 ? this.decided / seconds : 0;
  }

  /** Seconds left for `total` records at the current rate; undefined while it cannot be told. */
  etaSeconds(total: number | undefined): number | undefined {
    const rate = this.rate;
    if (!total || rate <= 0) return undefined;
    return Math.max(0, (total - this.records) / rate);
  }
}

/** `1h02m`, `3m05s`, `12s`, or `--` while unknown. */
export function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '--';
  const s = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s >= 3600) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  return `${s}s`;
}

export function formatProgressLine(c: DecidedCounts, total?: number): string {
  const eta = total ? ` eta ${formatEta(c.etaSeconds(total))}` : '';
  return (
    `processed ${c.records}${total ? `/${total}` : ''} accepted ${c.accepted} rejected ${c.rejected} ` +
    `${c.rate.toFixed(1)} pairs/s${eta}`
  );
}

export interface Progress {
  stop(): void;
}

export type ProgressMode = 'bar' | 'log' | 'none';

export function startProgress(mode: ProgressMode | undefined, c: DecidedCounts, total?: number): Progress {
  const chosen = mode ?? (process.stderr.isTTY ? 'bar' : 'log');
  if (chosen === 'none') return { stop() {} };
  if (chosen === 'log') {
    const timer = setInterval(() => process.stderr.write(formatProgressLine(c, total) + '\n'), 10_000);
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }
  const bar = new cliProgress.SingleBar(
    {
      format: total
        ? '{bar} {percentage}% | {value}/{total} | accepted {accepted} rejected {rejected} | {rate} pairs/s | ETA {etaText}'
        : '{value} processed | accepted {accepted} rejected {rejected} | {rate} pairs/s',
      stream: process.stderr,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const payload = () => ({
    accepted: c.accepted,
    rejected: c.rejected,
    rate: c.rate.toFixed(1),
    etaText: formatEta(c.etaSeconds(total)),
  });
  bar.start(total ?? 0, c.records, payload());
  const timer = setInterval(() => bar.update(c.records, payload()), 250);
  return {
    stop() {
      clearInterval(timer);
      bar.update(c.records, payload());
      bar.stop();
    },
  };
}

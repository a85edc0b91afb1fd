/** A small `mlm-filter filter --out DIR` written by the real sinks, with known numbers, for the report tests. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { LocalAuditSink } from '../../lib/sinks/local-audit.ts';
import { LocalCuratedSink } from '../../lib/sinks/local-curated.ts';
import type { Outcome, Reason, Scores } from '../../lib/types.ts';

export const MODEL = { name: 'mlm-filter-test', revision: 'r1' };
/** Crawled text that would run script if it reached the page unescaped. */
export const EVIL_CAPTION = `<img src=x onerror="alert(1)"><script>alert('x')</script> & "quotes"`;

export interface FixtureExpectation {
  accepted: number;
  rejected: number;
  reasons: Record<string, number>;
  /** Per metric, counts per bin 0..9 for accepted and rejected. */
  bins: Record<string, { accepted: number[]; rejected: number[] }>;
}

const colour = (i: number) => ({ r: (i * 53) % 256, g: (i * 97) % 256, b: (i * 31) % 256 });

export async function makeFilterOutput(n = 40): Promise<{ dir: string; expected: FixtureExpectation }> {
  const dir = await mkdtemp(join(tmpdir(), 'mlmf-ops-'));
  const curated = await LocalCuratedSink.open({ dir: join(dir, 'curated'), model: MODEL, samplesPerShard: 7 });
  const audit = await LocalAuditSink.open({ path: join(dir, 'rejects.jsonl'), model: MODEL });
  const expected: FixtureExpectation = { accepted: 0, rejected: 0, reasons: {}, bins: {} };
  for (const m of ['itm', 'odf', 'ctq', 'su'])
    expected.bins[m] = { accepted: new Array(10).fill(0), rejected: new Array(10).fill(0) };
  const outcomes: Outcome[] = [];
  for (let i = 0; i < n; i++) {
    const itm = (i * 37) % 101;
    const odf = (i * 11) % 101;
    const scores: Scores = { itm, odf, ctq: 50 + (i % 50), su: (i * 7) % 101 };
    const line = i + 1;
    const record = { raw: '{}', origin: { kind: 'file' as const, path: 'in.jsonl', line } };
    const caption = i === 3 ? EVIL_CAPTION : `caption number ${i}: a ${['red', 'green', 'blue'][i % 3]} square`;
    const url = `https://example.com/img/${i}.png`;
    let decision: 'accept' | 'reject';
    let reasons: Reason[] = [];
    if (i % 10 === 9) {
      decision = 'reject';
      reasons = [{ code: 'fetch_failed', message: 'HTTP 404', detail: { status: 404 } }];
      for (const k of Object.keys(scores) as (keyof Scores)[]) delete scores[k];
    } else if (itm >= 66 && odf >= 20) {
      decision = 'accept';
    } else {
      decision = 'reject';
      if (itm < 66)
        reasons.push({
          code: 'below_threshold',
          message: `itm ${itm} < 66`,
          detail: { metric: 'itm', score: itm, threshold: 66 },
        });
      if (odf < 20)
        reasons.push({
          code: 'below_threshold',
          message: `odf ${odf} < 20`,
          detail: { metric: 'odf', score: odf, threshold: 20 },
        });
    }
    const pair = { id: `pair-${i}`, caption, url, image: { kind: 'url' as const, url }, metadata: {} };
    let image: Outcome['image'];
    if (decision === 'accept') {
      const encoded = await sharp({ create: { width: 64 + i, height: 48, channels: 3, background: colour(i) } })
        .png()
        .toBuffer();
      image = { encoded, ext: 'png', width: 64 + i, height: 48 };
    }
    outcomes.push({ record, pair, id: pair.id, decision, reasons, scores, image });
    if (decision === 'accept') expected.accepted++;
    else {
      expected.rejected++;
      for (const code of new Set(reasons.map((r) => r.code)))
        expected.reasons[code] = (expected.reasons[code] ?? 0) + 1;
    }
    for (const [m, v] of Object.entries(scores))
      expected.bins[m]![decision === 'accept' ? 'accepted' : 'rejected'][Math.min(9, Math.floor(v / 10))]!++;
  }
  // A curated write resolves when its shard is sealed: the last partial shard seals on close.
  const written = Promise.all([curated.write(outcomes), audit.write(outcomes)]);
  await Promise.all([curated.close(), audit.close()]);
  await written;
  return { dir, expected };
}

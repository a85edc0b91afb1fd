import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Command } from 'commander';
import { addOpsCommands } from '../../lib/cli/ops.ts';
import { writeReport, type ReportData } from '../../lib/report/index.ts';
import { escapeHtml, jsonForScript } from '../../lib/report/html.ts';
import { EVIL_CAPTION, makeFilterOutput, type FixtureExpectation } from './fixture.ts';

let dir: string;
let expected: FixtureExpectation;
before(async () => ({ dir, expected } = await makeFilterOutput(40)));
after(async () => rm(dir, { recursive: true, force: true }));

function embedded(html: string): ReportData {
  const m = /<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(html);
  assert.ok(m, 'report data embedded');
  return JSON.parse(m[1]!) as ReportData;
}
const attrs = (tag: string) => Object.fromEntries([...tag.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));

test('report from a filter output directory: totals, reasons, histograms drawn from the real numbers', async () => {
  const out = join(dir, 'report.html');
  const data = await writeReport({ input: { kind: 'dir', path: dir }, out, samples: 5 });
  const html = await readFile(out, 'utf8');
  const d = embedded(html);

  assert.ok(expected.accepted > 3 && expected.rejected > 3, 'fixture has both decisions');
  assert.equal(d.totals.accepted, expected.accepted);
  assert.equal(d.totals.rejected, expected.rejected);
  assert.equal(d.totals.events, 40);
  assert.equal(d.acceptRate, expected.accepted / 40);
  assert.deepEqual(Object.fromEntries(d.reasons.map((r) => [r.code, r.count])), expected.reasons);
  for (const m of ['itm', 'odf', 'ctq', 'su'] as const) {
    assert.deepEqual(d.histograms[m].accepted, expected.bins[m]!.accepted, `${m} accepted`);
    assert.deepEqual(d.histograms[m].rejected, expected.bins[m]!.rejected, `${m} rejected`);
  }
  // The SVG bars carry the same counts, and their heights are proportional to them.
  const rects = [...html.matchAll(/<rect class="bar [^>]*>/g)].map((m) => attrs(m[0]));
  assert.equal(rects.length, 4 * 10 * 2);
  for (const r of rects) {
    const want =
      expected.bins[r['data-metric']!]![r['data-decision'] as 'accepted' | 'rejected'][Number(r['data-bin'])];
    assert.equal(Number(r['data-count']), want, JSON.stringify(r));
  }
  const itm = rects.filter((r) => r['data-metric'] === 'itm');
  const tallest = itm.reduce((a, b) => (Number(b['data-count']) > Number(a['data-count']) ? b : a));
  for (const r of itm) {
    const ratio = Number(r.height) / Number(tallest.height);
    assert.ok(Math.abs(ratio - Number(r['data-count']) / Number(tallest['data-count'])) < 0.02);
  }
  // Accept rate over input position (curated samples have no time, but both sides carry their input line).
  assert.equal(d.timeline.axis, 'position');
  const sum = d.timeline.buckets.reduce((a, b) => a + b.accepted + b.rejected, 0);
  assert.equal(sum, 40);
  const circles = [...html.matchAll(/<circle class="rate" [^>]*>/g)].map((m) => attrs(m[0]));
  assert.equal(circles.length, 4, '40 events: 4 buckets of ~10');
  for (const c of circles) {
    const b = d.timeline.buckets[Number(c['data-bucket'])]!;
    assert.equal(Number(c['data-rate']).toFixed(3), (b.accepted / (b.accepted + b.rejected)).toFixed(3));
  }
  // Reasons table rows.
  for (const [code, count] of Object.entries(expected.reasons)) {
    assert.match(html, new RegExp(`<tr data-code="${code}" data-count="${count}">`));
  }
  // Gallery: thumbnails for accepted samples as data URIs, rejected ones show the URL; nothing remote.
  assert.equal(data.samples.accepted.length, 5);
  assert.equal(data.samples.rejected.length, 5);
  assert.equal((html.match(/<img src="data:image\/webp;base64,/g) ?? []).length, 5);
  assert.doesNotMatch(html, /src="https?:/);
  assert.match(html, /Content-Security-Policy" content="default-src 'none'/);
});

test('captions are escaped everywhere (crawled text is hostile)', async () => {
  const out = join(dir, 'report-all.html');
  await writeReport({ input: { kind: 'dir', path: dir }, out, samples: 100 });
  const html = await readFile(out, 'utf8');
  const d = embedded(html);
  const evil = [...d.samples.accepted, ...d.samples.rejected].find((s) => s.caption === EVIL_CAPTION);
  assert.ok(evil, 'the hostile caption is in the gallery and round-trips through the embedded JSON');
  assert.ok(!html.includes('<img src=x'), 'no raw tag from the caption');
  assert.ok(!html.includes("<script>alert('x')"), 'no raw script from the caption');
  assert.ok(html.includes(escapeHtml(EVIL_CAPTION)));
  assert.equal((html.match(/<script/g) ?? []).length, 1, 'only the JSON data block');
  assert.equal(jsonForScript('</script><!--\u2028'), '"\\u003c/script\\u003e\\u003c!--\\u2028"');
});

test('report from rejects.jsonl alone, through the CLI command', async () => {
  const out = join(dir, 'rejects.html');
  let printed = '';
  const program = addOpsCommands(new Command('mlm-filter').exitOverride(), {
    stdout: { write: (s: string) => (printed += s) },
  });
  await program.parseAsync(['report', '--input', join(dir, 'rejects.jsonl'), '--out', out], { from: 'user' });
  assert.match(
    printed,
    new RegExp(`wrote .*rejects.html: ${expected.rejected} pairs, 0 accepted, ${expected.rejected} rejected\\n$`),
  );
  const d = embedded(await readFile(out, 'utf8'));
  assert.equal(d.acceptRate, null, 'accepts are not visible from rejects.jsonl alone');
  assert.equal(d.timeline.axis, 'time');
  assert.ok(d.notes.some((n) => /accepted pairs are not shown/.test(n)));
});

test('report input errors carry stable codes', async () => {
  const program = addOpsCommands(new Command('mlm-filter').exitOverride());
  await assert.rejects(
    program.parseAsync(['report', '--input', join(dir, 'missing'), '--out', join(dir, 'x.html')], { from: 'user' }),
    (e: Error & { code?: string }) => e.code === 'input_unreadable',
  );
  const empty = join(dir, 'empty.jsonl');
  await writeFile(empty, 'garbage\n');
  const d = await writeReport({ input: { kind: 'jsonl', path: empty }, out: join(dir, 'e.html') });
  assert.equal(d.totals.malformed, 1);
  assert.equal(d.totals.events, 0);
});

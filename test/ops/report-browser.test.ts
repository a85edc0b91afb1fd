/**
 * Opens the generated report in headless Chromium and checks that it renders: charts with data, gallery thumbnails
 * decoded, no console errors, no network requests. The executable is MLMF_CHROMIUM, the path
 * scripts/install-chromium.sh prints (.ci/run exports it; scripts/test.sh asks the script for an installed one). Unset,
 * the test skips with a message, except under CI=true where it fails. MLMF_REPORT_SCREENSHOT=path keeps the screenshot.
 */
import assert from 'node:assert/strict';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { writeReport } from '../../lib/report/index.ts';
import { makeFilterOutput } from './fixture.ts';

const INSTALL = 'export MLMF_CHROMIUM="$(bash scripts/install-chromium.sh)"';
const CHROMIUM = process.env.MLMF_CHROMIUM || undefined;
if (!CHROMIUM && process.env.CI === 'true') throw new Error(`MLMF_CHROMIUM is unset (CI=true): ${INSTALL}`);
if (CHROMIUM) {
  try {
    accessSync(CHROMIUM, constants.X_OK);
  } catch {
    throw new Error(`MLMF_CHROMIUM=${CHROMIUM} is not an executable: ${INSTALL}`);
  }
}
const skip = CHROMIUM ? false : `MLMF_CHROMIUM is unset: ${INSTALL}`;

test(
  'the report renders in headless Chromium with charts, thumbnails and no console errors',
  { skip, timeout: 60_000 },
  async () => {
    const { dir } = await makeFilterOutput(60);
    const profile = await mkdtemp(join(tmpdir(), 'mlmf-chromium-'));
    const out = join(dir, 'report.html');
    const data = await writeReport({
      input: { kind: 'dir', path: dir },
      out,
      samples: 8,
      title: 'MLM filter report (test fixture)',
    });
    // A persistent context is how Playwright takes a fresh --user-data-dir (it refuses the raw flag).
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      viewport: { width: 1400, height: 900 },
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      const requests: string[] = [];
      page.on('request', (r) => {
        if (!r.url().startsWith('file:') && !r.url().startsWith('data:')) requests.push(r.url());
      });
      await page.goto(pathToFileURL(out).href, { waitUntil: 'load' });

      assert.equal(await page.title(), 'MLM filter report (test fixture)');
      assert.equal(await page.locator('svg.histogram').count(), 4);
      // Bars with data have a visible height; their count matches the embedded numbers.
      const drawn = await page.$$eval('rect.bar', (rects) =>
        rects
          .filter((r) => Number(r.getAttribute('data-count')) > 0)
          .map((r) => (r as SVGGraphicsElement).getBBox().height),
      );
      const nonEmptyBins = Object.values(data.histograms).reduce(
        (a, h) => a + [...h.accepted, ...h.rejected].filter((n) => n > 0).length,
        0,
      );
      assert.equal(drawn.length, nonEmptyBins);
      assert.ok(drawn.every((h) => h > 0));
      assert.ok((await page.locator('svg.timeline circle.rate').count()) >= 5);
      assert.equal(await page.locator('#kpis [data-kpi="events"]').textContent(), '60');
      // Thumbnails decoded (naturalWidth > 0), all from data: URIs.
      const thumbs = await page.$$eval('.card img', (imgs) =>
        imgs.map((i) => ({ w: (i as HTMLImageElement).naturalWidth, src: (i as HTMLImageElement).src.slice(0, 5) })),
      );
      assert.equal(thumbs.length, 8);
      assert.ok(thumbs.every((t) => t.w > 0 && t.src === 'data:'));
      assert.equal(await page.locator('#rejected-samples figure.card').count(), 8);

      const shot = await page.screenshot({ fullPage: true });
      assert.ok(shot.length > 20_000, 'a non-trivial screenshot');
      if (process.env.MLMF_REPORT_SCREENSHOT) await writeFile(process.env.MLMF_REPORT_SCREENSHOT, shot);
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, [], 'the report fetches nothing');
    } finally {
      await browser.close();
      await rm(profile, { recursive: true, force: true });
      await rm(dir, { recursive: true, force: true });
    }
  },
);

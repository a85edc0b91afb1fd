/**
 * Issue 12: hostile JPEGs that got through the intake. (1) A frame header hidden behind a bogus `FF 00` "segment":
 * the JS header reader checked 64x64, libjpeg decoded 65500x65500. (2) Progressive JPEGs with thousands of scans:
 * decode cost grows with pixels x scans, minutes of CPU on a libuv pool thread. Each must end as an
 * `undecodable_image` reject within bounded time and memory, whichever decoder is in use.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import sharp from 'sharp';
import { countJpegScans, readJpegHeader } from '../../lib/intake/decode.ts';
import { Intake, type IntakeOptions } from '../../lib/intake/index.ts';
import {
  loadJpegNative,
  nativeDecodeLoad,
  nativeDecodeSlots,
  nativeParams,
  nativeReject,
  prepareJpeg,
  threadPoolSize,
} from '../../lib/intake/jpeg-native.ts';
import { RejectError } from '../../lib/types.ts';
import { SIGLIP_PAD, expectReject, photoJpeg } from './helpers.ts';
import { hiddenFrameJpeg, manyScansJpeg } from './jpeg-craft.ts';

const native = loadJpegNative().module!;
const IDENTITY = new Float32Array([1, 1, 1, 0, 0, 0]);
const MB = 1024 * 1024;

/** Runs `fn`, returning its outcome, the wall time and the RSS growth over it (sampled every 5 ms). */
async function measured<T>(fn: () => Promise<T>): Promise<{ ms: number; rssGrowthMb: number; error?: unknown }> {
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
  const t0 = performance.now();
  let error: unknown;
  try {
    await fn();
  } catch (err) {
    error = err;
  }
  const ms = performance.now() - t0;
  clearInterval(timer);
  peak = Math.max(peak, process.memoryUsage().rss);
  return { ms, rssGrowthMb: (peak - rss0) / MB, error };
}

function nativeCode(err: unknown): string | undefined {
  return (err as { code?: string } | undefined)?.code;
}

async function nativeRun(bytes: Buffer, w: number, h: number, limits = {}) {
  const out = new Float32Array(3 * 64 * 64);
  const spec = { ...SIGLIP_PAD, size: 64 };
  return measured(() => prepareJpeg(native, bytes, w, h, spec, nativeParams(spec, IDENTITY, 1, limits), out));
}

function intakes(o: IntakeOptions = {}): [string, Intake][] {
  return [
    ['native', new Intake({ jpegDecoder: 'native', ...o }, SIGLIP_PAD)],
    ['sharp', new Intake({ jpegDecoder: 'sharp', ...o }, SIGLIP_PAD)],
  ];
}

describe('issue 12.1: a frame header hidden behind FF 00', () => {
  it('the header reader refuses FF 00 and unknown markers, and reads fill bytes, RSTn and TEM', async () => {
    const ok = await photoJpeg(90, 70);
    const sof = ok.indexOf(Buffer.from([0xff, 0xc0]));
    const before = (ins: number[]): Buffer => Buffer.concat([ok.subarray(0, sof), Buffer.from(ins), ok.subarray(sof)]);
    const read = (b: Buffer) => {
      const h = readJpegHeader(b);
      return h && [h.width, h.height];
    };
    assert.deepEqual(read(ok), [90, 70]);
    assert.deepEqual(read(before([0xff, 0xff, 0xff])), [90, 70], 'fill bytes before a marker');
    assert.deepEqual(read(before([0xff, 0xd0, 0xff, 0x01])), [90, 70], 'RST0 and TEM stand alone');
    for (const meta of [await sharp(before([0xff, 0xff, 0xff])).metadata()]) {
      assert.deepEqual([meta.width, meta.height], [90, 70], 'sharp agrees on fill bytes');
    }
    assert.equal(read(await hiddenFrameJpeg()), undefined, 'FF 00 read as a segment would hide a SOF');
    assert.equal(read(before([0xff, 0x00, 0x00, 0x04, 0x11, 0x22])), undefined, 'FF 00');
    assert.equal(read(before([0xff, 0xff, 0x00, 0x00, 0x04, 0x11, 0x22])), undefined, 'FF FF 00');
    assert.equal(read(before([0xff, 0x02, 0x00, 0x04, 0x11, 0x22])), undefined, 'reserved marker');
    assert.equal(read(before([0xff, 0xf3, 0x00, 0x04, 0x11, 0x22])), undefined, 'JPG3');
    assert.equal(read(before([0xff, 0xd8])), undefined, 'a second SOI');
    assert.equal(read(before([0x00, 0xff, 0xe5, 0x00, 0x02])), undefined, 'garbage between segments');
    assert.equal(read(before([0xff, 0xdc, 0x00, 0x04, 0x00, 0x10])), undefined, 'DNL before the scan');
  });

  for (const progressive of [false, true]) {
    it(`${progressive ? 'progressive' : 'baseline'}: rejected as undecodable_image in bounded time and memory, by both decoders`, async () => {
      const bytes = await hiddenFrameJpeg({ progressive });
      assert.ok(bytes.length < 1024, `${bytes.length} bytes`);
      for (const [name, intake] of intakes()) {
        const r = await measured(() => intake.prepare({ kind: 'bytes', data: bytes }));
        assert.ok(r.error instanceof RejectError, `${name}: ${String(r.error)}`);
        assert.equal(r.error.reason.code, 'undecodable_image', name);
        assert.equal(r.error.reason.detail?.kind, 'too_many_pixels', name);
        assert.ok(r.ms < 5000, `${name}: ${r.ms.toFixed(0)} ms`);
        assert.ok(r.rssGrowthMb < 200, `${name}: RSS grew ${r.rssGrowthMb.toFixed(0)} MB`);
        assert.equal(intake.nativeFallbacks, 0);
        await intake.close();
      }
    });
  }

  it('the native module checks the size it was told and the pixel limit itself', async () => {
    const hidden = await hiddenFrameJpeg({ progressive: true });
    const told = await nativeRun(hidden, 64, 64);
    assert.equal(nativeCode(told.error), 'JPEG_SIZE_MISMATCH', String(told.error));
    assert.match((told.error as Error).message, /65500x65500.*64x64/);
    const unchecked = await nativeRun(hidden, 0, 0);
    assert.equal(nativeCode(unchecked.error), 'JPEG_TOO_LARGE', String(unchecked.error));
    for (const r of [told, unchecked]) assert.ok(r.ms < 1000 && r.rssGrowthMb < 100, JSON.stringify(r));
    const plain = await photoJpeg(64, 48);
    assert.equal((await nativeRun(plain, 64, 48)).error, undefined);
    assert.equal(nativeCode((await nativeRun(plain, 64, 47)).error), 'JPEG_SIZE_MISMATCH');
    assert.equal(nativeCode((await nativeRun(plain, 64, 48, { maxPixels: 3000 })).error), 'JPEG_TOO_LARGE');
  });

  it('native hostile codes become rejects, libjpeg refusals stay fallbacks to sharp', () => {
    const coded = (code: string) => Object.assign(new Error('m'), { code });
    for (const [code, kind] of [
      ['JPEG_SIZE_MISMATCH', 'decode_error'],
      ['JPEG_TOO_LARGE', 'too_many_pixels'],
      ['JPEG_TOO_MANY_SCANS', 'decode_error'],
      ['JPEG_BAD_PROGRESSION', 'decode_error'],
    ]) {
      const r = nativeReject(coded(code!));
      assert.ok(r instanceof RejectError, code);
      assert.deepEqual(
        [r.reason.code, r.reason.detail?.kind, r.reason.detail?.native],
        ['undecodable_image', kind, code],
      );
    }
    for (const code of ['JPEG_TRUNCATED', 'JPEG_ERROR', 'JPEG_UNSUPPORTED'])
      assert.equal(nativeReject(coded(code)), undefined);
    assert.equal(nativeReject(new Error('x')), undefined);
  });
});

describe('issue 12.2: progressive JPEGs with thousands of scans', () => {
  it('countJpegScans counts start-of-scan markers', async () => {
    assert.equal(countJpegScans(manyScansJpeg(64, 64, 37)), 37);
    assert.equal(countJpegScans(manyScansJpeg(64, 64, 500), 101), 101);
    assert.equal(countJpegScans(await photoJpeg(64, 48)), 1);
    const prog = await sharp(await photoJpeg(64, 48))
      .jpeg({ progressive: true })
      .toBuffer();
    assert.ok(countJpegScans(prog) > 1 && countJpegScans(prog) <= 12);
  });

  it('3000 scans of 2048x2048: rejected as undecodable_image in bounded time, by both decoders', async () => {
    const bytes = manyScansJpeg(2048, 2048, 3000);
    for (const [name, intake] of intakes()) {
      const r = await measured(() => intake.prepare({ kind: 'bytes', data: bytes }));
      assert.ok(r.error instanceof RejectError, `${name}: ${String(r.error)}`);
      assert.deepEqual([r.error.reason.code, r.error.reason.detail?.kind], ['undecodable_image', 'decode_error']);
      assert.match(r.error.reason.message, /more than 100 scans/);
      assert.ok(r.ms < 5000, `${name}: ${r.ms.toFixed(0)} ms`);
      assert.ok(r.rssGrowthMb < 200, `${name}: RSS grew ${r.rssGrowthMb.toFixed(0)} MB`);
      await intake.close();
    }
  });

  it('the native module stops at the scan limit itself (djpeg -maxscans), in a fraction of the full cost', async () => {
    const bytes = manyScansJpeg(2048, 2048, 3000);
    const r = await nativeRun(bytes, 2048, 2048);
    assert.equal(nativeCode(r.error), 'JPEG_TOO_MANY_SCANS', String(r.error));
    assert.match((r.error as Error).message, /more than 100 scans/);
    assert.ok(r.ms < 2000, `${r.ms.toFixed(0)} ms`);
    const fifty = manyScansJpeg(256, 256, 50);
    assert.equal((await nativeRun(fifty, 256, 256)).error, undefined, 'under the default limit');
    assert.equal(nativeCode((await nativeRun(fifty, 256, 256, { maxScans: 20 })).error), 'JPEG_TOO_MANY_SCANS');
  });

  it('jpegMaxScans sets the limit; ordinary progressive JPEGs pass', async () => {
    const fifty = manyScansJpeg(256, 256, 50);
    const strict = new Intake({ jpegMaxScans: 20 }, SIGLIP_PAD);
    await expectReject(strict.prepare({ kind: 'bytes', data: fifty }), 'undecodable_image', {
      kind: 'decode_error',
      maxScans: 20,
    });
    const dflt = new Intake({}, SIGLIP_PAD);
    const p = await dflt.prepare({ kind: 'bytes', data: fifty });
    assert.deepEqual([p.width, p.height], [256, 256]);
    const prog = await sharp(await photoJpeg(300, 200))
      .jpeg({ progressive: true })
      .toBuffer();
    await strict.prepare({ kind: 'bytes', data: prog });
    assert.equal(strict.nativeFallbacks + dflt.nativeFallbacks, 0);
    await Promise.all([strict.close(), dflt.close()]);
  });

  it('a bogus progression (a refinement of bits never sent) is fatal in the native path', async () => {
    const bytes = manyScansJpeg(256, 256, 10, 5);
    const r = await nativeRun(bytes, 256, 256);
    assert.equal(nativeCode(r.error), 'JPEG_BAD_PROGRESSION', String(r.error));
    const intake = new Intake({ jpegDecoder: 'native' }, SIGLIP_PAD);
    await expectReject(intake.prepare({ kind: 'bytes', data: bytes }), 'undecodable_image', {
      kind: 'decode_error',
      native: 'JPEG_BAD_PROGRESSION',
    });
    assert.equal(intake.nativeFallbacks, 0);
    await intake.close();
  });
});

describe('issue 12.2: native decodes leave the libuv pool room for DNS and file I/O', () => {
  it('the slot count is one under the pool size, at least 1', () => {
    assert.equal(threadPoolSize({}), 4);
    assert.equal(threadPoolSize({ UV_THREADPOOL_SIZE: '16' }), 16);
    assert.equal(threadPoolSize({ UV_THREADPOOL_SIZE: 'x' }), 4);
    assert.equal(threadPoolSize({ UV_THREADPOOL_SIZE: '5000' }), 1024);
    assert.equal(nativeDecodeSlots, Math.max(1, threadPoolSize() - 1));
  });

  it('many slow decodes at once: at most nativeDecodeSlots run, and fs.stat is not queued behind them', async () => {
    const big = await photoJpeg(2400, 1600, 90, 5);
    const spec = { ...SIGLIP_PAD, size: 64 };
    const params = nativeParams(spec, IDENTITY, 0); // full-size decode: the slow path
    const one = async () => {
      const out = new Float32Array(3 * 64 * 64);
      await prepareJpeg(native, big, 2400, 1600, spec, params, out);
    };
    const t0 = performance.now();
    await one();
    const single = performance.now() - t0;
    let maxRunning = 0;
    const jobs = Promise.all(Array.from({ length: 6 * nativeDecodeSlots + 6 }, one));
    const poll = setInterval(() => (maxRunning = Math.max(maxRunning, nativeDecodeLoad().running)), 1);
    await new Promise((r) => setTimeout(r, Math.min(50, single / 2)));
    const lat: number[] = [];
    for (let k = 0; k < 5; k++) {
      const t = performance.now();
      await stat(import.meta.filename ?? new URL(import.meta.url).pathname);
      lat.push(performance.now() - t);
    }
    await jobs;
    clearInterval(poll);
    assert.ok(maxRunning >= 1 && maxRunning <= nativeDecodeSlots, `running at once: ${maxRunning}`);
    assert.deepEqual(nativeDecodeLoad(), { running: 0, waiting: 0 });
    const worst = Math.max(...lat);
    // Queued behind the decodes, one stat would wait ~ (queued decodes / pool) x single decode: ~6 of them.
    assert.ok(
      worst < Math.max(50, 2 * single),
      `fs.stat took ${worst.toFixed(1)} ms; one decode ${single.toFixed(0)} ms`,
    );
  });
});

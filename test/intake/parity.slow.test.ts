/**
 * Parity of the intake's tensors with the reference preprocessing (PIL: expand2square with int(mean*255), bicubic
 * resize, rescale, normalise), run in the export tools' Python venv. Slow and environment-bound: MLMF_SLOW=1 and
 * tools/export/.venv with Pillow + numpy are required, else skipped.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Intake } from '../../lib/intake/index.ts';
import type { PreprocessSpec } from '../../lib/types.ts';
import { SIGLIP_PAD, photoJpeg } from './helpers.ts';

const PY = 'tools/export/.venv/bin/python';
// The reference venv is an optional tool (torch, ~6 GB), not a committed fixture: without it the suite skips, saying so.
const skip =
  process.env.MLMF_SLOW !== '1'
    ? 'slow suite: set MLMF_SLOW=1'
    : !existsSync(PY) && `${PY} missing: tools/export/export.sh makes the reference venv (tools/export/README.md)`;

const CLIP_CROP: PreprocessSpec = {
  size: 336,
  mean: [0.48145466, 0.4578275, 0.40821073],
  std: [0.26862954, 0.26130258, 0.27577711],
  rescale: 1 / 255,
  padToSquare: false,
  centerCrop: true,
  resample: 'bicubic',
};

// Written for this test from the reference's documented steps (LLaVA mm_utils + HF image processors).
const REFERENCE = `
import sys, json, numpy as np
from PIL import Image
src, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
img = Image.open(src).convert("RGB")
S = spec["size"]
if spec["padToSquare"]:
    w, h = img.size
    side = max(w, h)
    bg = Image.new("RGB", (side, side), tuple(int(m * 255) for m in spec["mean"]))
    bg.paste(img, ((side - w) // 2, (side - h) // 2))
    img = bg
if spec["centerCrop"]:
    w, h = img.size
    short, long = min(w, h), max(w, h)
    rw, rh = (S, int(S * long / short)) if w <= h else (int(S * long / short), S)
    img = img.resize((rw, rh), Image.BICUBIC)
    l, t = (img.size[0] - S) // 2, (img.size[1] - S) // 2
    img = img.crop((l, t, l + S, t + S))
else:
    img = img.resize((S, S), Image.BICUBIC)
x = np.asarray(img, dtype=np.float32) * np.float32(spec["rescale"])
x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32).tofile(out)
`;

const dir = !skip ? mkdtempSync(join(tmpdir(), 'intake-parity-')) : '';
after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('parity with the PIL reference preprocessing', { skip }, () => {
  const cases: [string, number, number, PreprocessSpec][] = [
    ['SigLIP pad, landscape 640x320 (no shrink-on-load)', 640, 320, SIGLIP_PAD],
    // sharp decodes JPEGs at 1/2 DCT scale only from a 3x reduction up (int(shrink) == 2 is excluded)
    ['SigLIP pad, portrait 500x900 (2.3x, full decode)', 500, 900, SIGLIP_PAD],
    ['SigLIP pad, 1300x1000 (3.4x: JPEG shrink-on-load x2)', 1300, 1000, SIGLIP_PAD],
    ['SigLIP pad, 2000x1500 (5.2x: JPEG shrink-on-load x4)', 2000, 1500, SIGLIP_PAD],
    ['SigLIP pad, small 300x260 (upscale)', 300, 260, SIGLIP_PAD],
    ['CLIP shortest-edge + centre crop, 800x600', 800, 600, CLIP_CROP],
  ];
  for (const [name, w, h, spec] of cases) {
    it(name, async () => {
      const jpg = await photoJpeg(w, h, 90, w + h);
      const src = join(dir, `${w}x${h}.jpg`);
      const out = join(dir, `${w}x${h}.f32`);
      writeFileSync(src, jpg);
      execFileSync(PY, ['-c', REFERENCE, src, out, JSON.stringify(spec)]);
      const ref = new Float32Array(readFileSync(out).buffer.slice(0));
      for (const [path, options, meanLimit, maxLimit] of [
        ['native, DCT scaling (--jpeg-fast-decode)', { jpegDctScaling: true }, 1.5, 1],
        ['native, full decode (the default)', {}, 1e-4, 1e-5],
        ['sharp', { jpegDecoder: 'sharp' }, 3, 1],
      ] as const) {
        const intake = new Intake(options, spec);
        const ours = (await intake.prepare({ kind: 'bytes', data: jpg })).pixelValues;
        await intake.close();
        assert.equal(ours.length, ref.length);
        let sum = 0;
        let max = 0;
        for (let i = 0; i < ref.length; i++) {
          const d = Math.abs(ours[i]! - ref[i]!);
          sum += d;
          if (d > max) max = d;
        }
        const mean = sum / ref.length;
        // in 0..255 units: normalised diff * std * 255
        const mean255 = mean * spec.std[0] * 255;
        console.log(
          `${name}, ${path}: mean |diff| ${mean.toFixed(4)} (${mean255.toFixed(2)}/255), max ${max.toFixed(3)}`,
        );
        assert.ok(mean255 < meanLimit, `${path}: mean abs diff ${mean255.toFixed(2)}/255`);
        assert.ok(max < maxLimit, `${path}: max abs diff ${max}`);
      }
    });
  }
});

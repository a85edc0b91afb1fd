import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheDirFor, preprocessFromConfig, readModelDir, resolveModelDir } from '../../lib/model/model-dir.ts';
import { loadScorer } from '../../lib/model/scorer.ts';
import { FilterError } from '../../lib/types.ts';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'mlmf-model-'));
}

test('a directory missing files fails with model_invalid naming them and the export command', async (t) => {
  const dir = tempDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'onnx'));
  writeFileSync(join(dir, 'onnx', 'vision_encoder.onnx'), '');
  writeFileSync(join(dir, 'tokenizer.json'), '{}');
  await assert.rejects(loadScorer(dir), (err: unknown) => {
    assert.ok(err instanceof FilterError);
    assert.equal(err.code, 'model_invalid');
    assert.match(err.message, /missing: onnx\/mlm_scorer\.onnx, tokenizer_config\.json/);
    assert.match(err.message, /re-export/);
    assert.match(err.message, /mlm_filter\.json/);
    assert.match(err.message, /tools\/export\/export\.sh/);
    assert.deepEqual((err.context.missing as string[]).length, 5);
    return true;
  });
});

test('fp16 requested on an fp32-only export says so', () => {
  const dir = tempDir();
  try {
    mkdirSync(join(dir, 'onnx'));
    writeFileSync(join(dir, 'onnx', 'mlm_scorer.onnx'), '');
    for (const f of [
      'tokenizer.json',
      'tokenizer_config.json',
      'config.json',
      'preprocessor_config.json',
      'mlm_filter.json',
    ]) {
      writeFileSync(join(dir, f), '{}');
    }
    assert.throws(() => readModelDir(dir, 'fp16'), /no fp16 files/);
    assert.throws(() => readModelDir(dir, 'fp32'), { code: 'model_invalid', message: /conversation format/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a hub id without a cached export fails with model_not_exported and the command to run', () => {
  const cache = tempDir();
  try {
    const env = { MLMF_MODEL_CACHE: cache };
    assert.throws(
      () => resolveModelDir('Victorwz/mlm-filter-qwen2.5-1.5b-gpt4o', env),
      (err: unknown) => {
        assert.ok(err instanceof FilterError);
        assert.equal(err.code, 'model_not_exported');
        assert.match(err.message, /tools\/export\/export\.sh Victorwz\/mlm-filter-qwen2\.5-1\.5b-gpt4o --out /);
        assert.equal(err.context.expectedDir, join(cache, 'Victorwz--mlm-filter-qwen2.5-1.5b-gpt4o'));
        return true;
      },
    );
    mkdirSync(join(cache, 'Victorwz--mlm-filter-qwen2.5-1.5b-gpt4o'));
    assert.equal(
      resolveModelDir('Victorwz/mlm-filter-qwen2.5-1.5b-gpt4o', env),
      join(cache, 'Victorwz--mlm-filter-qwen2.5-1.5b-gpt4o'),
    );
    assert.match(cacheDirFor('a/b', {}), /\.cache\/mlm-filter\/models\/a--b$/);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
  assert.throws(() => resolveModelDir('./no/such/dir/here'), { code: 'model_invalid' });
});

test('preprocess spec: SigLIP squashes to size, CLIP resizes the short edge and crops, pad flag passes through', () => {
  const siglip = preprocessFromConfig(
    {
      size: { height: 384, width: 384 },
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
      rescale_factor: 1 / 255,
      resample: 3,
    },
    true,
  );
  assert.deepEqual(siglip, {
    size: 384,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
    rescale: 1 / 255,
    padToSquare: true,
    centerCrop: false,
    resample: 'bicubic',
  });
  const clip = preprocessFromConfig(
    {
      size: { shortest_edge: 336 },
      crop_size: { height: 336, width: 336 },
      do_center_crop: true,
      image_mean: [0.48145466, 0.4578275, 0.40821073],
      image_std: [0.26862954, 0.26130258, 0.27577711],
      resample: 3,
    },
    false,
  );
  assert.equal(clip.size, 336);
  assert.equal(clip.centerCrop, true);
  assert.equal(clip.padToSquare, false);
  assert.throws(() => preprocessFromConfig({ size: 10 }, false), { code: 'model_invalid' });
  const clipPadded = preprocessFromConfig(
    { size: { shortest_edge: 336 }, crop_size: 336, do_center_crop: true, image_mean: [0, 0, 0], image_std: [1, 1, 1] },
    true,
  );
  assert.deepEqual([clipPadded.padToSquare, clipPadded.centerCrop], [true, false], 'crop is moot on a padded square');
});

test('fixture models: trained preprocessing pads to square; reference mode does not (and crops for CLIP)', () => {
  for (const [name, crop] of [
    ['tiny-llava-qwen', false],
    ['tiny-llava-v1', true],
  ] as const) {
    const info = readModelDir(new URL(`../fixtures/models/${name}`, import.meta.url).pathname, 'fp32');
    assert.equal(info.preprocess.padToSquare, true, name);
    assert.equal(info.preprocess.centerCrop, false, name);
    assert.equal(info.preprocessNoPad.padToSquare, false, name);
    assert.equal(info.preprocessNoPad.centerCrop, crop, name);
    assert.equal(info.preprocess.size, 56);
  }
});

/**
 * A requested accelerator that cannot be created: with `fallbackToCpu: false` (the worker) it is a start-up failure
 * ('execution_provider_unavailable', naming the provider, onnxruntime's error and the fix); by default (the engine; the
 * CLI only with --cpu-fallback) a logged fallback to cpu.
 *
 * Assumes CUDA cannot run here, which holds both where the provider libraries are absent (CI, plain npm ci: onnxruntime
 * fails to load libonnxruntime_providers_shared.so) and where scripts/cuda-provider.sh installed them on a host without
 * a GPU (it fails at the driver check or at a CUDA library off LD_LIBRARY_PATH). On a host where CUDA works the tests
 * skip. The model directory is a stand-in: the fixture's JSON files with a one-node ONNX graph under every ONNX file
 * name the scorer reads, since the provider fails when the first session is created, before the graph matters.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from '../../lib/model/onnxruntime.ts';
import { ONNX_PARTS, onnxFile } from '../../lib/model/model-dir.ts';
import { loadScorer } from '../../lib/model/scorer.ts';
import { loadEngine } from '../../lib/model/sessions.ts';
import { FilterError } from '../../lib/types.ts';
import { Logger } from '../../lib/support/logger.ts';

const FIXTURE = fileURLToPath(new URL('../fixtures/models/tiny-llava-qwen/', import.meta.url));

/** A one-node ONNX model (Y = Identity(X), float [1, 4]), protobuf-encoded by hand. */
function identityModel(): Uint8Array {
  const varint = (n: number) => {
    const out: number[] = [];
    do {
      out.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
      n = Math.floor(n / 128);
    } while (n > 0);
    return Buffer.from(out);
  };
  const bytes = (field: number, ...parts: (string | Buffer)[]) => {
    const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
    return Buffer.concat([varint((field << 3) | 2), varint(body.length), body]);
  };
  const int = (field: number, v: number) => Buffer.concat([varint(field << 3), varint(v)]);
  // ValueInfoProto { name, type { tensor_type { elem_type: FLOAT, shape { dim { dim_value } ... } } } }
  const valueInfo = (name: string) =>
    Buffer.concat([bytes(1, name), bytes(2, bytes(1, int(1, 1), bytes(2, bytes(1, int(1, 1)), bytes(1, int(1, 4)))))]);
  const node = Buffer.concat([bytes(1, 'X'), bytes(2, 'Y'), bytes(4, 'Identity')]);
  const graph = Buffer.concat([bytes(1, node), bytes(2, 'g'), bytes(11, valueInfo('X')), bytes(12, valueInfo('Y'))]);
  // ModelProto { ir_version: 8, opset_import { version: 13 }, graph }
  return Buffer.concat([int(1, 8), bytes(8, int(2, 13)), bytes(7, graph)]);
}
const SMALL_GRAPH = identityModel();

type Log = { level: string; message: string; context: Record<string, unknown> };
const capture = (logs: Log[]) => new Logger(({ level, msg, ctx }) => logs.push({ level, message: msg, context: ctx }));

function standInModelDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-ep-'));
  for (const f of [
    'tokenizer.json',
    'tokenizer_config.json',
    'config.json',
    'preprocessor_config.json',
    'mlm_filter.json',
  ])
    copyFileSync(join(FIXTURE, f), join(dir, f));
  for (const part of ONNX_PARTS) {
    const file = onnxFile(dir, part, 'fp32');
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, SMALL_GRAPH);
  }
  return dir;
}

/** Whether onnxruntime can create a CUDA session on this host (then there is no failure to test). */
const cudaWorks = await ort.InferenceSession.create(SMALL_GRAPH, { executionProviders: ['cuda'] }).then(
  async (s) => {
    await s.release();
    return true;
  },
  () => false,
);
const skip = cudaWorks && 'CUDA works on this host: nothing fails to load';

function assertUnavailable(err: unknown, logs: Log[]): true {
  assert.ok(err instanceof FilterError, `a FilterError, got ${String(err)}`);
  assert.equal(err.code, 'execution_provider_unavailable');
  assert.equal(err.context.requested, 'cuda');
  assert.match(err.message, /execution provider 'cuda' is unavailable here/);
  // onnxruntime's own error is in the message, and the fix: the script and the driver it needs.
  assert.ok(typeof err.context.error === 'string' && err.context.error.length > 0);
  assert.ok(err.message.includes(err.context.error as string), 'the underlying error is in the message');
  assert.match(err.message, /scripts\/cuda-provider\.sh/);
  assert.match(err.message, /driver >= 580/);
  assert.equal(
    logs.find((l) => /falling back to cpu/.test(l.message)),
    undefined,
    'no fallback is logged',
  );
  return true;
}

test('fallbackToCpu false: an unavailable cuda provider fails the load (engine)', { skip }, async (t) => {
  const dir = standInModelDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logs: Log[] = [];
  await assert.rejects(
    loadEngine(dir, { executionProvider: 'cuda', fallbackToCpu: false, intraOpThreads: 1 }, capture(logs)),
    (err) => assertUnavailable(err, logs),
  );
});

test('fallbackToCpu false reaches the scorer thread: loadScorer rejects with the same code', { skip }, async (t) => {
  const dir = standInModelDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logs: Log[] = [];
  await assert.rejects(
    loadScorer(dir, {
      executionProvider: 'cuda',
      fallbackToCpu: false,
      intraOpThreads: 1,
      logger: capture(logs),
    }),
    (err) => assertUnavailable(err, logs),
  );
});

test('by default an unavailable cuda provider falls back to cpu with a logged warning', { skip }, async (t) => {
  const dir = standInModelDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logs: Log[] = [];
  const outcome = await loadEngine(dir, { executionProvider: 'cuda', intraOpThreads: 1 }, capture(logs)).then(
    async (loaded) => {
      await loaded.engine.release();
      return loaded.executionProvider;
    },
    (err: unknown) => err,
  );
  const warn = logs.find((l) => l.level === 'warn');
  assert.ok(warn, 'a warning is logged');
  assert.match(warn.message, /execution provider 'cuda' is unavailable here, falling back to cpu/);
  assert.equal(warn.context.requested, 'cuda');
  assert.ok(typeof warn.context.error === 'string' && warn.context.error.length > 0, "onnxruntime's error is logged");
  // It went on to cpu. The stand-in graph is not a scoring graph, so what the engine then makes of it is not this
  // test's business (the parity tests load the real fixtures the same way); only that the provider did not stop it.
  if (outcome instanceof Error) {
    assert.notEqual((outcome as FilterError).code, 'execution_provider_unavailable');
  } else {
    assert.equal(outcome, 'cpu');
  }
});

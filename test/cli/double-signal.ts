/**
 * Two signals to `mlm-filter filter` while the real scorer threads (tiny model, onnxruntime) score: the first drains,
 * the second stops at once, and the process must exit 130 (issue 20: it aborted with `terminate called after throwing
 * an instance of 'Napi::Error'`, exit 134, when process.exit met a thread inside an onnxruntime call). Shared by the
 * default suite's few runs and the slow suite's twenty.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { exitWithin, startCli, visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';

const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;
const sample = new URL('../../sample/pairs.jsonl', import.meta.url).pathname;

/** A JSONL input of `count` pairs with embedded images (no fetches): enough that a drain is still scoring. */
export function scoringInput(count: number): string {
  const pairs = readFileSync(sample, 'utf8')
    .split('\n')
    .flatMap((line) => {
      try {
        const r = JSON.parse(line) as { image?: { base64?: string }; caption?: string };
        return r.image?.base64 && r.caption ? [r] : [];
      } catch {
        return [];
      }
    });
  assert.ok(pairs.length > 0, 'sample/pairs.jsonl has pairs with embedded images');
  const lines = Array.from({ length: count }, (_, i) => JSON.stringify({ ...pairs[i % pairs.length], id: `p${i}` }));
  const path = join(mkdtempSync(join(tmpdir(), 'mlmf-signal-')), 'pairs.jsonl');
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}

/**
 * One run: the scorer has decided pairs (its threads are busy), SIGINT, the drain notice, `gapMs`, SIGINT again.
 * Asserts exit code 130 through the immediate stop, with no abort on stderr.
 */
export async function doubleSignalRun(input: string, gapMs: number, signal: NodeJS.Signals = 'SIGINT') {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-signal-')), 'out');
  const cli = startCli(['filter', '--input', input, '--out', out, '--model', model, '--progress', 'none']);
  try {
    await waitFor('the first decided pairs', () => visibleOutcomes(out) > 0, 90_000);
    cli.child.kill(signal);
    await waitFor('the drain notice', () => /draining/.test(cli.stderr()), 30_000);
    await sleep(gapMs);
    cli.child.kill(signal);
    const exit = await exitWithin(cli, 30_000);
    assert.deepEqual(exit, { code: 130, signal: null }, cli.stderr());
    assert.match(cli.stderr(), /stopped at once/, 'the second signal, not the end of the drain, ended the run');
    assert.doesNotMatch(cli.stderr(), /terminate called|Napi::Error|Aborted/);
    // The scorer threads ending under the pipeline is no verdict on a pair: nothing is rejected for it.
    const rejects = join(out, 'rejects.jsonl');
    if (existsSync(rejects)) assert.doesNotMatch(readFileSync(rejects, 'utf8'), /scoring_failed|scorer_failed/);
  } finally {
    cli.child.kill('SIGKILL');
  }
}

/**
 * How the real `mlm-filter` command reports its own command line: usage errors are ONE line on stderr (catalog code,
 * the fix, `see mlm-filter <command> --help`) with the catalog's exit code; a condition the shell cut at its `>` gets
 * the quoting hint; `--help` marks required options and shows every default; `prompt --caption-file -` reads stdin.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
const sample = join(root, 'sample/pairs.jsonl');

function cli(args: string[], options: { input?: string | Buffer; cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { timeout: 120_000, ...options });
  return { code: r.status, out: r.stdout.toString('utf8'), err: r.stderr.toString('utf8') };
}

/**
 * stderr's lines, less the launcher's note that it runs the TypeScript sources (bin/mlm-filter.js prints it when
 * dist/ is missing or older than the sources) and the scorer's JSON log lines.
 */
function stderrLines(err: string): string[] {
  return err.split('\n').filter((l) => l && !/^mlm-filter: running /.test(l) && !l.startsWith('{'));
}

/** Exactly one line, `mlm-filter: error [code]: ...`, and no help text. */
function assertOneLineError(err: string, code: string): string {
  const lines = stderrLines(err);
  assert.equal(lines.length, 1, `expected one line, got:\n${err}`);
  assert.match(lines[0]!, new RegExp(`^mlm-filter: error \\[${code}\\]: `));
  assert.doesNotMatch(err, /Usage:|Options:/);
  return lines[0]!;
}

test('usage errors are one line with the code, the fix and the command help to read; exit 2', () => {
  const cases: [args: string[], code: string, fix: RegExp, help: string][] = [
    [['filter', '--input', 'x.jsonl', '--out', 'o'], 'missing_option', /add --model <dir>/, 'mlm-filter filter'],
    [['filter', '--input', 'x', '--out', 'o', '--model'], 'missing_option', /give --model/, 'mlm-filter filter'],
    [
      ['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--concurency', '4'],
      'unknown_option',
      /Did you mean --concurrency\?/,
      'mlm-filter filter',
    ],
    [
      ['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--jpeg-decoder', 'turbo'],
      'invalid_option',
      /Allowed choices are auto, native, sharp/,
      'mlm-filter filter',
    ],
    [
      ['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--concurrency', '0'],
      'invalid_option',
      /positive integer, got "0"/,
      'mlm-filter filter',
    ],
    [
      ['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--top-fraction', '1.5'],
      'bad_top_fraction',
      /within \(0, 1\]/,
      'mlm-filter filter',
    ],
    [
      ['filter', '--input', 'x', '--out', 'o', '--model', 'm', 'stray'],
      'bad_usage',
      /quote a value/,
      'mlm-filter filter',
    ],
    [
      ['prompt', '--format', 'llava_v1', '--metric', 'itm'],
      'bad_usage',
      /exactly one of --caption/,
      'mlm-filter prompt',
    ],
    [
      ['prompt', '--format', 'llava_v1', '--metric', 'beauty', '--caption', 'x'],
      'unknown_metric',
      /metric must be one of itm/,
      'mlm-filter prompt',
    ],
    [['filtr'], 'unknown_command', /Did you mean filter\?/, 'mlm-filter'],
    [['nonsense'], 'unknown_command', /commands: filter, prompt, worker, monitor, report/, 'mlm-filter'],
  ];
  for (const [args, code, fix, help] of cases) {
    const r = cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    const line = assertOneLineError(r.err, code);
    assert.match(line, fix, line);
    assert.ok(line.endsWith(`; see ${help} --help`), line);
  }
});

test('--out naming an existing file is a usage error: exit 2, one line, before any model loads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-usage-'));
  const file = join(dir, 'results.txt');
  writeFileSync(file, 'not a directory');
  const r = cli(['filter', '--input', sample, '--out', file, '--model', join(dir, 'no-such-model')]);
  assert.equal(r.code, 2, r.err);
  const line = assertOneLineError(r.err, 'output_not_directory');
  assert.match(line, /is an existing file: give a directory/);
});

test('configuration errors exit 2 and runtime failures exit 1, each as one line without the help pointer', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-usage-'));
  let r = cli(['filter', '--input', sample, '--out', join(dir, 'a'), '--model', join(dir, 'no-such-model')]);
  assert.equal(r.code, 2, r.err);
  assert.doesNotMatch(assertOneLineError(r.err, 'model_invalid|model_not_exported'), /--help/);
  // An output directory that cannot be made (a path under a regular file) fails while running.
  const file = join(dir, 'file');
  writeFileSync(file, '');
  r = cli(['filter', '--input', sample, '--out', join(file, 'out'), '--model', model, '--progress', 'none']);
  assert.equal(r.code, 1, r.err);
  assert.doesNotMatch(assertOneLineError(r.err, 'output_unwritable'), /--help/);
});

test('an unquoted condition cut by the shell (`--threshold itm>=10` in bash) gets the quoting hint', () => {
  const cwd = mkdtempSync(join(tmpdir(), 'mlmf-shell-'));
  const run = (command: string) => spawnSync('bash', ['-c', command], { cwd, encoding: 'utf8', timeout: 120_000 });
  const node = JSON.stringify(process.execPath);
  let r = run(`${node} ${JSON.stringify(bin)} filter --input x.jsonl --out out --model m --threshold itm>=10`);
  assert.equal(r.status, 2, r.stderr);
  // bash read `>=10` as a redirection of stdout into a file named `=10`, leaving the condition `itm`.
  assert.ok(existsSync(join(cwd, '=10')));
  let line = assertOneLineError(r.stderr, 'bad_threshold');
  assert.match(line, /cannot read threshold "itm"/);
  assert.match(line, /conditions must be quoted in a shell, e.g\. --threshold 'itm>=66'/);
  // The worker's list, and a condition with no value, get it too; a real typo does not.
  r = run(`${node} ${JSON.stringify(bin)} worker --thresholds itm>=66,odf>=20`);
  assert.equal(r.status, 2, r.stderr);
  assert.match(
    assertOneLineError(r.stderr, 'bad_threshold'),
    /must be quoted in a shell.*see mlm-filter worker --help$/,
  );
  const direct = cli(['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--threshold', 'odf>=']);
  assert.match(assertOneLineError(direct.err, 'bad_threshold'), /must be quoted in a shell/);
  const typo = cli(['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--threshold', 'itm=>66']);
  line = assertOneLineError(typo.err, 'bad_threshold');
  assert.doesNotMatch(line, /quoted/);
});

/** The help's option entries, each joined onto one line: `--flag <arg>  description (...)`. */
function helpEntries(help: string): Map<string, string> {
  const section = help.slice(help.indexOf('Options:'));
  const entries = section.split(/\n(?= {2}-)/).slice(1);
  return new Map(
    entries.map((e) => {
      const text = e.replace(/\s+/g, ' ').trim();
      return [/--[a-z-]+/.exec(text)![0], text];
    }),
  );
}

test('--help marks required options and shows every default', () => {
  const filter = helpEntries(cli(['filter', '--help']).out);
  for (const flag of ['--input', '--out', '--model']) assert.match(filter.get(flag)!, /\(required\)$/, flag);
  const defaults: Record<string, string> = {
    '--threshold': 'itm>=66 and odf>=20',
    '--combine': 'and',
    '--top-fraction': 'off',
    '--top-metric': 'itm',
    '--metrics': 'all',
    '--concurrency': '32',
    '--batch-size': '8',
    '--execution-provider': 'cpu',
    '--dtype': 'fp32',
    '--samples-per-shard': '1000',
    '--max-caption-chars': '4096',
    '--jpeg-decoder': 'auto: native when built, else sharp',
    '--progress': 'bar on a TTY, else log',
  };
  for (const [flag, value] of Object.entries(defaults)) {
    assert.ok(filter.get(flag)?.includes(`default: ${value})`), `${flag}: ${filter.get(flag)}`);
  }
  // Every option of filter says it is required or what its default is (--help and --version print and exit).
  for (const [flag, text] of filter) {
    if (flag !== '--help' && flag !== '--version') assert.match(text, /\((?:.*; )?(required|default: [^)]+)/, text);
  }
  assert.match(
    filter.get('--threshold')!,
    /quote it in a shell: --threshold 'itm>=66'; with --top-fraction, applied first/,
  );
  assert.match(filter.get('--top-fraction')!, /of the pairs that pass --threshold/);
  const prompt = helpEntries(cli(['prompt', '--help']).out);
  assert.match(prompt.get('--format')!, /\(required; one of qwen_instruct, llava_v1, llama_3\)/);
  assert.match(prompt.get('--metric')!, /\(required\)/);
  const worker = helpEntries(cli(['worker', '--help']).out);
  assert.match(worker.get('--thresholds')!, /\[env MLMF_THRESHOLDS\] \(default: itm>=66,odf>=20\)/);
  assert.match(worker.get('--group-id')!, /default: mlm-filter\)/);
  const monitor = helpEntries(cli(['monitor', '--help']).out);
  assert.match(monitor.get('--audit-topic')!, /\(required\)/);
  assert.match(monitor.get('--interval')!, /\(default: 1\)/);
  const report = helpEntries(cli(['report', '--help']).out);
  assert.match(report.get('--samples')!, /\(default: 24\)/);
});

test('prompt --caption-file - reads the caption from stdin, byte for byte', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-stdin-'));
  const captions = ['A dog on a beach.', '\uFEFFÜnïcödé 🐕\r\nline two\n', ''];
  for (const caption of captions) {
    const file = join(dir, 'caption.txt');
    writeFileSync(file, caption);
    const args = ['prompt', '--format', 'qwen_instruct', '--metric', 'itm', '--caption-file'];
    const fromFile = cli([...args, file]);
    assert.equal(fromFile.code, 0, fromFile.err);
    const fromStdin = cli([...args, '-'], { input: Buffer.from(caption, 'utf8') });
    assert.equal(fromStdin.code, 0, fromStdin.err);
    assert.equal(fromStdin.out, fromFile.out);
    assert.ok(fromStdin.out.includes(caption), JSON.stringify(caption));
  }
  const missing = cli(['prompt', '--format', 'llava_v1', '--metric', 'itm', '--caption-file', join(dir, 'none')]);
  assert.equal(missing.code, 2, missing.err);
  assertOneLineError(missing.err, 'input_unreadable');
});

test('SIGINT drains the run and exits 130', async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-sigint-')), 'out');
  // stdin stays open, so the run is still reading when the signal comes.
  const child = spawn(process.execPath, [
    bin,
    'filter',
    '--input',
    '-',
    '--out',
    out,
    '--model',
    model,
    '--progress',
    'none',
  ]);
  let err = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  child.stderr.on('data', (d: Buffer) => {
    const before = err;
    err += d.toString();
    // The model has loaded once the scorer logs it: the signal handlers are in place by then.
    if (!/model loaded/.test(before) && /model loaded/.test(err)) child.kill('SIGINT');
  });
  const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await exited;
  clearTimeout(deadline);
  assert.equal(code, 130, err);
  assert.ok(existsSync(join(out, 'summary.json')));
});

test('worker: a flag is read as its setting directly (no environment round trip), and an error names the flag', () => {
  const env = { ...process.env, MLMF_BATCH_SIZE: '4', AWS_EC2_METADATA_DISABLED: 'true' };
  const bad = cli(['worker', '--batch-size', 'abc', '--bucket', 'b', '--sqs-queue-url', 'http://127.0.0.1:1/q'], {
    env,
  });
  assert.equal(bad.code, 2, bad.err);
  const line = assertOneLineError(bad.err, 'worker_config');
  assert.match(line, /--batch-size \(MLMF_BATCH_SIZE\) must be a non-negative integer, got "abc"/);
  // The variable alone is named as the variable.
  const fromEnv = cli(['worker', '--bucket', 'b', '--sqs-queue-url', 'http://127.0.0.1:1/q'], {
    env: { ...env, MLMF_SHARD_SAMPLES: 'many' },
  });
  assert.equal(fromEnv.code, 2, fromEnv.err);
  assert.match(assertOneLineError(fromEnv.err, 'worker_config'), /MLMF_SHARD_SAMPLES must be a non-negative integer/);
});

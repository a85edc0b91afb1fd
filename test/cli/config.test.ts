/**
 * `mlm-filter filter --config`, `--print-config`, `--dry-run`, fraction thresholds and `--version`, through the real
 * CLI on the committed tiny model: a config the schema (schema/filter-config.schema.json) refuses is ONE `bad_config`
 * line naming the key, exit 2, and --out is left as it was (missing, or empty), so the corrected re-run works.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { formatThreshold } from '../../lib/policy/index.ts';
import { policyFromConfig, type WorkerConfig } from '../../lib/worker/config.ts';
import { readRun } from '../helpers/cli-output.ts';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
const input = join(root, 'sample/pairs.jsonl');
const VERSION = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
const skip = !existsSync(model) && 'tiny model fixture missing';

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const filter = (out: string, ...flags: string[]) =>
  cli(['filter', '--input', input, '--out', out, '--model', model, '--progress', 'none', ...flags]);

/** stderr less the launcher's tsx note and the scorer's JSON log lines. */
const errLines = (err: string) =>
  err.split('\n').filter((l) => l && !/^mlm-filter: running /.test(l) && !l.startsWith('{'));

function oneLineError(r: { code: number | null; err: string }, code: string, exit = 2): string {
  assert.equal(r.code, exit, r.err);
  const lines = errLines(r.err);
  assert.equal(lines.length, 1, `expected one line, got:\n${r.err}`);
  assert.match(lines[0]!, new RegExp(`^mlm-filter: error \\[${code}\\]: `));
  return lines[0]!;
}

function writeConfig(dir: string, name: string, config: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof config === 'string' ? config : JSON.stringify(config));
  return path;
}

test('a config the schema refuses is one bad_config line naming the key, exit 2, --out untouched', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
  const cases: [config: unknown, message: RegExp][] = [
    [{ thresholds: ['itm>=50'] }, /unknown key thresholds \(did you mean policy\.thresholds\?\)/],
    [
      { policy: { thresholds: [{ metric: 'itm', op: '=>', value: 'fifty' }] } },
      /policy\.thresholds\[0\]\.op must be one of >=, >, <=, <, got "=>"; policy\.thresholds\[0\]\.value must be a number, got "fifty"/,
    ],
    [{ policy: { combine: 'xor' } }, /policy\.combine must be one of and, or, got "xor"/],
    [{ concurrency: 0 }, /concurrency must be >= 1, got 0/],
    [{ intake: { connectTimeoutMs: 100, colour: 'red' } }, /unknown key intake\.colour/],
    [{ batchSize: 4 }, /unknown key batchSize \(did you mean scorer\.batchSize\?\)/],
    [{ out: 'elsewhere' }, /unknown key out \(give --out on the command line\)/],
    [
      { policy: { thresholds: ['itm>=500'] } },
      /policy\.thresholds\[0\]: threshold itm>=500: value must be within 0\.\.100/,
    ],
    [{ policy: { thresholds: ['itm=>50'] } }, /policy\.thresholds\[0\]: "itm=>50" is not METRIC OP VALUE/],
    [{ policy: { thresholds: [] } }, /policy\.thresholds must not be empty/],
    [{ metrics: 'itm,beauty' }, /metrics: unknown metric 'beauty'/],
    [{ intake: { allowAddresses: ['nope/99'] } }, /intake\.allowAddresses\[0\]: "nope\/99": not a valid CIDR/],
    [{ topFraction: { fraction: 1.5 } }, /topFraction\.fraction must be <= 1, got 1\.5/],
    [[1], /the top level must be an object, got \[1\]/],
    ['{"policy": ', /cannot read config .*JSON/],
  ];
  cases.forEach(([config, message], i) => {
    const path = writeConfig(dir, `c${i}.json`, config);
    const missing = join(dir, `missing-${i}`);
    const line = oneLineError(filter(missing, '--config', path), 'bad_config');
    assert.match(line, message, `case ${i}: ${JSON.stringify(config)}`);
    assert.ok(line.includes(path), `the line names the file: ${line}`);
    assert.equal(existsSync(missing), false, `case ${i} created --out`);
  });
  // A device or a runaway pipe is cut at 1 MiB, not read into memory; an editor's byte-order mark is accepted.
  assert.match(
    oneLineError(filter(join(dir, 'z'), '--config', '/dev/zero'), 'bad_config'),
    /larger than 1048576 bytes/,
  );
  const bom = writeConfig(dir, 'bom.json', '\uFEFF{"concurrency": 3}');
  assert.equal(JSON.parse(filter(join(dir, 'z'), '--config', bom, '--print-config').out).concurrency, 3);
  // An existing empty --out stays empty (each run costs a process start: two cases are enough).
  for (const config of [{ concurrency: 0 }, { policy: { combine: 'xor' } }]) {
    const empty = mkdtempSync(join(dir, 'empty-'));
    oneLineError(filter(empty, '--config', writeConfig(dir, 'again.json', config)), 'bad_config');
    assert.deepEqual(readdirSync(empty), [], `${JSON.stringify(config)} wrote into --out`);
  }
});

test(
  '{"concurrency": 0} leaves --out as it was; the corrected config runs there, applies its policy and records the version',
  { skip },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
    const out = join(dir, 'out');
    const bad = writeConfig(dir, 'bad.json', { concurrency: 0, policy: { thresholds: ['itm>=50'], combine: 'or' } });
    oneLineError(filter(out, '--config', bad), 'bad_config');
    assert.equal(existsSync(out), false);

    const good = writeConfig(dir, 'good.json', { concurrency: 2, policy: { thresholds: ['itm>=50'], combine: 'or' } });
    const r = filter(out, '--config', good);
    assert.equal(r.code, 0, r.err);
    const run = readRun(out);
    // The file's policy is the one applied (it was silently dropped before: the defaults ran).
    assert.deepEqual(run.summary.policy, { thresholds: [{ metric: 'itm', op: '>=', value: 50 }], combine: 'or' });
    for (const sample of run.curated) assert.ok(sample.scores.itm! >= 50, JSON.stringify(sample.scores));
    assert.ok(run.curated.length > 0, 'the tiny model keeps some pairs at itm>=50');
    assert.deepEqual(run.summary.tool, { name: 'mlm-filter-stream', version: VERSION });
    for (const sample of run.curated) assert.deepEqual(sample.tool, { name: 'mlm-filter-stream', version: VERSION });
  },
);

test(
  '--threshold itm>=0.5 is refused with the hint before --out is touched; --allow-fraction-thresholds runs it',
  {
    skip,
  },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
    const out = join(dir, 'out');
    const line = oneLineError(filter(out, '--threshold', 'itm>=0.5'), 'bad_threshold');
    assert.match(line, /did you mean itm>=50\?/);
    assert.match(line, /--allow-fraction-thresholds/);
    assert.equal(existsSync(out), false);
    // From a config file too, and with the rounding a float would otherwise show (0.29 x 100 = 28.999999999999996).
    const config = writeConfig(dir, 'fraction.json', { policy: { thresholds: ['odf>=0.29'] } });
    assert.match(oneLineError(filter(out, '--config', config), 'bad_threshold'), /did you mean odf>=29\?/);
    // 0 is a bound on either scale: not refused.
    assert.equal(filter(out, '--threshold', 'itm>=0', '--dry-run').code, 0);

    const r = filter(out, '--threshold', 'itm>=0.5', '--allow-fraction-thresholds');
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(readRun(out).summary.policy.thresholds, [{ metric: 'itm', op: '>=', value: 0.5 }]);
    // The opt-in in the config file works the same.
    const optIn = writeConfig(dir, 'opt-in.json', {
      allowFractionThresholds: true,
      policy: { thresholds: ['itm>=0.5'] },
    });
    assert.equal(filter(join(dir, 'out2'), '--config', optIn, '--dry-run').code, 0);
  },
);

test(
  '--print-config prints the effective options as a valid --config file; flags win; nothing is written',
  {
    skip,
  },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
    const out = join(dir, 'out');
    const config = writeConfig(dir, 'c.json', {
      policy: { thresholds: ['itm>=70'] },
      scorer: { batchSize: 4 },
      concurrency: 3,
    });
    const r = filter(out, '--config', config, '--concurrency', '5', '--combine', 'or', '--print-config');
    assert.equal(r.code, 0, r.err);
    assert.equal(existsSync(out), false);
    const printed = JSON.parse(r.out) as Record<string, unknown>;
    assert.deepEqual(printed.policy, { thresholds: ['itm>=70'], combine: 'or' });
    assert.equal(printed.concurrency, 5);
    assert.deepEqual(printed.scorer, { batchSize: 4 });
    assert.equal(printed.metrics, 'all');
    assert.equal(printed.progress, 'none');
    // Fed back as --config, it is accepted and prints the same options.
    const again = filter(out, '--config', writeConfig(dir, 'printed.json', r.out), '--print-config');
    assert.equal(again.code, 0, again.err);
    assert.deepEqual(JSON.parse(again.out), printed);
    // Defaults filled in when nothing is given.
    const bare = JSON.parse(filter(out, '--print-config').out) as { policy: unknown; concurrency: number };
    assert.deepEqual(bare.policy, { thresholds: ['itm>=66', 'odf>=20'], combine: 'and' });
    assert.equal(bare.concurrency, 32);
  },
);

test(
  '--dry-run lists what would be read and written, makes the checks a run makes, and writes nothing',
  { skip },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
    const out = join(dir, 'out');
    const r = filter(out, '--dry-run', '--threshold', 'su>=40');
    assert.equal(r.code, 0, r.err);
    assert.equal(existsSync(out), false);
    assert.match(r.out, /^dry run: nothing was scored or written$/m);
    assert.ok(r.out.includes(`would read: 1 input(s), in this order\n  JSONL ${input}`), r.out);
    assert.ok(r.out.includes(`model: ${model} (qwen_instruct, fp32)`), r.out);
    assert.match(r.out, /^policy: su>=40; metrics: itm,odf,ctq,su$/m);
    assert.ok(r.out.includes(`would write: ${out}/curated/ (WebDataset shards), ${out}/rejects.jsonl`), r.out);

    // The errors a run would meet before writing: an input that is not there, a model that is not one, a used --out.
    oneLineError(
      cli(['filter', '--input', join(dir, 'nope.jsonl'), '--out', out, '--model', model, '--dry-run']),
      'input_unreadable',
    );
    oneLineError(cli(['filter', '--input', input, '--out', out, '--model', dir, '--dry-run']), 'model_invalid');
    assert.equal(existsSync(out), false);
    mkdirSync(out);
    writeFileSync(join(out, 'notes.txt'), 'mine');
    oneLineError(filter(out, '--dry-run'), 'output_not_empty');
    assert.deepEqual(readdirSync(out), ['notes.txt']);
  },
);

test('--version on mlm-filter and on every command prints the package version, exit 0', () => {
  const help = cli(['--help']);
  const commands = [...help.out.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]!).filter((c) => c !== 'help');
  assert.ok(commands.includes('filter') && commands.includes('worker') && commands.length >= 5, help.out);
  const nested = [['job', 'status', '--version']];
  for (const args of [['--version'], ['-V'], ...commands.map((c) => [c, '--version']), ...nested]) {
    const r = cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
    assert.equal(r.out, `${VERSION}\n`, args.join(' '));
  }
  // Before the required options are checked.
  assert.equal(cli(['filter', '--version']).out, `${VERSION}\n`);
});

test("README's example config is accepted as written", { skip }, () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('#### Configuration file'));
  const example = /```json\n([\s\S]*?)\n```/.exec(section)![1]!;
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
  const r = filter(join(dir, 'out'), '--config', writeConfig(dir, 'readme.json', example), '--print-config');
  assert.equal(r.code, 0, r.err);
  const printed = JSON.parse(r.out) as { policy: unknown; scorer: unknown };
  assert.deepEqual(printed.policy, { thresholds: ['itm>=50', 'odf>=20'], combine: 'and' });
  assert.deepEqual(printed.scorer, { batchSize: 16 });
});

test('worker: a fraction in --thresholds stops it at start with the hint; MLMF_ALLOW_FRACTION_THRESHOLDS opts in', () => {
  const args = ['worker', '--bucket', 'b', '--sqs-queue-url', 'http://127.0.0.1:1/q', '--audit-topic', 'a'];
  const r = cli([...args, '--brokers', '127.0.0.1:1', '--health-port', '0', '--thresholds', 'itm>=0.5,odf>=20']);
  const line = oneLineError(r, 'worker_config');
  assert.match(
    line,
    /MLMF_THRESHOLDS: threshold itm>=0\.5 .*did you mean itm>=50\? \(MLMF_ALLOW_FRACTION_THRESHOLDS=true/,
  );
  const config = { thresholds: 'itm>=0.5,odf>=20' } as WorkerConfig;
  assert.throws(() => policyFromConfig(config), /did you mean itm>=50\?/);
  const policy = policyFromConfig({ ...config, allowFractionThresholds: true });
  assert.deepEqual(policy.thresholds.map(formatThreshold), ['itm>=0.5', 'odf>=20']);
});

test(
  'an option the intake refuses fails the run before --out is touched: --overwrite keeps the previous run',
  {
    skip,
  },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
    // The tiny model with nearest resampling, which the native JPEG path does not have.
    const nearest = join(dir, 'model');
    mkdirSync(nearest);
    for (const name of readdirSync(model)) symlinkSync(join(model, name), join(nearest, name));
    const pre = JSON.parse(readFileSync(join(model, 'preprocessor_config.json'), 'utf8')) as Record<string, unknown>;
    rmSync(join(nearest, 'preprocessor_config.json'));
    writeFileSync(join(nearest, 'preprocessor_config.json'), JSON.stringify({ ...pre, resample: 0 }));
    const run = (out: string, ...flags: string[]) =>
      cli(['filter', '--input', input, '--out', out, '--model', nearest, '--progress', 'none', ...flags]);

    const out = join(dir, 'out');
    assert.equal(run(out).code, 0);
    const before = readFileSync(join(out, 'summary.json'), 'utf8');
    const line = oneLineError(run(out, '--overwrite', '--jpeg-decoder', 'native'), 'invalid_option');
    assert.match(line, /jpegDecoder native is not available: the native path has no nearest resampling/);
    assert.equal(readFileSync(join(out, 'summary.json'), 'utf8'), before);
    const fresh = join(dir, 'fresh');
    oneLineError(run(fresh, '--jpeg-decoder', 'native'), 'invalid_option');
    assert.equal(existsSync(fresh), false);
  },
);

test('every key the schema allows reaches the run: a config setting all of them is printed back whole', () => {
  const every = {
    inputFormat: 'jsonl',
    policy: { thresholds: ['itm>=40', 'su>=0.5'], combine: 'or' },
    allowFractionThresholds: true,
    metrics: ['itm', 'ctq', 'su'],
    topFraction: { fraction: 0.5, metric: 'ctq' },
    intake: {
      userAgent: 'test-crawler/1.0 (ops@example.com)',
      connectTimeoutMs: 1001,
      headersTimeoutMs: 1002,
      bodyTimeoutMs: 1003,
      totalTimeoutMs: 1004,
      maxBytes: 1005,
      maxRedirects: 1,
      retries: 0,
      retryBaseDelayMs: 11,
      maxRetryDelayMs: 12,
      perHostConcurrency: 2,
      allowAddresses: ['127.0.0.1:9000', '10.0.0.0/8'],
      maxPixels: 1006,
      minSide: 3,
      maxAspectRatio: 4.5,
      maxIdleTensors: 0,
      keepSharpCache: true,
      jpegDecoder: 'sharp',
      jpegDctScaling: true,
      jpegMaxScans: 50,
    },
    scorer: {
      batchSize: 3,
      metrics: ['itm'],
      workers: 1,
      referenceMode: true,
      whitespaceLead: false,
      executionProvider: 'cpu',
      fallbackToCpu: false,
      intraOpThreads: 2,
      interOpThreads: 1,
      dtype: 'fp32',
      profilePrefix: 'prof',
    },
    pair: { maxCaptionChars: 100, maxRecordBytes: 2000, maxMetadataDepth: 4, maxMetadataBytes: 500 },
    concurrency: 3,
    maxSampleBytes: 4000,
    maxPendingBytes: 8000,
    samplesPerShard: 5,
    progress: 'log',
    resume: true,
    overwrite: false,
    breakLock: true,
    scoreCache: 'score-cache-dir',
    scoreCacheMaxGb: 2.5,
    dedupeImages: 'near:6',
  };
  const schema = JSON.parse(readFileSync(join(root, 'schema/filter-config.schema.json'), 'utf8'));
  const keyPaths = (s: { properties?: Record<string, object> }, prefix = ''): string[] =>
    Object.entries(s.properties ?? {}).flatMap(([k, sub]) => [`${prefix}${k}`, ...keyPaths(sub, `${prefix}${k}.`)]);
  const given = (o: object, prefix = ''): string[] =>
    Object.entries(o).flatMap(([k, v]) => [
      `${prefix}${k}`,
      ...(v && typeof v === 'object' && !Array.isArray(v) ? given(v, `${prefix}${k}.`) : []),
    ]);
  assert.deepEqual(given(every).sort(), keyPaths(schema).sort(), 'this config sets every key of the schema');

  const dir = mkdtempSync(join(tmpdir(), 'mlmf-config-'));
  const r = cli(
    ['filter', '--input', input, '--out', join(dir, 'out'), '--model', model, '--config'].concat(
      writeConfig(dir, 'every.json', every),
      '--print-config',
    ),
  );
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(JSON.parse(r.out), { ...every, policy: { thresholds: ['itm>=40', 'su>=0.5'], combine: 'or' } });
});

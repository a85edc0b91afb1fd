/**
 * The README walkthrough ("Walkthrough: a local worker filtering published pairs"), run as it is written: topics and
 * bucket created, the sample published, a worker with the tiny model filtering it into the local S3 bucket, the
 * monitor waiting for the decisions, the worker drained. Two substitutions only: the names get a unique suffix (the
 * services are shared by every test), and `services.sh up` runs as `services.sh status` (the same probe of the running
 * services; `up` would also resume a server another test holds stopped). MLMF_DOCTEST_SERVICES_UP=1 runs `up` itself.
 * `mlm-filter` is on PATH as `npm link` puts it there: a symlink to bin/mlm-filter.js.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseRecord } from '../../lib/pair/index.ts';
import { getBytes, getJson, listAll, needServices, s3Client, uniq } from '../stream/helpers.ts';
import { readmeBlock } from './readme-blocks.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const skip = await needServices('kafka', 's3');

describe('README walkthrough', { skip }, () => {
  const name = uniq('mlmf-try');
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-walkthrough-'));
  const log = join(ROOT, `${name}-worker.log`);
  after(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(log, { force: true });
  });

  it('runs every command of the block and leaves the accepted pairs in the bucket', async () => {
    const block = readmeBlock('#### Walkthrough: a local worker filtering published pairs', 'sh');
    assert.match(block, /^bash scripts\/services\.sh up$/m);
    const script = block
      .replaceAll('mlmf-try', name)
      .replace(
        /^bash scripts\/services\.sh up$/m,
        process.env.MLMF_DOCTEST_SERVICES_UP === '1' ? '$&' : 'bash scripts/services.sh status',
      );
    writeFileSync(join(dir, 'walkthrough.sh'), script);
    symlinkSync(join(ROOT, 'bin/mlm-filter.js'), join(dir, 'mlm-filter'));
    const child = spawn('bash', ['-euo', 'pipefail', join(dir, 'walkthrough.sh')], {
      cwd: ROOT,
      env: { ...process.env, PATH: `${dir}:${process.env.PATH}`, NO_COLOR: '1', AWS_EC2_METADATA_DISABLED: 'true' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 280_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(timer);
    const workerLog = readFileSync(log, 'utf8');
    assert.equal(code, 0, `${out}\n${err}\n${workerLog}`);

    // The sample: 14 lines, two of them broken (skipped by publish with their lines).
    const lines = readFileSync(join(ROOT, 'sample/pairs.jsonl'), 'utf8').split('\n').filter(Boolean);
    const valid = lines.flatMap((l) => {
      try {
        return [parseRecord({ raw: Buffer.from(l), origin: { kind: 'file', path: '', line: 0 } }).id];
      } catch {
        return [];
      }
    });
    assert.equal(valid.length, 12);
    assert.match(out, new RegExp(`12 records published to Kafka topic ${name}\\.pairs, 2 invalid skipped`));
    assert.match(err, /pairs\.jsonl:11: skipped: /);
    // The monitor's last view: every published pair decided.
    const frames = out.split('mlm-filter monitor').slice(1);
    const last = frames[frames.length - 1]!;
    const m = /events (\d+)\s+accepted (\d+)\s+rejected (\d+)/.exec(last);
    assert.ok(m, last);
    assert.equal(Number(m[2]) + Number(m[3]), 12, last);
    const accepted = Number(m[2]);

    // The worker drained and stopped by itself on the first SIGINT, having read the 12 records.
    const stopped = workerLog
      .split('\n')
      .filter((l) => l.includes('"worker stopped"'))
      .map((l) => JSON.parse(l) as { records: number; accepted: number });
    assert.equal(stopped.length, 1, workerLog);
    assert.equal(stopped[0]!.records, 12);
    assert.equal(stopped[0]!.accepted, accepted);

    // The bucket holds exactly the accepted pairs, as indexed WebDataset shards.
    const s3 = s3Client();
    try {
      const keys = (await listAll(s3, `${name}-curated`)).map((o) => o.Key!);
      const indexes = keys.filter((k) => k.endsWith('.index.json'));
      let samples = 0;
      for (const k of indexes) {
        const index = (await getJson(s3, `${name}-curated`, k)) as { samples: { key: string }[] };
        samples += index.samples.length;
        const tar = await getBytes(s3, `${name}-curated`, k.replace(/\.index\.json$/, '.tar'));
        assert.ok(tar.length > 0);
      }
      assert.equal(samples, accepted, keys.join(', '));
    } finally {
      s3.destroy();
    }
  });
});

/** What a `mlm-filter filter` run wrote to its --out directory, read back for CLI tests. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AuditEvent } from '../../lib/formats/audit-event.ts';
import type { CuratedSampleMeta } from '../../lib/formats/curated-sample.ts';
import type { ShardIndex } from '../../lib/sinks/webdataset.ts';

/** The curated samples' `.json` members, the audit events (and their raw text) and summary.json. */
export function readRun(out: string) {
  const curatedDir = join(out, 'curated');
  const curated = readdirSync(curatedDir)
    .filter((n) => n.endsWith('.index.json'))
    .flatMap((n) => {
      const index = JSON.parse(readFileSync(join(curatedDir, n), 'utf8')) as ShardIndex;
      const tar = readFileSync(join(curatedDir, `${index.shard}.tar`));
      return index.samples.map((s) => {
        const m = s.members.json!;
        return JSON.parse(tar.subarray(m.offset, m.offset + m.size).toString('utf8')) as CuratedSampleMeta;
      });
    });
  const rejectsText = readFileSync(join(out, 'rejects.jsonl'), 'utf8');
  const rejects = rejectsText
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEvent);
  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
  return { curated, rejects, rejectsText, summary };
}

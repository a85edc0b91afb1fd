/**
 * `--input s3://bucket/prefix/` against the local S3 server (moto): a prefix of more keys than one listing page
 * (1000) is read whole, keys with odd characters (space, plus, percent, braces, `?`, `#`, non-ASCII) keep their
 * exact names, and a prefix written without its slash is refused with the hint.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { resolveInputs } from '../../lib/inputs/resolve.ts';
import { FilterError } from '../../lib/types.ts';
import { createBucket, needServices, s3Client, uniq } from '../stream/helpers.ts';

const ODD = ['a b.tar', 'a+b.tar', 'c%20d.tar', 'br{1,2}.tar', 'q?x.tar', 'h#x.tar', 'é.tar', 'sp .tar'];

test(
  'an s3:// prefix over one listing page, with odd key names, lists every key exactly',
  { skip: await needServices('s3') },
  async () => {
    const s3 = s3Client();
    const bucket = uniq('mlmf-prefix');
    await createBucket(s3, bucket);
    const keys = [...Array.from({ length: 1003 }, (_, i) => `k${String(i).padStart(5, '0')}.jsonl`), ...ODD];
    let next = 0;
    const put = async () => {
      for (let i = next++; i < keys.length; i = next++) {
        const Body = keys[i]!.endsWith('.tar')
          ? Buffer.alloc(0)
          : '{"id":"x","url":"https://e.com/a.jpg","caption":"c"}\n';
        await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `pool/${keys[i]}`, Body }));
      }
    };
    await Promise.all(Array.from({ length: 16 }, put));
    const ctx = { s3: () => s3, http: () => assert.fail('no http') };
    try {
      const items = await resolveInputs([`s3://${bucket}/pool/`], ctx);
      assert.equal(items.length, keys.length);
      assert.deepEqual(
        items.map((i) => (i.location.kind === 's3' ? i.location.loc.key : '')),
        keys.map((k) => `pool/${k}`).sort(),
      );
      assert.ok(items.every((i) => i.name === `s3://${bucket}/${(i.location as { loc: { key: string } }).loc.key}`));
      await assert.rejects(resolveInputs([`s3://${bucket}/pool`], ctx), (err: FilterError) => {
        assert.equal(err.code, 'input_unreadable');
        assert.match(err.message, new RegExp(`\\(the shards under a prefix: s3://${bucket}/pool/\\)`));
        return true;
      });
    } finally {
      s3.destroy();
    }
  },
);

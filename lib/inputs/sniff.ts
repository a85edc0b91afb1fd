/**
 * What an input's first bytes say it is. Extensions lie (a `.jsonl` that is a tar, a `.tar.gz` that was never
 * compressed), and parsing binary bytes as JSONL turns one wrong flag into thousands of `invalid_record` rejects:
 * every input is recognised by its content, and one that is none of these is refused by name.
 */

export type Sniffed = 'tar' | 'jsonl' | 'gzip' | 'zstd' | 'empty' | 'unknown';

/**
 * Bytes read from an input's start to recognise it: one tar header block is what the sniff looks at; the rest lets
 * a gzip-compressed input's first 512 bytes be decompressed from it.
 */
export const HEAD_BYTES = 4096;

export function sniff(bytes: Buffer): Sniffed {
  const head = bytes.subarray(0, 512);
  if (head.length === 0) return 'empty';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (isTarHeader(head)) return 'tar';
  // Only end-of-archive blocks: an empty tar (`tar cf x.tar --files-from /dev/null`, a shard writer that kept no
  // sample). All that was read must be zeros, not just the first block.
  if (head.length === 512 && bytes.every((b) => b === 0)) return 'tar';
  if (looksLikeJsonl(head)) return 'jsonl';
  return 'unknown';
}

/** A ustar/GNU magic, or an old (v7) header whose checksum adds up. */
function isTarHeader(head: Buffer): boolean {
  if (head.length < 512) return false;
  const magic = head.toString('latin1', 257, 262);
  if (magic === 'ustar') return true;
  const stored = parseInt(
    head
      .toString('latin1', 148, 156)
      .replace(/[\0 ]+$/, '')
      .trim(),
    8,
  );
  if (!Number.isFinite(stored) || head[0] === 0) return false;
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : head[i]!;
  return sum === stored;
}

/**
 * JSONL: the first record starts with `{` after optional blank space (and a UTF-8 BOM), and what was read has no
 * NUL and decodes as UTF-8 (a sequence cut at the end of the sniffed bytes is allowed).
 */
function looksLikeJsonl(head: Buffer): boolean {
  let i = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf ? 3 : 0;
  while (i < head.length && (head[i] === 0x20 || head[i] === 0x09 || head[i] === 0x0a || head[i] === 0x0d)) i++;
  if (i < head.length && head[i] !== 0x7b) return false;
  if (head.includes(0)) return false;
  return validUtf8Prefix(head);
}

function validUtf8Prefix(buf: Buffer): boolean {
  // The last 3 bytes may be the start of a sequence the sniffed window cut: decode without them.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  try {
    decoder.decode(buf, { stream: true });
    return true;
  } catch {
    return false;
  }
}

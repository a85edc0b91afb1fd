/** README code blocks as the doc tests run them: the first fenced block of a language after a heading. */
import { readFileSync } from 'node:fs';

const README = new URL('../../README.md', import.meta.url);

/** The body of the first ```lang block after the line `heading` (exact), up to its closing fence. */
export function readmeBlock(heading: string, lang: string): string {
  const lines = readFileSync(README, 'utf8').split('\n');
  const at = lines.indexOf(heading);
  if (at < 0) throw new Error(`README has no heading ${JSON.stringify(heading)}`);
  const open = lines.findIndex((l, i) => i > at && l === '```' + lang);
  const next = lines.findIndex((l, i) => i > at && /^#{1,4} /.test(l));
  if (open < 0 || (next >= 0 && next < open)) throw new Error(`no \`\`\`${lang} block under ${heading}`);
  const close = lines.findIndex((l, i) => i > open && l === '```');
  return lines.slice(open + 1, close).join('\n') + '\n';
}

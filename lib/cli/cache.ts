/**
 * `mlm-filter cache stats|clear --score-cache DIR`: the size of a `filter --score-cache` store and the way to bound
 * it (lib/cache/admin.ts). lib/cli/main.ts mounts them with `addCacheCommands(program)`; LMDB is loaded by the
 * actions only.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseFrom } from '../monitor/from.ts';
import { shownDefault } from './usage.ts';

const olderThanArg = (value: string) => {
  const t = parseFrom(value);
  if (t === undefined || t === 'earliest') {
    throw new InvalidArgumentError('give a duration (30d, 12h) or an ISO date/time');
  }
  return t;
};

const mib = (bytes: number) =>
  bytes < 2 ** 20 ? `${(bytes / 1024).toFixed(0)} KiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** Where the commands print (tests pass their own). */
export interface CacheIo {
  readonly stdout?: { write(s: string): unknown };
}

export function addCacheCommands(program: Command, io: CacheIo = {}): Command {
  const stdout = io.stdout ?? process.stdout;
  const cache = program.command('cache').description('inspect or clear a `filter --score-cache` directory');
  cache
    .command('stats')
    .description('entries, size on disk, oldest and newest entry of a score cache (reads every entry once)')
    .requiredOption('--score-cache <dir>', 'the score cache directory')
    .addOption(shownDefault(new Option('--json', 'print the figures as one JSON object'), 'off'))
    .action(async (flags: { scoreCache: string; json?: boolean }) => {
      const { cacheStats } = await import('../cache/admin.ts');
      const s = await cacheStats(flags.scoreCache);
      if (flags.json) {
        stdout.write(JSON.stringify(s) + '\n');
        return;
      }
      const lines = [
        `score cache ${s.dir}: ${s.entries} entries${s.otherKeys ? ` (and ${s.otherKeys} other keys)` : ''}` +
          (s.images ? `, ${s.images} accepted images (--dedupe-images)` : ''),
        `  on disk: ${mib(s.diskBytes)} (files ${mib(s.fileBytes)}; pages used ${mib(s.usedBytes)}, free ones reused)`,
        s.entries ? `  first scored: oldest ${s.oldest}, newest ${s.newest}` : '  no entries',
        s.openBy ? `  open in ${s.openBy} other process(es) now` : '  not open in another process now',
      ];
      stdout.write(lines.join('\n') + '\n');
    });
  cache
    .command('clear')
    .description(
      'remove every entry of a score cache (its files, when no run has it open), or with --older-than only old ones',
    )
    .requiredOption('--score-cache <dir>', 'the score cache directory')
    .addOption(
      shownDefault(
        new Option(
          '--older-than <age>',
          'remove only entries first scored before this: a duration ago (30d, 12h) or an ISO date/time',
        ),
        'every entry',
      ).argParser(olderThanArg),
    )
    .action(async (flags: { scoreCache: string; olderThan?: number }) => {
      const { clearCache } = await import('../cache/admin.ts');
      const r = await clearCache(flags.scoreCache, { olderThan: flags.olderThan });
      const dir = flags.scoreCache;
      const said = {
        none: `no score cache in ${dir}: nothing to clear`,
        deleted: `cleared ${dir}: ${r.removed} entries, files removed`,
        emptied:
          `cleared ${dir}: ${r.removed} entries removed inside the store` +
          (r.openBy ? ` (open in ${r.openBy} other process(es): its runs see misses from now on)` : '') +
          '; the file keeps its size and LMDB reuses the freed pages',
      };
      stdout.write(said[r.mode] + '\n');
    });
  return program;
}

/**
 * One run per --out directory. A run holds `<out>/.mlm-filter.lock` (JSON: pid, host, start time, command) from
 * before it looks at the directory until it exits; a second run on the same directory is refused with
 * `output_locked`, naming the holder.
 *
 * Why not a library (proper-lockfile): it decides staleness by the lock's mtime, refreshed by a timer, so a run
 * paused past the stale time (SIGSTOP, a frozen host) loses its lock while it lives; and it is one more dependency.
 * Here the lock is created whole and exclusively (written to a temp file, then link(2)ed to its name, which fails
 * when the name exists, symlinks included), and it is stale only when its holder provably is gone: a pid that no
 * longer runs on this same host. A lock of another host (a shared filesystem) is never judged from here: it is
 * refused unless `--break-lock` says its holder is gone. Taking a stale lock over is guarded by a second exclusive
 * file (`.mlm-filter.lock.takeover`), so two runs that both find the same stale lock cannot both take it.
 *
 * The lock is released on every exit that runs JavaScript: the run's end or error (release()), and process.exit or
 * an uncaught exception (an 'exit' hook), such as the second signal's immediate exit. A kill -9 leaves a stale lock,
 * which the next run takes over with a note.
 */
import { closeSync, constants, openSync, readFileSync, rmdirSync, unlinkSync } from 'node:fs';
import { link, mkdir, open, rmdir, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { FilterError } from '../types.ts';

export const LOCK_NAME = '.mlm-filter.lock';
const TAKEOVER_NAME = `${LOCK_NAME}.takeover`;
/** The lock's own files, which a run's listing of --out leaves out. */
export const LOCK_ENTRY = /^\.mlm-filter\.lock(\.takeover|\.tmp-\d+)?$/;

/** What the lock file says about its holder. */
export interface LockHolder {
  readonly pid: number;
  readonly host: string;
  readonly startedAt: string;
  readonly command: string;
}

export interface LockOptions {
  /** Take over a lock held on another host, or one that is not readable (the user says its holder is gone). */
  readonly breakLock?: boolean;
  /** Told when a stale lock is taken over. */
  readonly note?: (message: string) => void;
  readonly command?: string;
}

const NOFOLLOW_READ = constants.O_RDONLY | constants.O_NOFOLLOW;
/** A lock this tool writes is ~150 bytes; a bigger file is not read. */
const LOCK_MAX_BYTES = 4096;
const errno = (err: unknown) => (err as NodeJS.ErrnoException).code;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, as another user.
    return errno(err) === 'EPERM';
  }
}

/** USER_HZ: the unit of /proc's start times on Linux (fixed at 100 on every architecture Node runs on). */
const USER_HZ = 100;

/** When process `pid` started, ms since the epoch, or undefined where that cannot be read (not Linux). */
function processStart(pid: number): number | undefined {
  if (pid === process.pid) return performance.timeOrigin;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after "pid (comm) " start at field 3; starttime is field 22.
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    const btime = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1]);
    return Number.isFinite(ticks) && Number.isFinite(btime) ? btime * 1000 + (ticks * 1000) / USER_HZ : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether the holder of a lock taken on this host still runs: its pid is alive and did not start after the lock was
 * taken (a pid reused since: by a container's next process, say, or after a reboot). One second of slack: /proc's
 * boot time has whole seconds.
 */
function holderRuns(h: LockHolder): boolean {
  if (!alive(h.pid)) return false;
  const started = processStart(h.pid);
  const locked = Date.parse(h.startedAt);
  return started === undefined || !Number.isFinite(locked) || started <= locked + 1000;
}

/** The holder a lock file names, or why it names none (not a regular file, not our JSON). */
async function readHolder(path: string): Promise<LockHolder | { unreadable: string }> {
  let text: string;
  try {
    const fh = await open(path, NOFOLLOW_READ);
    try {
      const st = await fh.stat();
      if (!st.isFile()) return { unreadable: 'it is not a regular file' };
      if (st.size > LOCK_MAX_BYTES) return { unreadable: `it is ${st.size} bytes` };
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (errno(err) === 'ENOENT') throw err;
    return { unreadable: errno(err) === 'ELOOP' ? 'it is a symlink' : (err as Error).message };
  }
  try {
    const h = JSON.parse(text) as Partial<LockHolder>;
    if (Number.isSafeInteger(h.pid) && h.pid! > 0 && typeof h.host === 'string') {
      return { pid: h.pid!, host: h.host, startedAt: String(h.startedAt), command: String(h.command) };
    }
  } catch {
    // not JSON: reported below
  }
  return { unreadable: 'it is not a lock this tool wrote' };
}

/** The pid a takeover guard holds (a few bytes, never through a symlink), or '?'. */
async function readPid(path: string): Promise<string> {
  try {
    const fh = await open(path, NOFOLLOW_READ);
    try {
      const buf = Buffer.alloc(16);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return /^\d+$/.exec(buf.toString('latin1', 0, bytesRead))?.[0] ?? '?';
    } finally {
      await fh.close();
    }
  } catch {
    return '?';
  }
}

const describe = (h: LockHolder) =>
  `pid ${h.pid} on ${h.host === hostname() ? 'this host' : `host ${h.host}`} since ${h.startedAt} (${h.command})`;

export class OutputLock {
  private released = false;
  private readonly onExit = () => this.releaseSync();

  private constructor(
    private readonly out: string,
    private readonly text: string,
    /** Set when this lock's acquisition created --out: released, it removes it again if still empty. */
    private readonly createdOut: boolean,
  ) {
    process.on('exit', this.onExit);
  }

  get path(): string {
    return join(this.out, LOCK_NAME);
  }

  /** Creates --out when missing and takes its lock, or throws `output_locked` naming the holder. */
  static async acquire(out: string, options: LockOptions = {}): Promise<OutputLock> {
    let created: string | undefined;
    try {
      created = await mkdir(out, { recursive: true });
    } catch (err) {
      throw new FilterError('output_unwritable', `cannot create ${out}: ${(err as Error).message}`, { out });
    }
    const holder: LockHolder = {
      pid: process.pid,
      host: hostname(),
      startedAt: new Date().toISOString(),
      command: options.command ?? 'mlm-filter filter',
    };
    const text = JSON.stringify(holder) + '\n';
    try {
      await OutputLock.take(out, text, options);
    } catch (err) {
      if (created !== undefined) await rmdir(out).catch(() => undefined);
      throw err;
    }
    return new OutputLock(out, text, created !== undefined);
  }

  /** Links a lock file with `text` into place; false when the name exists. */
  private static async create(out: string, text: string): Promise<boolean> {
    const tmp = join(out, `${LOCK_NAME}.tmp-${process.pid}`);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;
    const fh = await open(tmp, flags, 0o644).catch((err: Error) => {
      throw new FilterError('output_unwritable', `cannot write a lock in ${out}: ${err.message}`, { out });
    });
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, join(out, LOCK_NAME));
      return true;
    } catch (err) {
      if (errno(err) === 'EEXIST') return false;
      if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes(errno(err) ?? '')) {
        throw new FilterError('output_unwritable', `cannot lock ${out}: ${(err as Error).message}`, { out });
      }
      return OutputLock.createExclusive(out, text); // a filesystem without hard links
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** The lock created in place with O_EXCL (a crash before its write leaves an empty one: --break-lock). */
  private static async createExclusive(out: string, text: string): Promise<boolean> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    let fh;
    try {
      fh = await open(join(out, LOCK_NAME), flags, 0o644);
    } catch (err) {
      if (errno(err) === 'EEXIST') return false;
      throw new FilterError('output_unwritable', `cannot lock ${out}: ${(err as Error).message}`, { out });
    }
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return true;
  }

  private static async take(out: string, text: string, options: LockOptions): Promise<void> {
    if (await OutputLock.create(out, text)) return;
    const path = join(out, LOCK_NAME);
    const found = await readHolder(path).catch(() => undefined); // vanished: its holder just released it
    if (found) OutputLock.assertStale(out, found, options);
    // Stale (or released meanwhile): take it over under the takeover guard, re-reading it there.
    const guard = join(out, TAKEOVER_NAME);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fh = await open(guard, flags, 0o644).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') {
        throw new FilterError('output_unwritable', `cannot lock ${out}: ${err.message}`, { out });
      }
      const by = await readPid(guard);
      throw new FilterError(
        'output_locked',
        `--out ${out} is being taken over by another run (pid ${by}): if no run is using it, remove ${guard}`,
        { out, lock: guard },
      );
    });
    try {
      await fh.writeFile(String(process.pid));
      await fh.close();
      const again = await readHolder(path).catch(() => undefined);
      if (again) {
        // Another run took the stale lock over between the two reads: this one is live.
        if (JSON.stringify(again) !== JSON.stringify(found)) throw OutputLock.lockedBy(out, again);
        await unlink(path).catch((err: Error) => {
          throw new FilterError('output_locked', `cannot remove the lock ${path}: ${err.message}`, { out, lock: path });
        });
        const what = 'pid' in again ? `the stale lock of ${describe(again)}` : 'an unreadable lock';
        options.note?.(`took over ${what} on ${out}`);
      }
      if (!(await OutputLock.create(out, text))) {
        const now = await readHolder(path).catch(() => undefined);
        throw OutputLock.lockedBy(out, now ?? { unreadable: 'it changed while being taken over' });
      }
    } finally {
      await unlink(guard).catch(() => undefined);
    }
  }

  /** Throws `output_locked` unless a found lock may be taken over. */
  private static assertStale(out: string, found: LockHolder | { unreadable: string }, options: LockOptions): void {
    const local = !('unreadable' in found) && found.host === hostname();
    // A live pid on this host is never taken over, --break-lock or not: it may be a run.
    const stale = local ? !holderRuns(found) : options.breakLock === true;
    if (!stale) throw OutputLock.lockedBy(out, found);
  }

  private static lockedBy(out: string, found: LockHolder | { unreadable: string }): FilterError {
    const path = join(out, LOCK_NAME);
    if ('unreadable' in found) {
      return new FilterError(
        'output_locked',
        `--out ${out} has a lock that cannot be read (${found.unreadable}): if no run is using it, remove ${path} ` +
          'or add --break-lock',
        { out, lock: path },
      );
    }
    const remote = found.host !== hostname();
    const hint = remote
      ? `another host's run cannot be checked from here: once it is gone, add --break-lock`
      : 'wait for it to end, or stop it (a stopped run is taken over)';
    return new FilterError('output_locked', `--out ${out} is in use by ${describe(found)}: ${hint}`, {
      out,
      lock: path,
      holder: found,
    });
  }

  /** Whether the lock file there is still this one (it is never replaced while its holder lives). */
  private ours(): boolean {
    let fd: number | undefined;
    try {
      fd = openSync(this.path, NOFOLLOW_READ);
      return readFileSync(fd, 'utf8') === this.text;
    } catch {
      return false;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /** Removes the lock (and --out when acquiring it created it and nothing was written). */
  release(): Promise<void> {
    this.releaseSync();
    return Promise.resolve();
  }

  private releaseSync(): void {
    if (this.released) return;
    this.released = true;
    process.off('exit', this.onExit);
    if (this.ours()) {
      try {
        unlinkSync(this.path);
      } catch {
        // gone already
      }
    }
    if (this.createdOut) {
      try {
        rmdirSync(this.out); // only when empty: a run that failed before writing leaves no directory behind
      } catch {
        // not empty: the run's output
      }
    }
  }
}

/**
 * The one logger of the project: every stage (pipeline, sources, sinks, Kafka client, producer hub, scorer, GPU
 * sampler, worker, stop handling) takes a `Logger` and nothing else, so a caller wires one object, scoped with
 * `child({ ... })`, instead of adapting a callback per stage.
 *
 * Output: one JSON object per line, `{"ts", "level", "msg", ...context}` -- the worker's format that CloudWatch Logs,
 * the README and the tests read. The worker writes to stdout, libraries and the CLI to stderr (stdout is data there).
 *
 * Own code rather than pino: pino writes numeric levels and `time`, so keeping this format would need its formatters
 * and a custom timestamp on every call site's reader, and it would be a new dependency for ~60 lines that do what is
 * needed here (levels, child contexts, a silent logger, a sink a test can read). A logger never throws: a context that
 * JSON cannot hold (a cycle, a BigInt) is written as far as it can be.
 */
import { inspect } from 'node:util';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogContext = Record<string, unknown>;

/** One call, with the child contexts merged in (the call's own keys win). */
export interface LogEntry {
  readonly level: LogLevel;
  readonly msg: string;
  readonly ctx: LogContext;
}

/** Where entries go: a JSON-lines stream (jsonLines), a test's array, a metric counter (Logger.tap). */
export type LogSink = (entry: LogEntry) => void;

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export class Logger {
  /** @param sink where entries go; undefined: nowhere (see silentLogger) */
  constructor(
    private readonly sink: LogSink | undefined,
    private readonly context: LogContext = {},
  ) {}

  debug(msg: string, ctx?: LogContext): void {
    this.log('debug', msg, ctx);
  }

  info(msg: string, ctx?: LogContext): void {
    this.log('info', msg, ctx);
  }

  warn(msg: string, ctx?: LogContext): void {
    this.log('warn', msg, ctx);
  }

  error(msg: string, ctx?: LogContext): void {
    this.log('error', msg, ctx);
  }

  log(level: LogLevel, msg: string, ctx: LogContext = {}): void {
    this.sink?.({ level, msg, ctx: { ...this.context, ...ctx } });
  }

  /** A logger adding `context` to every entry (a partition, a shard job, a component). */
  child(context: LogContext): Logger {
    return new Logger(this.sink, { ...this.context, ...context });
  }

  /** A logger that also hands every entry to `observer` (the worker counts pipeline errors into a metric). */
  tap(observer: LogSink): Logger {
    const sink = this.sink;
    return new Logger((entry) => {
      observer(entry);
      sink?.(entry);
    }, this.context);
  }
}

/** Writes nothing: the default of library code and what tests pass to quiet a stage. */
export const silentLogger = new Logger(undefined);

export interface JsonLinesOptions {
  /** Lowest level written. Default `info`, `debug` when MLMF_DEBUG is set (read once, here). */
  readonly level?: LogLevel;
}

function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

/** The JSON line of an entry: `ts`, `level`, `msg` first and not overridable by the context. */
export function formatEntry(entry: LogEntry, now = new Date()): string {
  const head = { ts: now.toISOString(), level: entry.level, msg: entry.msg };
  try {
    return JSON.stringify(Object.assign({ ...head }, entry.ctx, head), jsonSafe);
  } catch {
    // A cycle: keep the line parseable and say what the context was.
    return JSON.stringify({ ...head, ctx: inspect(entry.ctx, { depth: 2, breakLength: Infinity }) });
  }
}

/** A sink writing one JSON line per entry to `stream` (process.stderr unless given). */
export function jsonLines(
  stream: { write(chunk: string): unknown } = process.stderr,
  options: JsonLinesOptions = {},
): LogSink {
  const min = RANK[options.level ?? (process.env.MLMF_DEBUG ? 'debug' : 'info')];
  return (entry) => {
    if (RANK[entry.level] >= min) stream.write(formatEntry(entry) + '\n');
  };
}

/** A logger writing JSON lines to `stream` (process.stderr unless given). */
export function jsonLogger(
  stream: { write(chunk: string): unknown } = process.stderr,
  options: JsonLinesOptions = {},
): Logger {
  return new Logger(jsonLines(stream, options));
}

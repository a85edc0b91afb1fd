/**
 * How `mlm-filter` talks about its own command line: a usage error is one line on stderr (the catalog code, what is
 * wrong, the fix, and which --help to read), never the whole help; `--help` marks required options and shows every
 * default. lib/cli/main.ts wires these into commander.
 */
import { printable } from '../backfill/shard-job.ts';
import type { Command, Help, Option } from 'commander';
import { ERRORS, exitCodeOf, type ErrorCode } from '../errors.ts';
import { FilterError } from '../types.ts';

/** Commander's own error codes, as codes of the error catalog. */
const COMMANDER_CODES: Readonly<Record<string, ErrorCode>> = {
  'commander.missingMandatoryOptionValue': 'missing_option',
  'commander.optionMissingArgument': 'missing_option',
  'commander.unknownOption': 'unknown_option',
  'commander.unknownCommand': 'unknown_command',
  'commander.invalidArgument': 'invalid_option',
};

/** The subcommand named on the command line, for the `see mlm-filter <command> --help` pointer. */
function commandPath(program: Command, argv: readonly string[]): string {
  const sub = program.commands.find((c) => c.name() === argv[0] || c.aliases().includes(argv[0] ?? ''));
  return sub ? `${program.name()} ${sub.name()}` : program.name();
}

/** Commander's message without its `error: ` prefix, its suggestion line folded in. */
function commanderMessage(message: string): string {
  return message
    .replace(/^error: /, '')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join(' ');
}

/** The fix for a commander error whose message does not already say it. */
function commanderFix(code: ErrorCode, message: string, program: Command): string {
  const flag = /'(--[^']+)'/.exec(message)?.[1];
  if (code === 'missing_option' && flag) return /argument missing/.test(message) ? `give ${flag}` : `add ${flag}`;
  if (/Did you mean/.test(message)) return '';
  if (code === 'unknown_command') return `commands: ${program.commands.map((c) => c.name()).join(', ')}`;
  if (code === 'unknown_option') return 'remove it or check the spelling';
  if (/too many arguments/.test(message)) {
    return 'options take one value each: quote a value that holds spaces or shell characters such as > < |';
  }
  return '';
}

export interface ErrorReport {
  /** What goes to stderr, newline included. */
  readonly text: string;
  readonly exitCode: number;
}

/**
 * The report of an error that ended a command: one line for commander's parse errors and for coded errors
 * (FilterError), with a pointer to the command's --help for the usage class; a stack only for unexpected errors.
 */
export function reportError(err: unknown, program: Command, argv: readonly string[]): ErrorReport {
  const seeHelp = `see ${commandPath(program, argv)} --help`;
  const e = err as { code?: unknown; message?: string };
  if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
    const code = COMMANDER_CODES[e.code] ?? 'bad_usage';
    const message = commanderMessage(e.message ?? '');
    const fix = commanderFix(code, message, program);
    return { text: `mlm-filter: error [${code}]: ${message}${fix ? ` (${fix})` : ''}; ${seeHelp}\n`, exitCode: 2 };
  }
  if (err instanceof FilterError) {
    const usage = ERRORS[err.code].exit === 'usage';
    // One line, and no terminal controls: messages quote inputs (a record's bytes, an S3 key, a URL).
    const oneLine = printable(err.message.replace(/\s*\n\s*/g, ' '));
    return {
      text: `mlm-filter: error [${err.code}]: ${oneLine}${usage ? `; ${seeHelp}` : ''}\n`,
      exitCode: exitCodeOf(err.code),
    };
  }
  return { text: `mlm-filter: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`, exitCode: 1 };
}

/**
 * `cannot read threshold "itm"` from `--threshold itm>=66` unquoted: the shell took `>=66` as a redirection (and
 * wrote a file named `=66`). A condition that is only a metric, or lacks its value, gets the quoting hint.
 */
export function shellQuotingHint(condition: string): string | undefined {
  if (!/^\s*[a-z_]+\s*(>=|<=|>|<|=)?\s*$/i.test(condition)) return undefined;
  return (
    `conditions must be quoted in a shell, e.g. --threshold 'itm>=66': unquoted, > and < are redirections ` +
    `(look for a stray file named like the rest of the condition, e.g. '=66')`
  );
}

/** Adds the shell-quoting hint to a threshold parse error where the condition looks cut by the shell. */
export function withQuotingHint(err: unknown, condition: string): unknown {
  const hint = shellQuotingHint(condition);
  if (!(err instanceof FilterError) || !hint) return err;
  return new FilterError(err.code, `${err.message}; ${hint}`, err.context, { cause: err });
}

/** An option's help text: its description, then required / choices / default, so every default is on screen. */
function optionDescription(option: Option): string {
  const extra: string[] = [];
  if (option.mandatory) extra.push('required');
  if (option.argChoices) extra.push(`one of ${option.argChoices.join(', ')}`);
  const shown =
    option.defaultValueDescription ??
    (option.defaultValue !== undefined ? JSON.stringify(option.defaultValue) : undefined);
  if (shown !== undefined) extra.push(`default: ${shown}`);
  return extra.length ? `${option.description} (${extra.join('; ')})` : option.description;
}

/**
 * A default shown in --help without commander applying it: the value stays undefined when the flag is absent, so
 * a --config file or the environment can still supply it, and the library's own default applies last.
 */
export function shownDefault<T extends Option>(option: T, description: string): T {
  return option.default(undefined, description);
}

/** Commander settings for the program; subcommands created after this inherit them. */
export function configureUsage(program: Command): Command {
  return program
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .configureHelp({ optionDescription } satisfies Partial<Help>);
}

/**
 * `mlm-filter filter --config FILE`: the file is checked against the published schema
 * (schema/filter-config.schema.json) and then for what a schema cannot say (threshold values, metric lists, allowed
 * addresses), before anything else happens. Every problem is one `bad_config` line naming the file and the key's
 * path, e.g. `policy.thresholds[0].op`: an unknown key or a bad value is never ignored, and never half-applied.
 */
import { createReadStream } from 'node:fs';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { parseAllowAddress } from '../intake/address-guard.ts';
import { parseThreshold, type Threshold } from '../policy/index.ts';
import { CLI_METRICS, parseMetricSelection } from '../policy/metric-selection.ts';
import { publishedSchema } from '../support/package-info.ts';
import { FilterError, METRICS, type MetricShort } from '../types.ts';
import type { FilterJobOptions } from './filter.ts';

export const FILTER_CONFIG_SCHEMA = 'filter-config.schema.json';

/** What a --config file may set: FilterJobOptions less the command-line-only and in-process keys. */
export type FilterConfig = Partial<
  Omit<FilterJobOptions, 'input' | 'out' | 'model' | 'signal' | 'abort' | 'logger'>
> & {
  /** Accept threshold values in (0, 1) on the 0..100 metrics (lib/policy/fraction-thresholds.ts). */
  readonly allowFractionThresholds?: boolean;
};

type Json = Record<string, unknown>;

let compiled: { validate: ValidateFunction; keyPaths: string[] } | undefined;

function schemaValidator() {
  if (compiled) return compiled;
  const schema = publishedSchema(FILTER_CONFIG_SCHEMA);
  const validate = new Ajv2020({ allErrors: true, verbose: true }).compile(schema);
  return (compiled = { validate, keyPaths: keyPathsOf(schema) });
}

/** Every key path the schema knows (`policy.thresholds`, `scorer.batchSize`...), for "did you mean" hints. */
function keyPathsOf(schema: Json, prefix = ''): string[] {
  const properties = (schema.properties ?? {}) as Record<string, Json>;
  return Object.entries(properties).flatMap(([key, sub]) => {
    const path = prefix ? `${prefix}.${key}` : key;
    return [path, ...keyPathsOf(sub, path)];
  });
}

/** Reads, validates and normalises a --config file. Throws FilterError `bad_config` naming the file and the key. */
export async function readFilterConfig(path: string): Promise<FilterConfig> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readBounded(path));
  } catch (err) {
    throw new FilterError('bad_config', `cannot read config ${path}: ${(err as Error).message}`, { path });
  }
  return checkFilterConfig(raw, path);
}

/** Largest config file read: far above any real one, and a bound on `--config /dev/zero` or a runaway pipe. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/** The file's text, read to its end (a pipe such as `--config <(...)` too) but never past MAX_CONFIG_BYTES. */
async function readBounded(path: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 64 * 1024 }) as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_CONFIG_BYTES) throw new Error(`larger than ${MAX_CONFIG_BYTES} bytes`);
    chunks.push(chunk);
  }
  // An editor's byte-order mark is not JSON, nor a reason to refuse the file.
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/^\uFEFF/, '');
}

/** Validates a parsed config object (`label` names it in messages); the result has its thresholds parsed. */
export function checkFilterConfig(raw: unknown, label: string): FilterConfig {
  const { validate, keyPaths } = schemaValidator();
  if (!validate(raw)) {
    const problems = relevantErrors(validate.errors ?? []).map((e) => describe(e, keyPaths));
    throw new FilterError('bad_config', `config ${label}: ${[...new Set(problems)].join('; ')}`, {
      path: label,
      problems,
    });
  }
  return normalise(raw as Json, label);
}

/** Runs a parser on a value the schema let through; its refusal becomes `bad_config` naming the file and the key. */
function parsed<T>(label: string, at: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (!(err instanceof FilterError)) throw err;
    const why = err.message.replace(/^--[a-z-]+ /, '');
    const message = why.startsWith(`${at}:`) ? why : `${at}: ${why}`;
    throw new FilterError('bad_config', `config ${label}: ${message}`, { path: label, key: at }, { cause: err });
  }
}

const shortOf = (name: string): MetricShort => METRICS.find((m) => m.key === name || m.short === name)!.short;

function normalise(config: Json, label: string): FilterConfig {
  const out: Json = { ...config };
  const policy = config.policy as { thresholds?: (string | Threshold)[]; combine?: string } | undefined;
  if (policy?.thresholds) {
    const thresholds = policy.thresholds.map((t, i) =>
      typeof t === 'string'
        ? parsed(label, `policy.thresholds[${i}]`, () => parseThreshold(t))
        : { metric: shortOf(t.metric), op: t.op, value: t.value },
    );
    out.policy = { ...policy, thresholds };
  }
  if (config.metrics !== undefined) {
    const raw = config.metrics as string | string[];
    out.metrics = parsed(label, 'metrics', () => parseMetricSelection(raw, { ...CLI_METRICS, name: 'metrics' }));
  }
  const top = config.topFraction as { fraction: number; metric?: string } | undefined;
  if (top) out.topFraction = { fraction: top.fraction, metric: shortOf(top.metric ?? 'itm') };
  const allow = (config.intake as { allowAddresses?: string[] } | undefined)?.allowAddresses ?? [];
  allow.forEach((a, i) => parsed(label, `intake.allowAddresses[${i}]`, () => parseAllowAddress(a)));
  return out as FilterConfig;
}

/**
 * The errors worth showing: under a `oneOf`, the branch for the value's own type (a threshold object with a bad
 * `op` is not also told that it "must be string"), and the `oneOf` itself only when no branch came close.
 */
function relevantErrors(errors: ErrorObject[]): ErrorObject[] {
  const oneOfAt = new Set(errors.filter((e) => e.keyword === 'oneOf').map((e) => e.instancePath));
  const wrongBranch = (e: ErrorObject) => e.keyword === 'type' && oneOfAt.has(e.instancePath);
  const specific = errors.filter((e) => e.keyword !== 'oneOf' && !wrongBranch(e));
  return specific.length ? specific : errors.filter((e) => e.keyword === 'oneOf');
}

/** `/policy/thresholds/0/op` -> `policy.thresholds[0].op`. */
function keyPath(instancePath: string): string {
  return instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, part) => (/^\d+$/.test(part) ? `${path}[${part}]` : path ? `${path}.${part}` : part), '');
}

const shown = (value: unknown) => JSON.stringify(value) ?? String(value);
const squash = (key: string) => key.toLowerCase().replace(/[-_]/g, '');

/** The known key an unknown one was probably meant as: the same name elsewhere (`thresholds` -> `policy.thresholds`). */
function suggestion(key: string, keyPaths: string[]): string | undefined {
  if (['input', 'out', 'model'].includes(key)) return `give --${key} on the command line`;
  const match = keyPaths.find((p) => squash(p.split('.').pop()!) === squash(key));
  return match && `did you mean ${match}?`;
}

function describe(e: ErrorObject, keyPaths: string[]): string {
  const at = keyPath(e.instancePath);
  const where = at || 'the top level';
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String(p.additionalProperty);
      const full = at ? `${at}.${key}` : key;
      const hint = suggestion(key, keyPaths);
      return `unknown key ${full}${hint ? ` (${hint})` : ''}`;
    }
    case 'required':
      return `${where} needs ${String(p.missingProperty)}`;
    case 'type':
      return `${where} must be ${/^[aeiou]/.test(String(p.type)) ? 'an' : 'a'} ${String(p.type)}, got ${shown(e.data)}`;
    case 'enum':
      return `${where} must be one of ${(p.allowedValues as unknown[]).join(', ')}, got ${shown(e.data)}`;
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return `${where} must be ${String(p.comparison)} ${String(p.limit)}, got ${shown(e.data)}`;
    case 'minItems':
      return `${where} must not be empty`;
    case 'minLength':
      return `${where} must not be an empty string`;
    case 'pattern':
      return `${where}: ${shown(e.data)} is not METRIC OP VALUE (e.g. "itm>=66", quoted as a JSON string)`;
    case 'oneOf': {
      const description = (e.parentSchema as { description?: string } | undefined)?.description;
      return `${where}: ${shown(e.data)} is not ${description?.replace(/\.$/, '') ?? 'an allowed value'}`;
    }
    default:
      return `${where} ${e.message ?? 'is not allowed'}`;
  }
}

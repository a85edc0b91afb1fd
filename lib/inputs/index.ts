/**
 * `mlm-filter filter`'s inputs: `--input` specs (repeatable: local files and directories, `-`, brace lists,
 * `s3://` objects and prefixes, http(s) URLs; tar shards and JSONL, plain or gzip) resolved and recognised before
 * the run (lib/inputs/resolve.ts), then read as one Source in the order given (lib/inputs/source.ts).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { PairOptions } from '../pair/index.ts';
import type { WebDatasetReadOptions } from '../sources/webdataset.ts';
import { s3Client } from '../support/aws.ts';
import { HttpInputs, type HttpInputOptions } from './remote.ts';
import { resolveInputs, type InputFormat, type InputItem } from './resolve.ts';
import { InputSource, type InputReport } from './source.ts';

export { expandBraces } from './braces.ts';
export { redactUrl } from './remote.ts';
export type { InputFormat, InputItem, InputReport };
export { InputSource };

export interface OpenInputsOptions {
  readonly format?: InputFormat;
  readonly pair?: PairOptions;
  readonly read?: WebDatasetReadOptions;
  /** http(s) inputs: the address guard's allow rules (`--allow-address`) and the User-Agent. */
  readonly http?: HttpInputOptions;
  /** Default: the AWS credential chain, and MLMF_S3_ENDPOINT for an S3-compatible server. */
  readonly s3?: S3Client;
}

/** The run's inputs, resolved and recognised (usage errors thrown here), as one Source (its close ends its clients). */
export async function openInputs(
  specs: readonly string[],
  options: OpenInputsOptions = {},
): Promise<{ source: InputSource; items: readonly InputItem[] }> {
  let s3 = options.s3;
  let http: HttpInputs | undefined;
  const readers = {
    s3: () => (s3 ??= s3Client({ endpoint: process.env.MLMF_S3_ENDPOINT })),
    http: () => (http ??= new HttpInputs(options.http)),
  };
  const close = async () => {
    await http?.close();
    if (!options.s3) s3?.destroy();
  };
  try {
    const items = await resolveInputs(specs, { ...readers, ...(options.format ? { format: options.format } : {}) });
    const source = await InputSource.open(items, readers, { pair: options.pair, read: options.read, release: close });
    return { source, items };
  } catch (err) {
    await close();
    throw err;
  }
}

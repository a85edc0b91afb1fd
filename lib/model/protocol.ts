/** Messages between the scorer (main thread) and its worker threads. */
import type { EngineInput, EngineOptions, EngineResult, EngineStats } from './engine.ts';
import type { ExecutionProvider, SessionOptions } from './sessions.ts';
import type { ErrorCode } from '../errors.ts';
import type { LogLevel } from '../support/logger.ts';

export interface WorkerInit {
  readonly type: 'init';
  readonly dir: string;
  readonly options: SessionOptions & Omit<EngineOptions, 'eosTokenIds'>;
}

export type WorkerRequest =
  | WorkerInit
  | { readonly type: 'score'; readonly id: number; readonly inputs: EngineInput[] }
  | { readonly type: 'close' }
  /** End the thread now, between two onnxruntime calls (lib/model/scorer-threads.ts): the process is exiting. */
  | { readonly type: 'exit' };

export interface WireError {
  readonly code: ErrorCode;
  readonly message: string;
  readonly context: Record<string, unknown>;
}

export type WorkerReply =
  | { readonly type: 'ready'; readonly executionProvider: ExecutionProvider }
  | { readonly type: 'failed'; readonly error: WireError }
  | { readonly type: 'result'; readonly id: number; readonly results: EngineResult[]; readonly stats: EngineStats }
  | { readonly type: 'error'; readonly id: number; readonly error: WireError }
  | {
      readonly type: 'log';
      readonly level: LogLevel;
      readonly message: string;
      readonly context: Record<string, unknown>;
    }
  | { readonly type: 'closed' };

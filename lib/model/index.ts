/** Public API of the MLM scorer. */
export { loadScorer, type MlmScorer, type ScorerOptions } from './scorer.ts';
export { buildPrompt, promptPieces, CONVERSATION_FORMATS, type ConversationFormat, PROMPT_SOURCE } from './prompt.ts';
export { PromptTokenizer, IMAGE_PLACEHOLDER_ID } from './tokens.ts';
export {
  resolveModelDir,
  readModelDir,
  cacheDirFor,
  exportCommand,
  type ModelDirInfo,
  type ModelDtype,
} from './model-dir.ts';
export type { ExecutionProvider, SessionOptions } from './sessions.ts';
export type { EngineStats } from './engine.ts';

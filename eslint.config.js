import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'infra/dist/',
      'infra/worker-context/',
      'cdk.out/',
      'node_modules/',
      '.services/',
      'tools/export/.venv/',
      'out/',
      'test/fixtures/',
      'bench/.cache/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  { languageOptions: { globals: { ...globals.node } } },
  {
    // onnxruntime-node only through lib/model/onnxruntime.ts, which turns its telemetry off before it loads.
    ignores: ['lib/model/onnxruntime.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { paths: [{ name: 'onnxruntime-node', message: 'import lib/model/onnxruntime.ts (telemetry policy first)' }] },
      ],
    },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
);

// Type-aware lint of the TypeScript (src/, test/, bench/): the rules that need
// the type checker are the ones that catch real bugs here (a promise nobody
// awaits, an async callback where a sync one is expected). `npm run lint`.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'coverage/', 'build/', 'node_modules/'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { project: './tsconfig.json', tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // node:test's test() and describe() return promises the runner itself
      // awaits: a test file calls them at top level and never awaits them.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] }] },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      // Validators and parsers match control bytes on purpose: rejecting them is their job.
      'no-control-regex': 'off',
      // Tests match column-aligned output literally; ` {2}` would hide what the line looks like.
      'no-regex-spaces': 'off',
      // tsc's noUnusedLocals / noUnusedParameters check this already (with the same `_` convention).
      '@typescript-eslint/no-unused-vars': 'off',
      // A type guard's false branch is `never`, and its error message still names the rejected value.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNever: true }],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Test doubles implement async interfaces (runners, resolvers) without awaiting anything.
      '@typescript-eslint/require-await': 'off',
    },
  },
);

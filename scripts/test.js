#!/usr/bin/env node
'use strict';
// First the checks that need no test to fail: the format (Prettier for the
// TypeScript, clang-format for native/; `npm run format` fixes both), then the
// lint (eslint, knip).
// Then the unit tests under c8 (V8's own coverage, mapped back to src/ by the
// source maps tsc writes) and prints the coverage of src/ only: the summary,
// then one line per folder (coverage/coverage-summary.json has it per file).
// No threshold yet: the figures are printed, never fail the run.
// Then the fuzzers of the parsers that face the network
// (test/fuzz: 100,000 seeded inputs per target, FUZZ_SEED / FUZZ_ITERATIONS to
// override), then the end-to-end suite in network namespaces.
// The e2e suite needs root (namespaces, nftables); without it, and outside CI,
// it is skipped with the reason. Under CI=true it always runs.
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const ci = /^(1|true|yes)$/i.test(process.env.CI || '');

function run(args, env = process.env) {
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env });
  return r.status === null ? 1 : r.status;
}

// One row per folder of src/ (files directly in src/ as "src"), summed from
// the per-file figures: the summary alone hides where the gaps are, the
// per-file table is 100 lines long.
function printFolderTable(file) {
  let summary;
  try {
    summary = JSON.parse(require('node:fs').readFileSync(file, 'utf8'));
  } catch (err) {
    console.error(`coverage: no summary (${err.message})`);
    return;
  }
  const kinds = ['lines', 'branches', 'functions'];
  const folders = new Map();
  for (const [name, figures] of Object.entries(summary)) {
    if (name === 'total') continue;
    const rel = path.relative(root, name).split(path.sep);
    const folder = rel.length > 2 ? rel.slice(0, 2).join('/') : rel[0];
    const sums = folders.get(folder) || { files: 0, lines: [0, 0], branches: [0, 0], functions: [0, 0] };
    sums.files++;
    for (const k of kinds) {
      sums[k][0] += figures[k].covered;
      sums[k][1] += figures[k].total;
    }
    folders.set(folder, sums);
  }
  const pct = ([covered, total]) => (total === 0 ? '-' : `${((100 * covered) / total).toFixed(1)}%`);
  const rows = [['folder', 'files', 'lines', 'branches', 'functions']];
  for (const folder of [...folders.keys()].sort()) {
    const s = folders.get(folder);
    rows.push([folder, String(s.files), ...kinds.map((k) => `${pct(s[k])} (${s[k][0]}/${s[k][1]})`)]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  '));
}

function e2eBlocker() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not root';
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (ip.error || ip.status !== 0) return '`ip netns` is not available (install iproute2)';
  const nft = spawnSync('nft', ['--version'], { encoding: 'utf8' });
  if (nft.error) return 'nft is not installed (apt-get install nftables)';
  return undefined;
}

// The format: a diff that only reformats is noise in every review after it.
let status = run([require.resolve('prettier/bin/prettier.cjs'), '--check', '--log-level', 'warn', '.']);
if (status !== 0) console.error('format: run `npm run format`');
const clang = spawnSync('clang-format', ['--version'], { encoding: 'utf8' });
if (clang.error) {
  if (ci) {
    console.error('format: clang-format is not installed (scripts/debian-deps.sh installs it)');
    status = 1;
  } else console.error('format: native/ not checked: clang-format is not installed (apt-get install clang-format)');
} else {
  const files = require('node:fs')
    .readdirSync(path.join(root, 'native'))
    .filter((f) => /\.[ch]$/.test(f))
    .map((f) => path.join('native', f));
  const r = spawnSync('clang-format', ['--dry-run', '--Werror', ...files], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error('format: native/ is not clang-formatted: run `npm run format`');
    status = 1;
  }
}

// The lint (`npm run lint`; tsc itself ran in `npm run build`): typescript-eslint
// with type information (floating promises, async callbacks where sync ones are
// expected), then knip (unused files, exports, dependencies). They run before
// the tests because they take seconds and a test may be slow to fail.
// A bin of a package in node_modules: knip's "exports" hide its package.json
// from require.resolve.
function binOf(pkg, name) {
  const dir = path.join(root, 'node_modules', pkg);
  const bin = JSON.parse(require('node:fs').readFileSync(path.join(dir, 'package.json'), 'utf8')).bin;
  return path.join(dir, typeof bin === 'string' ? bin : bin[name]);
}
if (run([binOf('eslint', 'eslint'), '.']) !== 0) {
  console.error('lint: eslint found problems: run `npx eslint .` (`npx eslint --fix .` fixes some)');
  status = 1;
}
if (run([binOf('knip', 'knip'), '--no-progress']) !== 0) {
  console.error('lint: knip found unused files, exports or dependencies: run `npx knip` (knip.json says what counts as used)');
  status = 1;
}

// --all: a src file that no unit test loads counts as 0%, not as absent.
// The include is matched on dist/ paths (before the source-map remap), so
// dist/test and dist/bench stay out.
const c8 = require.resolve('c8/bin/c8.js');
const coverageDir = path.join(root, 'coverage');
status =
  run([
    c8,
    '--all',
    '--src',
    'dist/src',
    '--include',
    'dist/src/**',
    '--reporter',
    'text-summary',
    '--reporter',
    'json-summary',
    '--report-dir',
    coverageDir,
    '--temp-directory',
    path.join(coverageDir, 'tmp'),
    process.execPath,
    '--test',
    'dist/test/unit/',
  ]) || status;
printFolderTable(path.join(coverageDir, 'coverage-summary.json'));
if (process.argv.includes('--unit')) process.exit(status);
status = run([path.join('dist', 'test', 'fuzz', 'run.js')]) || status;

const blocker = e2eBlocker();
if (blocker) {
  if (ci) {
    console.error(`e2e: cannot run under CI: ${blocker}`);
    process.exit(1);
  }
  console.error(`e2e: skipped: ${blocker} (run as root: sudo npm test)`);
  process.exit(status);
}
const e2e = run(['--test', '--test-concurrency=1', 'dist/test/e2e/']);
// The suites about what the executor carries, once more with --relay js (the
// Node executor); http-fast and close run both relays themselves. The whole
// suite passes with TG_E2E_RELAY=js too, in about nine minutes more than the
// run may take. TG_E2E_JS=all runs every file, 0 none.
const jsSuites = ['http', 'relay', 'direct-source'];
const jsWhich = process.env.TG_E2E_JS || 'some';
let e2eJs = 0;
if (jsWhich !== '0') {
  const files = jsWhich === 'all' ? ['dist/test/e2e/'] : jsSuites.map((f) => `dist/test/e2e/${f}.test.js`);
  console.log(`e2e once more with --relay js: ${files.join(' ')}`);
  e2eJs = run(['--test', '--test-concurrency=1', ...files], { ...process.env, TG_E2E_RELAY: 'js' });
}
process.exit(status || e2e || e2eJs);

#!/usr/bin/env node
'use strict';
// Runs the unit tests, then the fuzzers of the parsers that face the network
// (test/fuzz: 100,000 seeded inputs per target, FUZZ_SEED / FUZZ_ITERATIONS to
// override), then the end-to-end suite in network namespaces.
// The e2e suite needs root (namespaces, nftables); without it, and outside CI,
// it is skipped with the reason. Under CI=true it always runs.
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const ci = /^(1|true|yes)$/i.test(process.env.CI || '');

function run(args) {
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  return r.status === null ? 1 : r.status;
}

function e2eBlocker() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not root';
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (ip.error || ip.status !== 0) return '`ip netns` is not available (install iproute2)';
  const nft = spawnSync('nft', ['--version'], { encoding: 'utf8' });
  if (nft.error) return 'nft is not installed (apt-get install nftables)';
  return undefined;
}

let status = run(['--test', 'dist/test/unit/']);
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
process.exit(status || e2e);

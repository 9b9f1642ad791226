/**
 * native/protocol.h and src/native/index.ts describe one protocol: the
 * numbers must agree, and the addon that loads must say so itself.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ABI_VERSION, NextActions, TunnelActions, isNativeAvailable, loadNative } from '../../src/native/index';

function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'native', 'protocol.h'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('native/protocol.h not found');
    dir = up;
  }
  return dir;
}

const header = fs.readFileSync(path.join(repoRoot(), 'native', 'protocol.h'), 'utf8');

test('TunnelActions mirror enum tg_action', () => {
  const inC = Object.fromEntries([...header.matchAll(/TG_ACTION_([A-Z_]+)\s*=\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  const { READ_ON, ...sent } = inC;
  assert.equal(typeof READ_ON, 'number', 'READ_ON stays in C: it is a null answer');
  assert.deepEqual(sent, { ...TunnelActions });
});

test('NextActions mirror enum tg_next', () => {
  const inC = Object.fromEntries([...header.matchAll(/TG_NEXT_([A-Z_]+)\s*=\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  const { READ_ON, ...sent } = inC;
  assert.equal(typeof READ_ON, 'number', 'READ_ON stays in C: it is a null answer');
  assert.deepEqual(sent, { ...NextActions });
});

test('ABI_VERSION is TG_ABI_VERSION, and the addon that loads reports it', { skip: !isNativeAvailable() && 'addon not built' }, () => {
  assert.equal(Number(/#define TG_ABI_VERSION (\d+)/.exec(header)?.[1]), ABI_VERSION);
  assert.equal(loadNative().abiVersion(), ABI_VERSION);
});

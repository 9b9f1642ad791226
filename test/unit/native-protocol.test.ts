/**
 * native/protocol.h and src/native/index.ts describe one protocol: the
 * numbers must agree, and the addon that loads must say so itself.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  ABI_VERSION,
  NextActions,
  Outcomes,
  TunnelActions,
  UpActions,
  isNativeAvailable,
  loadNative,
  outcomeText,
} from '../../src/native/index';

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

for (const [name, prefix, mirror] of [
  ['NextActions mirror enum tg_next', 'TG_NEXT_', NextActions],
  ['UpActions mirror enum tg_up', 'TG_UP_', UpActions],
] as const) {
  test(name, () => {
    const inC = Object.fromEntries(
      [...header.matchAll(new RegExp(`${prefix}([A-Z_]+)\\s*=\\s*(\\d+)`, 'g'))].map((m) => [m[1]!, Number(m[2])]),
    );
    const { READ_ON, ...sent } = inC;
    assert.equal(typeof READ_ON, 'number', 'READ_ON stays in C: it is a null answer');
    assert.deepEqual(sent, { ...mirror });
  });
}

test('Outcomes mirror enum tg_outcome', () => {
  const inC = Object.fromEntries([...header.matchAll(/TG_OUTCOME_([A-Z_]+)\s*=\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  assert.ok(Object.keys(inC).length >= 20, 'enum tg_outcome not found in protocol.h');
  assert.deepEqual(inC, { ...Outcomes });
});

/**
 * The access log's result field kept its words when the addon's outcomes
 * became numbers: log readers and tests grep for these strings.
 */
test('outcomeText: the words of the log (those the addon sent before ABI 4, and the later ones)', () => {
  const cases: Array<[number, string, string]> = [
    [Outcomes.OK, '', 'ok'],
    [Outcomes.HANDED_OVER, '', 'handed-over'],
    [Outcomes.ABORTED, '', 'aborted'],
    [Outcomes.IDLE_TIMEOUT, '', 'idle-timeout'],
    [Outcomes.REFUSED, '', 'refused'],
    [Outcomes.REJECTED, '', 'rejected'],
    [Outcomes.UNUSABLE, '', 'unusable'],
    [Outcomes.INTERNAL_ERROR, '', 'internal-error'],
    [Outcomes.CONNECT, 'ECONNREFUSED', 'connect ECONNREFUSED'],
    [Outcomes.SOCKET, 'EMFILE', 'socket EMFILE'],
    [Outcomes.CONNECT_TIMEOUT, '', 'connect-timeout'],
    [Outcomes.ANSWER, 'ECONNRESET', 'answer ECONNRESET'],
    [Outcomes.ANSWER_TIMEOUT, '', 'answer-timeout'],
    [Outcomes.ANSWER_CLOSED, '', 'answer-closed'],
    [Outcomes.ANSWER_PROTOCOL, '', 'answer-protocol'],
    [Outcomes.ANSWER_OVERSIZED, '', 'answer-oversized'],
    [Outcomes.ANSWER_STATUS, '', 'answer-status'],
    [Outcomes.CLIENT_ERROR, 'ECONNRESET', 'client ECONNRESET'],
    [Outcomes.UPSTREAM_ERROR, 'ETIMEDOUT', 'upstream ETIMEDOUT'],
    [Outcomes.RELAY_ERROR, 'EMFILE', 'relay EMFILE'],
    [Outcomes.HEAD_TIMEOUT, '', 'head-timeout'],
    [Outcomes.PENDING_TIMEOUT, '', 'pending-timeout'],
    [Outcomes.HANDSHAKE, '', 'handshake'],
  ];
  assert.deepEqual(new Set(cases.map((c) => c[0])), new Set(Object.values(Outcomes)), 'every outcome has a case');
  for (const [o, detail, text] of cases) assert.equal(outcomeText(o as (typeof Outcomes)[keyof typeof Outcomes], detail), text);
});

test('ABI_VERSION is TG_ABI_VERSION, and the addon that loads reports it', { skip: !isNativeAvailable() && 'addon not built' }, () => {
  assert.equal(Number(/#define TG_ABI_VERSION (\d+)/.exec(header)?.[1]), ABI_VERSION);
  assert.equal(loadNative().abiVersion(), ABI_VERSION);
});

import assert from 'node:assert/strict';
import { ntlmAuthenticate, ntlmChallengeFrom, parseNtlmChallenge } from '../../src/outbound/auth/ntlm';
import type { Rng, Target } from './harness';

const stats = { parsed: 0, withInfo: 0, withTimestamp: 0, refused: 0 };

const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n & 0xffff);
  return b;
};

/** AV pairs: mostly well formed (names, a timestamp, EOL), sometimes cut, mislengthed or without EOL. */
function targetInfo(r: Rng): Buffer {
  const parts: Buffer[] = [];
  for (let i = r.int(5); i > 0; i--) {
    const id = r.chance(0.8) ? r.pick([1, 2, 3, 4, 5, 6, 7, 9]) : r.int(0x10000);
    const value = id === 7 && r.chance(0.8) ? r.bytes(8) : Buffer.from(r.pick(['Server', 'Domain', 'corp.example', '']), 'utf16le');
    const len = r.chance(0.9) ? value.length : r.int(0x10000);
    parts.push(u16(id), u16(len), value);
  }
  if (r.chance(0.9)) parts.push(u16(0), u16(0));
  return Buffer.concat(parts);
}

/** A CHALLENGE message: the header with its fields pointing at a payload (sometimes not). */
function challenge(r: Rng): Buffer {
  const name = Buffer.from(r.pick(['Server', 'PROXY', '']), r.chance(0.8) ? 'utf16le' : 'latin1');
  const info = targetInfo(r);
  const head = Buffer.alloc(r.chance(0.8) ? 56 : 48);
  Buffer.from('NTLMSSP\0', 'latin1').copy(head);
  head.writeUInt32LE(r.chance(0.95) ? 2 : r.int(5), 8);
  const nameAt = head.length;
  const infoAt = nameAt + name.length;
  head.writeUInt16LE(name.length, 12);
  head.writeUInt16LE(name.length, 14);
  head.writeUInt32LE(r.chance(0.9) ? nameAt : r.u32(), 16);
  head.writeUInt32LE(r.u32(), 20);
  r.bytes(8).copy(head, 24);
  head.writeUInt16LE(r.chance(0.9) ? info.length : r.int(0x10000), 40);
  head.writeUInt16LE(info.length, 42);
  head.writeUInt32LE(r.chance(0.9) ? infoAt : r.u32(), 44);
  return Buffer.concat([head, name, info]);
}

/**
 * The proxy's CHALLENGE (and the Proxy-Authenticate value it comes in) is
 * the only NTLM input from the network: whatever it is, the parser returns
 * undefined or a challenge whose parts lie inside the message, and the
 * AUTHENTICATE built from it never throws.
 */
export const ntlmTarget: Target = {
  name: 'ntlm',
  stats,
  generate: challenge,
  fixtures: [],
  check(input: Buffer): void {
    const c = parseNtlmChallenge(input);
    const viaHeader = ntlmChallengeFrom([`NTLM ${input.toString('base64')}`]);
    assert.equal(viaHeader === undefined, c === undefined, 'the header form reads the same bytes');
    ntlmChallengeFrom([input.toString('latin1')]);
    if (c === undefined) {
      stats.refused++;
      return;
    }
    stats.parsed++;
    assert.equal(c.serverChallenge.length, 8);
    assert.ok(c.targetInfo.length <= input.length);
    if (c.targetInfo.length > 0) {
      stats.withInfo++;
      assert.ok(input.includes(c.targetInfo), 'the target info is a part of the message');
    }
    if (c.timestamp) {
      stats.withTimestamp++;
      assert.equal(c.timestamp.length, 8);
    }
    const m = ntlmAuthenticate({ user: 'u', domain: 'D', password: 'p', workstation: 'W' }, c);
    assert.equal(m.readUInt32LE(8), 3);
  },
};

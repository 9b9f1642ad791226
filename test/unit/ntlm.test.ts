import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { md4 } from '../../src/outbound/auth/md4';
import {
  NtlmFlags,
  filetime,
  ntlmAuthenticate,
  ntlmChallengeFrom,
  ntlmHeader,
  ntlmNegotiate,
  ntlmv2Responses,
  ntowfv1,
  ntowfv2,
  parseNtlmChallenge,
  splitNtlmUser,
} from '../../src/outbound/auth/ntlm';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('MD4 (RFC 1320 A.5)', () => {
  const suite: Array<[string, string]> = [
    ['', '31d6cfe0d16ae931b73c59d7e0c089c0'],
    ['a', 'bde52cb31de33e46245e05fbdbd6fb24'],
    ['abc', 'a448017aaf21d8525fc10ae87aa6729d'],
    ['message digest', 'd9130a8164549fe818874806e1c7014b'],
    ['abcdefghijklmnopqrstuvwxyz', 'd79e1c308aa5bbcdeea8ed63df412da9'],
    ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', '043f8582f241db351ce627e153e7f0e4'],
    ['1234567890'.repeat(8), 'e33b4ddc9c38f2199c3e7b164fcc0536'],
  ];
  for (const [input, digest] of suite) {
    it(`MD4(${JSON.stringify(input.length > 20 ? `${input.slice(0, 20)}…` : input)})`, () => {
      assert.equal(md4(Buffer.from(input, 'latin1')).toString('hex'), digest);
    });
  }
  it('lengths around the padding boundary (55, 56, 63, 64, 65 bytes) agree with a second computation split differently', () => {
    // No reference for these in the RFC: they must at least be distinct and stable (the padding code's edge cases run).
    const seen = new Set<string>();
    for (const n of [55, 56, 63, 64, 65, 119, 120]) seen.add(md4(Buffer.alloc(n, 0x61)).toString('hex'));
    assert.equal(seen.size, 7);
  });
});

// MS-NLMP 4.2.1 and 4.2.4: User "User", domain "Domain", password "Password", server "Server", workstation "COMPUTER".
const CHALLENGE_4_2_4 = hex(`
  4e544c4d53535000 02000000 0c000c00 38000000 33828ae2 0123456789abcdef 0000000000000000
  24002400 44000000 060070170000000f
  530065007200760065007200
  02000c0044006f006d00610069006e00 01000c00530065007200760065007200 00000000`);

describe('NTLMv2 against MS-NLMP 4.2.4', () => {
  const creds = { user: 'User', domain: 'Domain', password: 'Password', workstation: 'COMPUTER' };
  const time = Buffer.alloc(8);
  const client = Buffer.alloc(8, 0xaa);

  it('NTOWFv1 and NTOWFv2 (MD4 without the legacy OpenSSL provider)', () => {
    assert.equal(ntowfv1('Password').toString('hex'), 'a4f49c406510bdcab6824ee7c30fd852');
    assert.equal(ntowfv2('Password', 'User', 'Domain').toString('hex'), '0c868a403bfd7a93a3001ef22ef02e3f');
  });

  it('the CHALLENGE message is read: flags, server challenge, target name and info', () => {
    const c = parseNtlmChallenge(CHALLENGE_4_2_4);
    assert.ok(c);
    assert.equal(c.flags >>> 0, 0xe28a8233);
    assert.equal(c.serverChallenge.toString('hex'), '0123456789abcdef');
    assert.equal(c.targetName, 'Server');
    assert.equal(c.targetInfo.length, 36);
    assert.equal(c.timestamp, undefined);
  });

  it('LMv2 and NTProofStr', () => {
    const c = parseNtlmChallenge(CHALLENGE_4_2_4)!;
    const r = ntlmv2Responses(ntowfv2('Password', 'User', 'Domain'), c, time, client);
    assert.equal(r.lm.toString('hex'), '86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa');
    assert.equal(r.ntProofStr.toString('hex'), '68cd0ab851e51c96aabc927bebef6a1c');
  });

  it('the AUTHENTICATE message holds those responses and the names at the offsets it declares', () => {
    const c = parseNtlmChallenge(CHALLENGE_4_2_4)!;
    const m = ntlmAuthenticate(creds, c, time, client);
    assert.equal(m.subarray(0, 8).toString('latin1'), 'NTLMSSP\0');
    assert.equal(m.readUInt32LE(8), 3);
    const at = (o: number): Buffer => m.subarray(m.readUInt32LE(o + 4), m.readUInt32LE(o + 4) + m.readUInt16LE(o));
    assert.equal(at(12).toString('hex'), '86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa');
    assert.equal(at(20).subarray(0, 16).toString('hex'), '68cd0ab851e51c96aabc927bebef6a1c');
    assert.ok(at(20).includes(c.targetInfo), 'the target info is echoed in the NT response');
    assert.equal(at(28).toString('utf16le'), 'Domain');
    assert.equal(at(36).toString('utf16le'), 'User');
    assert.equal(at(44).toString('utf16le'), 'COMPUTER');
    assert.equal(m.readUInt16LE(52), 0, 'no session key');
    const flags = m.readUInt32LE(60);
    assert.ok(flags & NtlmFlags.UNICODE && flags & NtlmFlags.NTLM && flags & NtlmFlags.EXTENDED_SESSIONSECURITY);
  });

  it("the server's timestamp, when it sends one, is the response's time", () => {
    const ts = hex('0090d336b734c301');
    const info = Buffer.concat([hex('07000800'), ts, hex('00000000')]);
    const msg = Buffer.alloc(48 + info.length);
    Buffer.from('NTLMSSP\0', 'latin1').copy(msg);
    msg.writeUInt32LE(2, 8);
    msg.writeUInt32LE(48, 16);
    msg.writeUInt32LE(NtlmFlags.UNICODE | NtlmFlags.NTLM | NtlmFlags.TARGET_INFO, 20);
    msg.writeUInt16LE(info.length, 40);
    msg.writeUInt16LE(info.length, 42);
    msg.writeUInt32LE(48, 44);
    info.copy(msg, 48);
    const c = parseNtlmChallenge(msg)!;
    assert.deepEqual(c.timestamp, ts);
    const m = ntlmAuthenticate(creds, c, undefined, client);
    const nt = m.subarray(m.readUInt32LE(24), m.readUInt32LE(24) + m.readUInt16LE(20));
    assert.deepEqual(nt.subarray(24, 32), ts);
  });
});

describe('NTLM messages off the network', () => {
  it('NEGOTIATE: signature, type 1, the flags asked for', () => {
    const n = ntlmNegotiate();
    assert.equal(n.subarray(0, 8).toString('latin1'), 'NTLMSSP\0');
    assert.equal(n.readUInt32LE(8), 1);
    assert.ok(n.readUInt32LE(12) & NtlmFlags.NTLM);
    assert.equal(ntlmHeader(n), `NTLM ${n.toString('base64')}`);
  });

  it('a challenge with a field outside the message, a wrong type, no EOL, or too short is refused', () => {
    const bad = (mutate: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(CHALLENGE_4_2_4);
      mutate(b);
      return b;
    };
    assert.equal(parseNtlmChallenge(bad((b) => b.writeUInt32LE(3, 8))), undefined);
    assert.equal(parseNtlmChallenge(bad((b) => b.writeUInt32LE(0xffffff00, 44))), undefined);
    assert.equal(parseNtlmChallenge(bad((b) => b.writeUInt16LE(0xffff, 40))), undefined);
    assert.equal(parseNtlmChallenge(bad((b) => b.writeUInt16LE(0x0001, b.length - 4))), undefined);
    assert.equal(parseNtlmChallenge(CHALLENGE_4_2_4.subarray(0, 31)), undefined);
    assert.equal(
      parseNtlmChallenge(bad((b) => b.writeUInt32LE((b.readUInt32LE(20) & ~NtlmFlags.TARGET_INFO) >>> 0, 20)))?.targetInfo.length,
      0,
    );
    assert.equal(parseNtlmChallenge(Buffer.alloc(5000)), undefined);
  });

  // Squid 5.7's ntlm_fake_auth: a 40-byte header, the target name "WORKGROUP" behind it at a garbage offset
  // (0xaaaaaaae), no target info. curl answers it; so must we.
  it("regression: squid's ntlm_fake_auth challenge, with a target name offset outside the message, is answered", () => {
    const c = parseNtlmChallenge(hex('4e544c4d535350000200000009000900aeaaaaaa06820800bae005bca2ed85480000000000003a00574f524b47524f5550'));
    assert.ok(c);
    assert.equal(c.serverChallenge.toString('hex'), 'bae005bca2ed8548');
    assert.equal(c.targetName, '');
    assert.equal(c.targetInfo.length, 0);
  });

  it('Proxy-Authenticate values: the NTLM one with a token, whatever else the proxy offers', () => {
    const token = CHALLENGE_4_2_4.toString('base64');
    assert.equal(ntlmChallengeFrom(['Negotiate', 'NTLM', `Basic realm="x"`]), undefined);
    assert.equal(ntlmChallengeFrom(['Negotiate', `ntlm ${token}`])?.targetName, 'Server');
    assert.equal(ntlmChallengeFrom([`NTLM ${token}!`]), undefined);
  });

  it('DOMAIN\\user and user@realm', () => {
    assert.deepEqual(splitNtlmUser('CORP\\alice'), { domain: 'CORP', user: 'alice' });
    assert.deepEqual(splitNtlmUser('CORP/alice'), { domain: 'CORP', user: 'alice' });
    assert.deepEqual(splitNtlmUser('alice@corp.example'), { domain: '', user: 'alice@corp.example' });
  });

  it('FILETIME: 1601-based 100 ns units', () => {
    assert.equal(filetime(0).readBigUInt64LE(), 116_444_736_000_000_000n);
  });
});

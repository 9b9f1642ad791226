/**
 * NTLMv2 for proxy authentication (MS-NLMP): the NEGOTIATE message, the
 * proxy's CHALLENGE read with every offset checked (it comes off the
 * network), and the AUTHENTICATE message with the NTLMv2 and LMv2
 * responses. Hand-written: the npm NTLM packages are unmaintained or do
 * NTLMv1, and the whole of it is a few hundred lines of fixed layouts with
 * test vectors (MS-NLMP 4.2.4) to check them against. No signing or sealing
 * is negotiated: a proxy only checks the responses, so no session key is
 * made.
 */
import crypto from 'node:crypto';
import { md4 } from './md4';

const SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');

/** NegotiateFlags (MS-NLMP 2.2.2.5). */
export const NtlmFlags = {
  UNICODE: 0x00000001,
  OEM: 0x00000002,
  REQUEST_TARGET: 0x00000004,
  NTLM: 0x00000200,
  ALWAYS_SIGN: 0x00008000,
  EXTENDED_SESSIONSECURITY: 0x00080000,
  TARGET_INFO: 0x00800000,
  VERSION: 0x02000000,
  N128: 0x20000000,
  N56: 0x80000000,
} as const;

/** What a client asks for: Unicode, NTLM with extended session security (NTLMv2 responses), the target's info. */
const CLIENT_FLAGS =
  NtlmFlags.UNICODE |
  NtlmFlags.REQUEST_TARGET |
  NtlmFlags.NTLM |
  NtlmFlags.ALWAYS_SIGN |
  NtlmFlags.EXTENDED_SESSIONSECURITY |
  NtlmFlags.N128 |
  NtlmFlags.N56;

/** AV_PAIR ids (MS-NLMP 2.2.2.1) that the client reads. */
const AV_EOL = 0x0000;
const AV_TIMESTAMP = 0x0007;

/** The longest CHALLENGE accepted: its fields are names and a target info list, well under this in practice. */
const CHALLENGE_MAX = 4096;

export interface NtlmChallenge {
  flags: number;
  serverChallenge: Buffer;
  /** TargetInfo's AV pairs as sent (echoed in the NTLMv2 response), empty when absent. */
  targetInfo: Buffer;
  /** MsvAvTimestamp, when the target info has one: the response's time must be it. */
  timestamp: Buffer | undefined;
  targetName: string;
}

export interface NtlmCredentials {
  user: string;
  /** The NetBIOS domain; empty for a UPN (user@realm) or a local account. */
  domain: string;
  password: string;
  /** The client's name as sent in the AUTHENTICATE message. */
  workstation: string;
}

/** The NEGOTIATE message (type 1), with no domain or workstation supplied. */
export function ntlmNegotiate(): Buffer {
  const b = Buffer.alloc(32);
  SIGNATURE.copy(b, 0);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(CLIENT_FLAGS >>> 0, 12);
  // DomainNameFields and WorkstationFields: empty (len 0, offset 32).
  b.writeUInt32LE(32, 20);
  b.writeUInt32LE(32, 28);
  return b;
}

/** A field's bytes (len u16, maxlen u16, offset u32 at `at`), or undefined when it points outside the message. */
function field(msg: Buffer, at: number): Buffer | undefined {
  const len = msg.readUInt16LE(at);
  const off = msg.readUInt32LE(at + 4);
  if (len === 0) return Buffer.alloc(0);
  if (off > msg.length || len > msg.length - off) return undefined;
  return msg.subarray(off, off + len);
}

/**
 * Reads a CHALLENGE message (type 2). Undefined for anything else: a
 * wrong signature or type, a target info field outside the message or a
 * list that does not end with MsvAvEOL, a message over CHALLENGE_MAX.
 */
export function parseNtlmChallenge(msg: Buffer): NtlmChallenge | undefined {
  if (msg.length < 32 || msg.length > CHALLENGE_MAX) return undefined;
  if (!msg.subarray(0, 8).equals(SIGNATURE) || msg.readUInt32LE(8) !== 2) return undefined;
  const flags = msg.readUInt32LE(20);
  const serverChallenge = Buffer.from(msg.subarray(24, 32));
  // The target name is only shown: one that points outside the message (squid's ntlm_fake_auth writes a garbage offset,
  // which curl ignores too) is read as empty rather than refusing the challenge.
  const name = field(msg, 12) ?? Buffer.alloc(0);
  let targetInfo: Buffer = Buffer.alloc(0);
  let timestamp: Buffer | undefined;
  // TargetInfoFields mean something only with NEGOTIATE_TARGET_INFO: without it those bytes may be the payload.
  if (flags & NtlmFlags.TARGET_INFO && msg.length >= 48) {
    const info = field(msg, 40);
    if (info === undefined) return undefined;
    if (info.length > 0) {
      // Walk the pairs: each is id u16, len u16, value; the list ends with MsvAvEOL.
      let pos = 0;
      let ended = false;
      while (pos + 4 <= info.length) {
        const id = info.readUInt16LE(pos);
        const len = info.readUInt16LE(pos + 2);
        if (pos + 4 + len > info.length) return undefined;
        if (id === AV_EOL) {
          ended = true;
          pos += 4 + len;
          break;
        }
        if (id === AV_TIMESTAMP && len === 8) timestamp = Buffer.from(info.subarray(pos + 4, pos + 12));
        pos += 4 + len;
      }
      if (!ended) return undefined;
      targetInfo = Buffer.from(info.subarray(0, pos));
    }
  }
  const targetName = flags & NtlmFlags.UNICODE ? name.toString('utf16le') : name.toString('latin1');
  return { flags, serverChallenge, targetInfo, timestamp, targetName };
}

/** `Proxy-Authenticate: NTLM <base64>` values: the challenge of the first NTLM one with a token, parsed. */
export function ntlmChallengeFrom(values: readonly string[]): NtlmChallenge | undefined {
  for (const v of values) {
    const m = /^NTLM\s+([A-Za-z0-9+/]+={0,2})\s*$/i.exec(v.trim());
    if (!m || m[1]!.length > (CHALLENGE_MAX * 4) / 3 + 4) continue;
    const c = parseNtlmChallenge(Buffer.from(m[1]!, 'base64'));
    if (c) return c;
  }
  return undefined;
}

/** NTOWFv1: MD4 of the UTF-16LE password. */
export function ntowfv1(password: string): Buffer {
  return md4(Buffer.from(password, 'utf16le'));
}

/** NTOWFv2: HMAC-MD5 keyed with NTOWFv1 over UTF-16LE(uppercase(user) + domain). */
export function ntowfv2(password: string, user: string, domain: string): Buffer {
  return hmac(ntowfv1(password), Buffer.from(user.toUpperCase() + domain, 'utf16le'));
}

function hmac(key: Buffer, ...data: Buffer[]): Buffer {
  const h = crypto.createHmac('md5', key);
  for (const d of data) h.update(d);
  return h.digest();
}

/** Now as a FILETIME: 100 ns units since 1601-01-01, little endian. */
export function filetime(ms: number = Date.now()): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE((BigInt(Math.floor(ms)) + 11_644_473_600_000n) * 10_000n);
  return b;
}

export interface NtlmResponses {
  /** LMv2: HMAC(NTOWFv2, server || client challenge) || client challenge. */
  lm: Buffer;
  /** NTProofStr || temp (MS-NLMP 3.3.2). */
  nt: Buffer;
  ntProofStr: Buffer;
}

/** The NTLMv2 and LMv2 responses (MS-NLMP 3.3.2) for a challenge, at `time` (FILETIME) with `clientChallenge` (8 bytes). */
export function ntlmv2Responses(key: Buffer, challenge: NtlmChallenge, time: Buffer, clientChallenge: Buffer): NtlmResponses {
  const temp = Buffer.concat([
    Buffer.from([1, 1, 0, 0, 0, 0, 0, 0]),
    time,
    clientChallenge,
    Buffer.alloc(4),
    challenge.targetInfo,
    Buffer.alloc(4),
  ]);
  const ntProofStr = hmac(key, challenge.serverChallenge, temp);
  const lm = Buffer.concat([hmac(key, challenge.serverChallenge, clientChallenge), clientChallenge]);
  return { lm, nt: Buffer.concat([ntProofStr, temp]), ntProofStr };
}

/**
 * The AUTHENTICATE message (type 3). `time` and `clientChallenge` are for
 * tests (the MS-NLMP vectors); by default the challenge's timestamp (or
 * now) and 8 random bytes.
 */
export function ntlmAuthenticate(
  creds: NtlmCredentials,
  challenge: NtlmChallenge,
  time: Buffer = challenge.timestamp ?? filetime(),
  clientChallenge: Buffer = crypto.randomBytes(8),
): Buffer {
  const key = ntowfv2(creds.password, creds.user, creds.domain);
  const r = ntlmv2Responses(key, challenge, time, clientChallenge);
  const unicode = (challenge.flags & NtlmFlags.UNICODE) !== 0;
  const text = (s: string): Buffer => Buffer.from(s, unicode ? 'utf16le' : 'latin1');
  // The order of the payload: LM, NT, domain, user, workstation (as Windows writes it); no session key.
  const parts = [r.lm, r.nt, text(creds.domain), text(creds.user), text(creds.workstation), Buffer.alloc(0)];
  const HEADER = 64;
  const head = Buffer.alloc(HEADER);
  SIGNATURE.copy(head, 0);
  head.writeUInt32LE(3, 8);
  let off = HEADER;
  const fieldsAt = [12, 20, 28, 36, 44, 52];
  parts.forEach((p, i) => {
    const at = fieldsAt[i]!;
    head.writeUInt16LE(p.length, at);
    head.writeUInt16LE(p.length, at + 2);
    head.writeUInt32LE(off, at + 4);
    off += p.length;
  });
  // What both sides agreed on, of what the client asked for; Unicode or OEM as the challenge says.
  const flags = ((challenge.flags & CLIENT_FLAGS) | (unicode ? NtlmFlags.UNICODE : NtlmFlags.OEM)) >>> 0;
  head.writeUInt32LE(flags, 60);
  return Buffer.concat([head, ...parts]);
}

/** `DOMAIN\user` (or `DOMAIN/user`) as domain and user; `user@realm` and a bare user have no domain. */
export function splitNtlmUser(name: string): { user: string; domain: string } {
  const m = /^([^\\/]+)[\\/](.+)$/.exec(name);
  return m ? { domain: m[1]!, user: m[2]! } : { domain: '', user: name };
}

/** `NTLM <base64>`: a Proxy-Authorization value. */
export function ntlmHeader(message: Buffer): string {
  return `NTLM ${message.toString('base64')}`;
}

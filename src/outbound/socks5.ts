/**
 * The client side of a SOCKS5 CONNECT (RFC 1928, with RFC 1929's
 * user/password), as a pure state machine over the proxy's bytes, so that
 * both executors can carry it: the addon sends `request` and shows the
 * answer to feed() (an exchange), Node sockets do the same. The whole
 * request goes in one write: one method is offered (user/password when
 * there are credentials, else none), so the proxy's choice is known in
 * advance and the sub-negotiation and the CONNECT can follow the greeting
 * at once (dante and ssh -D accept it); a proxy that picks another method
 * is refused. Hand-written: the `socks` package is socket-bound, and this is
 * the network-facing parser, bounded and fuzzed.
 */
import { parseIPv6Bytes } from '../core/ip';

export interface Socks5Target {
  /** A name (socks5h: the proxy resolves it) or an address literal. */
  host: string;
  port: number;
}

export type Socks5Step =
  | { kind: 'need-more' }
  /** The tunnel is open: `consumed` bytes were the proxy's; what follows is the destination's. */
  | { kind: 'done'; consumed: number }
  | {
      kind: 'fail';
      reason: string;
      /** The proxy itself is unusable (not SOCKS5, no acceptable method), not just this destination. */ proxyDown: boolean;
    };

/** RFC 1928 6: the reply field's meanings. */
const REPLIES: Record<number, string> = {
  1: 'general SOCKS server failure',
  2: 'connection not allowed by ruleset',
  3: 'network unreachable',
  4: 'host unreachable',
  5: 'connection refused',
  6: 'TTL expired',
  7: 'command not supported',
  8: 'address type not supported',
};

export function socks5ReplyText(code: number): string {
  return REPLIES[code] ?? `reply ${code}`;
}

function ipv4Bytes(host: string): Buffer | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (!m) return undefined;
  const b = m.slice(1).map(Number);
  return b.every((x) => x <= 255) ? Buffer.from(b) : undefined;
}

/** The bytes the client sends: greeting, user/password if any, CONNECT. Throws for a name or credential over 255 bytes. */
export function socks5Request(target: Socks5Target, auth?: { user: string; password: string }): Buffer {
  const parts: Buffer[] = [Buffer.from([5, 1, auth ? 2 : 0])];
  if (auth) {
    const u = Buffer.from(auth.user, 'utf8');
    const p = Buffer.from(auth.password, 'utf8');
    if (u.length === 0 || u.length > 255 || p.length > 255) throw new Error('socks5: user and password must be 1-255 and 0-255 bytes');
    parts.push(Buffer.from([1, u.length]), u, Buffer.from([p.length]), p);
  }
  let addr: Buffer;
  const v4 = ipv4Bytes(target.host);
  const v6 = v4 ? undefined : parseIPv6Bytes(target.host);
  if (v4) addr = Buffer.concat([Buffer.from([1]), v4]);
  else if (v6) addr = Buffer.concat([Buffer.from([4]), Buffer.from(v6)]);
  else {
    const name = Buffer.from(target.host, 'latin1');
    if (name.length === 0 || name.length > 255) throw new Error('socks5: a name must be 1-255 bytes');
    addr = Buffer.concat([Buffer.from([3, name.length]), name]);
  }
  const port = Buffer.alloc(2);
  port.writeUInt16BE(target.port);
  parts.push(Buffer.from([5, 1, 0]), addr, port);
  return Buffer.concat(parts);
}

/**
 * Reads the proxy's answers to socks5Request: the method choice, the
 * user/password status, the CONNECT reply. feed() takes every byte the proxy
 * sent so far (from its first) and says how far it got.
 */
export class Socks5Reader {
  constructor(private readonly withAuth: boolean) {}

  feed(bytes: Buffer): Socks5Step {
    const need = { kind: 'need-more' } as const;
    if (bytes.length < 2) return need;
    if (bytes[0] !== 5) return { kind: 'fail', reason: 'the proxy did not answer as SOCKS5', proxyDown: true };
    const method = bytes[1]!;
    if (method !== (this.withAuth ? 2 : 0)) {
      return {
        kind: 'fail',
        reason:
          method === 0xff ? 'the proxy accepts none of the offered methods (credentials wanted?)' : `the proxy chose method ${method}`,
        proxyDown: true,
      };
    }
    let pos = 2;
    if (this.withAuth) {
      if (bytes.length < pos + 2) return need;
      if (bytes[pos] !== 1) return { kind: 'fail', reason: 'a malformed user/password answer', proxyDown: true };
      if (bytes[pos + 1] !== 0) return { kind: 'fail', reason: 'the proxy rejected the user/password', proxyDown: false };
      pos += 2;
    }
    if (bytes.length < pos + 2) return need;
    if (bytes[pos] !== 5) return { kind: 'fail', reason: 'a malformed CONNECT reply', proxyDown: true };
    const rep = bytes[pos + 1]!;
    // A refusal is known from its second byte: the proxy may close without sending the rest.
    if (rep !== 0) return { kind: 'fail', reason: socks5ReplyText(rep), proxyDown: false };
    if (bytes.length < pos + 5) return need;
    if (bytes[pos + 2] !== 0) return { kind: 'fail', reason: 'a malformed CONNECT reply', proxyDown: true };
    const atyp = bytes[pos + 3]!;
    const addrLen = atyp === 1 ? 4 : atyp === 4 ? 16 : atyp === 3 ? 1 + bytes[pos + 4]! : -1;
    if (addrLen < 0) return { kind: 'fail', reason: `a CONNECT reply with address type ${atyp}`, proxyDown: true };
    const end = pos + 4 + addrLen + 2;
    if (bytes.length < end) return need;
    return { kind: 'done', consumed: end };
  }
}

/**
 * One upstream connection's proxy authentication: what to answer a 407
 * with, chosen from the proxy's Proxy-Authenticate as `curl
 * --proxy-anyauth` chooses (NTLM, then Digest, then Basic; Negotiate comes
 * first once it is supported). Pure: both executors feed it the 407's
 * head and send what it returns (relay/native-executor.ts through the
 * addon's upstream(), outbound/http-connect.ts on Node sockets), so a
 * handshake goes the same way on both.
 *
 * The first request carries Basic when the proxy URL has credentials (one
 * round trip, as a Basic proxy wants); a proxy that asks for another scheme
 * gets it from the next request on. A 407 after the last leg of a scheme
 * (Basic sent, NTLM's AUTHENTICATE, a Digest that is not stale) means the
 * credentials were rejected: the handshake ends, and the client gets the
 * gateway's 407 page.
 */
import os from 'node:os';
import type { ProxyEndpoint } from '../../config/proxy-url';
import { parseChallenges, type Challenge } from './challenge';
import { digestAuthorization, digestStale, digestUsable } from './digest';
import { ntlmAuthenticate, ntlmChallengeFrom, ntlmHeader, ntlmNegotiate, splitNtlmUser } from './ntlm';

export type AuthScheme = 'basic' | 'digest' | 'ntlm';

/** The next leg: send `authorization` with the same request; `connection`: the leg must go on the connection it answers (NTLM). */
export interface AuthLeg {
  authorization: string;
  scheme: AuthScheme;
  sameConnection: boolean;
}

/** A response head off the network, read with bounds: status, fields (names lowercase, every value), sizes. */
export interface AnswerHead {
  status: number;
  reason: string;
  fields: Map<string, string[]>;
  /** Bytes of the head, CRLFCRLF included. */
  headLength: number;
  /** Content-Length, or undefined when the body is not delimited by one (chunked, or to the close). */
  bodyLength: number | undefined;
  /** The proxy keeps the connection after this answer. */
  keepAlive: boolean;
}

const HEAD_MAX = 16 * 1024;

/**
 * The answer head at the start of `buf`: undefined while incomplete,
 * 'oversized' past HEAD_MAX, 'invalid' when it is not an HTTP answer.
 */
export function readAnswerHead(buf: Buffer): AnswerHead | 'invalid' | 'oversized' | undefined {
  const end = buf.indexOf('\r\n\r\n', 0, 'latin1');
  if (end < 0) return buf.length > HEAD_MAX ? 'oversized' : undefined;
  if (end > HEAD_MAX) return 'oversized';
  const lines = buf.toString('latin1', 0, end).split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0]!);
  if (!m) return 'invalid';
  const fields = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return 'invalid';
    const name = line.slice(0, colon).trim().toLowerCase();
    const list = fields.get(name) ?? [];
    list.push(line.slice(colon + 1).trim());
    fields.set(name, list);
  }
  const cl = fields.get('content-length');
  let bodyLength: number | undefined;
  if (cl !== undefined) {
    if (!cl.every((v) => v === cl[0]) || !/^\d{1,12}$/.test(cl[0]!)) return 'invalid';
    bodyLength = Number(cl[0]);
  } else if (fields.get('transfer-encoding') === undefined) {
    // No length: a 407 without a body says so with Content-Length: 0; without either the body runs to the close.
    bodyLength = undefined;
  }
  const connection = (fields.get('connection') ?? fields.get('proxy-connection') ?? []).join(',').toLowerCase();
  const keepAlive = bodyLength !== undefined && (m[1] === '1' ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection));
  return { status: Number(m[2]), reason: (m[3] ?? '').trim(), fields, headLength: end + 4, bodyLength, keepAlive };
}

/** At most this many 407s are answered on one connection (a Digest stale nonce, NTLM's two legs, a scheme change). */
const LEGS_MAX = 4;

/**
 * The scheme each upstream last accepted: later connections start with it
 * (NTLM's NEGOTIATE in the first request, one round trip less), and a proxy
 * that wants NTLM or Digest is not sent the password as Basic up front again.
 */
const accepted = new WeakMap<ProxyEndpoint, AuthScheme>();

let hostName: string | undefined;
/** This host's short name, uppercase, as NTLM's workstation (15 characters, NetBIOS). */
function workstationName(): string {
  hostName ??= os.hostname().split('.')[0]!.toUpperCase().slice(0, 15);
  return hostName;
}

export class ProxyAuthenticator {
  private scheme: AuthScheme | undefined;
  private ntlmSent = false;
  private digestNc = 0;
  private legs = 0;
  /** The scheme the last 407 was about, for the failure's words. */
  offered: string[] = [];

  constructor(
    private readonly proxy: ProxyEndpoint,
    /** The request line's method and target (CONNECT host:port), which Digest signs. */
    private readonly method: string,
    private readonly uri: string,
    private readonly workstation: string = workstationName(),
  ) {
    const last = proxy.auth ? accepted.get(proxy) : undefined;
    if (last === 'ntlm') {
      this.scheme = 'ntlm';
      this.ntlmSent = true;
      this.initial = ntlmHeader(ntlmNegotiate());
    } else if (last === undefined || last === 'basic') {
      // Digest needs the proxy's nonce: after a Digest success the first request goes without credentials.
      if (proxy.authorization) this.scheme = 'basic';
      this.initial = proxy.authorization;
    }
  }

  /** The first request's Proxy-Authorization. */
  readonly initial: string | undefined;

  /** The proxy accepted the last leg (a 2xx): later connections to it start with this scheme. */
  succeeded(): void {
    if (this.scheme !== undefined) accepted.set(this.proxy, this.scheme);
  }

  /** The scheme in use (undefined: none sent). */
  get current(): AuthScheme | undefined {
    return this.scheme;
  }

  /** The next leg after a 407 with these fields, or undefined: rejected, nothing we can answer, or too many legs. */
  answer(fields: Map<string, string[]>): AuthLeg | undefined {
    const auth = this.proxy.auth;
    const challenges = parseChallenges(fields.get('proxy-authenticate') ?? []);
    this.offered = challenges.map((c) => c.scheme);
    if (auth === undefined || ++this.legs > LEGS_MAX) return undefined;

    if (this.scheme === 'ntlm' && this.ntlmSent) {
      // The NEGOTIATE was answered: a CHALLENGE now, on this connection; anything else after AUTHENTICATE is a no.
      const challenge = ntlmChallengeFrom(fields.get('proxy-authenticate') ?? []);
      this.ntlmSent = false;
      if (challenge === undefined) return undefined;
      this.scheme = 'ntlm';
      const { user, domain } = splitNtlmUser(auth.user);
      const msg = ntlmAuthenticate({ user, domain, password: auth.password, workstation: this.workstation }, challenge);
      this.legs = LEGS_MAX; // the last leg: a 407 after it is a rejection
      return { authorization: ntlmHeader(msg), scheme: 'ntlm', sameConnection: true };
    }
    if (this.scheme === 'digest') {
      const d = challenges.find((c) => c.scheme === 'digest');
      if (d === undefined || !digestStale(d) || !digestUsable(d)) return undefined;
      return this.digest(d, auth);
    }
    if (this.scheme === 'ntlm') return undefined;

    // Basic was sent (or nothing): the best scheme offered that has not been tried.
    if (challenges.some((c) => c.scheme === 'ntlm')) {
      this.scheme = 'ntlm';
      this.ntlmSent = true;
      return { authorization: ntlmHeader(ntlmNegotiate()), scheme: 'ntlm', sameConnection: false };
    }
    const d = challenges.find((c) => c.scheme === 'digest' && digestUsable(c));
    if (d !== undefined) return this.digest(d, auth);
    if (this.scheme === undefined && this.proxy.authorization && challenges.some((c) => c.scheme === 'basic')) {
      this.scheme = 'basic';
      return { authorization: this.proxy.authorization, scheme: 'basic', sameConnection: false };
    }
    return undefined;
  }

  private digest(c: Challenge, auth: { user: string; password: string }): AuthLeg {
    this.scheme = 'digest';
    return {
      authorization: digestAuthorization(c, auth, this.method, this.uri, ++this.digestNc),
      scheme: 'digest',
      sameConnection: false,
    };
  }
}

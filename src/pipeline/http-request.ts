import { ErrorCodes, type ErrorCode } from '../core/errors';
import { parseAuthority, type HostTarget } from '../core/names';
import { forbiddenTarget } from '../route/targets';

/** What one request on an HTTP port asks for, validated; or why it is answered by the gateway itself. */
export type RequestCheck =
  | {
      ok: true;
      /** The Host's host (validated); undefined without a Host: the request goes by the destination address. */
      target: HostTarget | undefined;
      /** Origin form (`/path?query`), or `*` for OPTIONS. */
      path: string;
    }
  | { ok: false; status: 400 | 403 | 405; code: ErrorCode; reason: string };

export interface RequestFacts {
  method: string;
  /** The request target as sent (Node's req.url). */
  url: string;
  /** Name/value pairs as sent (Node's req.rawHeaders). */
  rawHeaders: readonly string[];
  /** The original destination port: the default for a Host without one. */
  port: number;
  /** An address of this gateway or its proxy. */
  isLocal: (address: string) => boolean;
}

/** Methods a client on an HTTP port never gets carried: TRACE echoes the request (with what the proxy adds), CONNECT asks for a tunnel. */
const REFUSED_METHODS = new Set(['TRACE', 'TRACK', 'CONNECT']);

const ABSOLUTE = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)(.*)$/i;

const refuse = (status: 400 | 403 | 405, code: ErrorCode, reason: string): RequestCheck => ({ ok: false, status, code, reason });

/**
 * The one place where a request's destination is read. The client
 * connected to an address and named a host in Host: that host is where the
 * request goes (through the proxy, in absolute form) or, for a verified
 * no_proxy name, the destination address. An absolute-form target's
 * authority is never used: the client did not connect to it, and taking it
 * would let a request line name any host and port (`GET
 * http://127.0.0.1:8081/`). Pure, for unit tests.
 */
export function checkRequest(f: RequestFacts): RequestCheck {
  if (REFUSED_METHODS.has(f.method)) {
    return refuse(405, ErrorCodes.METHOD, `${f.method} is not carried on intercepted HTTP ports`);
  }
  let hostValue: string | undefined;
  for (let i = 0; i + 1 < f.rawHeaders.length; i += 2) {
    if (f.rawHeaders[i]!.toLowerCase() !== 'host') continue;
    // Two Host headers make the destination ambiguous (RFC 9112 3.2: 400).
    if (hostValue !== undefined) return refuse(400, ErrorCodes.BAD_REQUEST, 'two Host headers');
    hostValue = f.rawHeaders[i + 1]!;
  }
  let target: HostTarget | undefined;
  if (hostValue !== undefined && hostValue !== '') {
    const a = parseAuthority(hostValue, f.port);
    if (a === undefined) return refuse(400, ErrorCodes.BAD_REQUEST, 'the Host header is not a host name or an address');
    target = a.target;
  }
  let path: string;
  let uriTarget: HostTarget | undefined;
  if (f.url.startsWith('/')) {
    path = f.url;
  } else if (f.url === '*' && f.method === 'OPTIONS') {
    path = '*';
  } else {
    const m = ABSOLUTE.exec(f.url);
    if (!m || !/^https?$/i.test(m[1]!)) return refuse(400, ErrorCodes.BAD_REQUEST, 'the request target is neither a path nor an http URI');
    const authority = m[2]!;
    const at = authority.lastIndexOf('@');
    const a = parseAuthority(at === -1 ? authority : authority.slice(at + 1), f.port);
    if (a === undefined) return refuse(400, ErrorCodes.BAD_REQUEST, 'the request URI names no valid host');
    uriTarget = a.target;
    const rest = m[3]!;
    const hash = rest.indexOf('#');
    const noFragment = hash === -1 ? rest : rest.slice(0, hash);
    path = noFragment.startsWith('/') ? noFragment : `/${noFragment}`;
  }
  for (const t of [target, uriTarget]) {
    const why = t && forbiddenTarget(t, f.isLocal);
    if (why) return refuse(403, ErrorCodes.FORBIDDEN_TARGET, `${why}: not asked of the proxy for a client`);
  }
  return { ok: true, target, path };
}

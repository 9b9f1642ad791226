import type { ProxyEndpoint } from '../config/proxy-url';
import { requestLineHost } from '../core/names';
import { hostPort } from '../core/types';

/**
 * What the gateway says to its upstream, in one place: the CONNECT head of
 * a tunnel, and the head of a plain HTTP request as it leaves (absolute form
 * with the proxy's credentials, or origin form direct). Pure: the fast path
 * (pipeline/http-framer.ts) serializes the parts to the bytes it writes, the
 * Node HTTP session (relay/http-session.ts) hands the same parts to
 * http.request(), so both send the same head for the same request.
 *
 * What Node's http.request() still writes differently from serialize(), for
 * the same parts (test/unit/request-head.test.ts checks both on the wire):
 * - the request line always says HTTP/1.1: Node frames the response anew
 *   for the client, while the fast path passes the response verbatim and so
 *   keeps the client's version (an HTTP/1.0 client must not get chunked
 *   coding);
 * - without a Connection header in the parts (an HTTP/1.1 request that
 *   keeps its connection), Node adds `Connection: keep-alive` (its agent
 *   keeps connections) where the fast path relies on the HTTP/1.1 default;
 * - a chunked body is chunked anew by Node (its parser took the chunks
 *   apart): same data, but chunk sizes, chunk extensions and trailers are
 *   not the client's. The head is the same: Node sees `Transfer-Encoding:
 *   chunked` in the parts and frames by it.
 */

/** One header field as sent: name (its case kept) and value. */
export type HeaderPair = readonly [name: string, value: string];

/** An upstream request head in parts: what serialize() writes and what http.request() is given. */
export interface RequestParts {
  method: string;
  /** Absolute URI (to a proxy), origin form (`/path?query`, `*`), or `host:port` for CONNECT. */
  target: string;
  /** `HTTP/1.1` or `HTTP/1.0` (see the file comment for Node's request line). */
  version: string;
  headers: HeaderPair[];
}

/** A request that passed pipeline/http-request.ts checkRequest(), described for the upstream. */
export interface ForwardRequest {
  method: string;
  /** The client's request-line version, `HTTP/1.1` or `HTTP/1.0`. */
  version: string;
  /** The validated Host's host, or the original destination address without a Host (unbracketed). */
  host: string;
  /** The original destination port: the port in the absolute URI. */
  port: number;
  /** Origin form (`/path?query`) or `*` (OPTIONS), as checkRequest() made it. */
  path: string;
  /** The client's header fields, in order, as its parser read them. */
  headers: readonly HeaderPair[];
}

/** Where the request goes: to the proxy (absolute form, its credentials) or to the origin itself (origin form). */
export type HeadRoute = { kind: 'proxy'; proxy: ProxyEndpoint } | { kind: 'direct' };

/**
 * Headers never passed on upstream: hop-by-hop ones (RFC 9110 7.6.1) and
 * those meant for a proxy the client never configured. Not
 * Transfer-Encoding or Content-Length: the body is framed by them on both
 * paths (the fast path passes it verbatim, Node frames it anew by them).
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'upgrade',
]);

/** The client's headers meant for a proxy: never passed on, not even to the origin of an Upgrade. */
const PROXY_ONLY: ReadonlySet<string> = new Set(['proxy-connection', 'proxy-authorization', 'proxy-authenticate']);

/**
 * Headers that Connection cannot take off: those that frame the body (it
 * was framed by them), and Host, which the request was checked and routed
 * by (`Connection: host` had the origin of a direct request get no Host at
 * all, and left the proxy's Host to its own making).
 */
const KEPT: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding', 'host']);
const FRAMING: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding']);

/**
 * Methods Node's http.request() sends without framing when the request has
 * none, so the body is empty on both paths; any other method without
 * framing would get `Transfer-Encoding: chunked` from Node, so the builder
 * says `Content-Length: 0` itself (RFC 9110 8.6: a user agent SHOULD send
 * it for a method that anticipates content).
 */
const NO_BODY_BY_DEFAULT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/** The lower-case options of every Connection header of `headers`. */
export function connectionTokens(headers: readonly HeaderPair[]): Set<string> {
  const tokens = new Set<string>();
  for (const [name, value] of headers) {
    if (name.toLowerCase() !== 'connection') continue;
    for (const t of value.split(',')) {
      const token = t.trim().toLowerCase();
      if (token !== '') tokens.add(token);
    }
  }
  return tokens;
}

/** The absolute-form URI a proxy expects: `http://name[:port]/path` (the port as the client connected to it). */
export function absoluteUri(host: string, port: number, path: string): string {
  requestLineHost(host);
  const authority = port === 80 ? (host.includes(':') ? `[${host}]` : host) : hostPort(host, port);
  return `http://${authority}${path === '*' ? '' : path}`;
}

/** The request head for `CONNECT host:port`, with the proxy's credentials (Basic, or the handshake's leg). */
export function connectRequest(proxy: ProxyEndpoint, host: string, port: number, authorization = proxy.authorization): string {
  const authority = hostPort(requestLineHost(host), port);
  const headers: HeaderPair[] = [['Host', authority]];
  if (authorization) headers.push(['Proxy-Authorization', authorization]);
  return serialize({ method: 'CONNECT', target: authority, version: 'HTTP/1.1', headers });
}

/**
 * The head of a plain HTTP request as it leaves: absolute form for the
 * proxy (which sees and filters the URL) with the proxy endpoint's
 * credentials, origin form direct. The client's headers keep their names,
 * values and order, less the hop-by-hop ones and those its Connection
 * names; Connection itself is written anew where it changes something: close
 * when the client asked for it (the upstream connection ends with the
 * client's), keep-alive for an HTTP/1.0 client that asked to keep its
 * connection.
 */
export function forwardHead(req: ForwardRequest, route: HeadRoute): RequestParts {
  const tokens = connectionTokens(req.headers);
  const headers: HeaderPair[] = [];
  let framed = false;
  for (const h of req.headers) {
    const lower = h[0].toLowerCase();
    if (FRAMING.has(lower)) framed = true;
    else if (!KEPT.has(lower) && (HOP_BY_HOP.has(lower) || tokens.has(lower))) continue;
    headers.push(h);
  }
  if (!framed && !NO_BODY_BY_DEFAULT.has(req.method)) headers.push(['Content-Length', '0']);
  if (tokens.has('close')) headers.push(['Connection', 'close']);
  else if (req.version === 'HTTP/1.0' && tokens.has('keep-alive')) headers.push(['Connection', 'keep-alive']);
  let target = req.path;
  if (route.kind === 'proxy') {
    target = absoluteUri(req.host, req.port, req.path);
    if (route.proxy.authorization) headers.push(['Proxy-Authorization', route.proxy.authorization]);
  }
  return { method: req.method, target, version: req.version, headers };
}

/**
 * The head of an Upgrade (WebSocket) request replayed to the origin, in a
 * CONNECT tunnel or direct: origin form, and the client's headers as sent
 * (Connection and Upgrade are the handshake), less those meant for a proxy:
 * the client's proxy credentials never reach an origin.
 */
export function upgradeHead(req: ForwardRequest): RequestParts {
  return {
    method: req.method,
    target: req.path,
    version: req.version,
    headers: req.headers.filter(([name]) => !PROXY_ONLY.has(name.toLowerCase())),
  };
}

/** The bytes of a head: request line, one line per header field, the empty line. */
export function serialize(parts: RequestParts): string {
  let head = `${parts.method} ${parts.target} ${parts.version}\r\n`;
  for (const [name, value] of parts.headers) head += `${name}: ${value}\r\n`;
  return head + '\r\n';
}

/** Node's req.rawHeaders (name, value, name, value...) as pairs. */
export function headerPairs(raw: readonly string[]): HeaderPair[] {
  const pairs: HeaderPair[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!]);
  return pairs;
}

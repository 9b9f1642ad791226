import type { ProxyEndpoint } from '../config/proxy-url';
import type { ErrorCode } from '../core/errors';
import { ErrorCodes } from '../core/errors';
import { connectionTokens, forwardHead, serialize } from '../outbound/request-head';
import { checkRequest, type RequestCheck } from './http-request';
import { readRequestHead } from '../sniff/http';

/**
 * The client side of a plain HTTP connection on the fast path, as a pure
 * state machine over the bytes the client sends: each request head is read
 * whole, checked (checkRequest: the same rules as the Node path), routed,
 * and rebuilt for where it goes (absolute form for the proxy, origin form
 * direct); its body is framed by Content-Length or chunked coding and
 * passes on verbatim, so the executor (native/splice.c's framed relay) can
 * splice it. Responses are not read here: they are spliced back as long
 * as every request of the connection goes the same way.
 *
 * The framing is stricter than HTTP allows a server to be, on purpose: the
 * proxy parses what passes verbatim, and where its framing and ours
 * differed a client could hide a request from the gateway inside a body
 * (request smuggling). A body the framer cannot frame exactly (both
 * Content-Length and Transfer-Encoding, a coding other than chunked, a
 * chunk line that is not `hex[;ext]CRLF`) is refused.
 */

/** Where one request goes; `key` is equal for requests that may share the upstream connection. */
export type RequestRoute =
  /** `proxies`: the upstreams that may carry it, in order; `proxy` is the first. */
  | { kind: 'proxy'; key: string; proxy: ProxyEndpoint; proxies: readonly ProxyEndpoint[] }
  | { kind: 'direct'; key: string }
  /** The route needs what the framer cannot wait for (a lookup for host verification): the Node path takes over. */
  | { kind: 'handover'; why: string };

export interface FramerDeps {
  /** The original destination port: the default for a Host without one, and the port of the absolute URI. */
  port: number;
  /** The original destination address: where a request without Host goes by name. */
  address: string;
  /** An address of this gateway or its proxy (route/targets.ts). */
  isLocal: (address: string) => boolean;
  /** Where a checked request goes. */
  route: (check: Extract<RequestCheck, { ok: true }>) => RequestRoute;
}

/** One step over the client's bytes at a boundary. */
export type FrameStep =
  | { kind: 'need-more' }
  /** Write `out` upstream in place of the first `consumed` bytes, then pass `budget` bytes verbatim. */
  | { kind: 'forward'; out: string; consumed: number; budget: number; route?: RequestRoute; request?: { method: string; uri: string } }
  /** Not HTTP at all (only possible for the first bytes): carried as raw TCP. */
  | { kind: 'not-http' }
  /** The Node path should carry the connection from here (Upgrade, another route, a lookup). */
  | { kind: 'handover'; why: string }
  /** The gateway answers this request itself. */
  | { kind: 'refuse'; status: 400 | 403 | 405 | 408; code: ErrorCode; reason: string };

/** What a client request may carry that the fast path leaves to the Node path. */
const HANDED_OVER_VERSIONS = new Set(['HTTP/1.0', 'HTTP/1.1']);

/** The longest chunk-size line (with extensions) or trailer section accepted: ample for real clients. */
const CHUNK_LINE_MAX = 4096;
const TRAILERS_MAX = 16 * 1024;

/** Longest chunk size, in hex digits after leading zeros: 13 keep it below 2^53, so the budget is exact (and within the addon's). */
const CHUNK_SIZE_DIGITS = 13;

// A quoted extension value holds qdtext only (RFC 9112 7.1.1): no control byte for a peer to end the line at.
const CHUNK_LINE =
  /^([0-9a-fA-F]{1,15})((?:;[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:=(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|"[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]*"))?)*)\r\n/;

/** Headers that frame the body: a Connection option naming one would take it off the proxy's head while the body still passes. */
const FRAMING = new Set(['content-length', 'transfer-encoding']);
const TRAILER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*$/;

type State = 'head' | 'chunk-line' | 'chunk-end' | 'trailers';

const refuse = (status: 400 | 403 | 405 | 408, code: ErrorCode, reason: string): FrameStep => ({ kind: 'refuse', status, code, reason });
const bad = (reason: string): FrameStep => refuse(400, ErrorCodes.BAD_REQUEST, reason);

export class RequestFramer {
  private state: State = 'head';
  /** The bytes of a partial head already searched for its end. */
  private scanned = 0;
  /** The route of the connection's first request: later ones must go the same way. */
  private key: string | undefined;
  /** Requests forwarded so far. */
  requests = 0;
  /** The first request's method and URI as forwarded, for the log. */
  first: { method: string; uri: string } | undefined;
  /** The check of the last request head read (for the log and the route). */
  lastCheck: Extract<RequestCheck, { ok: true }> | undefined;
  /**
   * The proxy the connection is open to (the first request's, or the one it
   * failed over to: reroute()): later requests go to it while their route
   * names it, and their heads carry its credentials.
   */
  private via: ProxyEndpoint | undefined;
  /** The last request's head before it was rebuilt, for reroute(). */
  private lastHead: Parameters<typeof forwardHead>[0] | undefined;

  constructor(private readonly deps: FramerDeps) {}

  /**
   * The next bytes are a request head (not a chunk line or trailers). The
   * executors hold a pipelined head until the answer before it begins, but
   * never a body: a proxy that waits for the whole body before it answers
   * would wait for ever.
   */
  get atHead(): boolean {
    return this.state === 'head';
  }

  /**
   * The next step over `buf` (the bytes after the last step's consumed and budget ones). After need-more, the
   * next call's `buf` starts with the same bytes.
   */
  next(buf: Buffer, eof: boolean): FrameStep {
    switch (this.state) {
      case 'head':
        return this.head(buf, eof);
      case 'chunk-end':
        if (buf.length < 2) return { kind: 'need-more' };
        if (buf[0] !== 0x0d || buf[1] !== 0x0a) return bad('chunk data not followed by CRLF');
        this.state = 'chunk-line';
        return { kind: 'forward', out: '\r\n', consumed: 2, budget: 0 };
      case 'chunk-line':
        return this.chunkLine(buf);
      case 'trailers':
        return this.trailers(buf);
    }
  }

  private head(buf: Buffer, eof: boolean): FrameStep {
    const read = readRequestHead(buf, Math.min(this.scanned, buf.length));
    if (read.status === 'need-more') {
      // Asked again with these bytes and more (the executor's contract): what was searched is not searched again.
      this.scanned = buf.length;
      return { kind: 'need-more' };
    }
    this.scanned = 0;
    if (read.status === 'no-match') {
      if (this.requests === 0) return { kind: 'not-http' };
      return bad('bytes after a request that are not an HTTP request');
    }
    if (read.status === 'invalid') return bad(`malformed HTTP request: ${read.reason}`);
    void eof;
    if (!HANDED_OVER_VERSIONS.has(read.version)) return { kind: 'handover', why: `${read.version} request` };
    const raw: string[] = [];
    for (const [n, v] of read.headers) raw.push(n, v);
    const check = checkRequest({
      method: read.method,
      url: read.target,
      rawHeaders: raw,
      port: this.deps.port,
      isLocal: this.deps.isLocal,
    });
    if (!check.ok) return refuse(check.status, check.code, check.reason);
    this.lastCheck = check;

    let upgrade = false;
    let te: string | undefined;
    const lengths: string[] = [];
    for (const [name, value] of read.headers) {
      const n = name.toLowerCase();
      if (n === 'upgrade') upgrade = true;
      else if (n === 'transfer-encoding') te = te === undefined ? value : `${te}, ${value}`;
      else if (n === 'content-length') lengths.push(value);
    }
    const tokens = connectionTokens(read.headers);
    if (upgrade || tokens.has('upgrade')) return { kind: 'handover', why: 'an Upgrade request' };
    for (const t of tokens) if (FRAMING.has(t)) return bad(`Connection names ${t}, a framing header`);

    let chunked = false;
    let length = 0;
    if (te !== undefined) {
      // RFC 9112 6.1: chunked must be the last coding of a request; with Content-Length too, the framing is ambiguous.
      if (lengths.length > 0) return bad('both Transfer-Encoding and Content-Length');
      // RFC 9112 6.1: an HTTP/1.0 recipient may not know chunked and read the chunks as the next requests.
      if (read.version === 'HTTP/1.0') return bad('Transfer-Encoding in an HTTP/1.0 request');
      const codings = te.split(',').map((c) => c.trim().toLowerCase());
      if (codings[codings.length - 1] !== 'chunked' || codings.filter((c) => c === 'chunked').length !== 1) {
        return bad(`Transfer-Encoding ${te} cannot be framed`);
      }
      chunked = true;
    } else if (lengths.length > 0) {
      const first = lengths[0]!;
      if (!lengths.every((l) => l === first) || !/^[0-9]{1,15}$/.test(first)) return bad('an invalid Content-Length');
      length = Number(first);
    }

    const route = this.deps.route(check);
    if (route.kind === 'handover') return { kind: 'handover', why: route.why };
    if (this.key !== undefined && route.key !== this.key) return { kind: 'handover', why: 'a request that goes another way' };
    if (route.kind === 'proxy' && this.via !== undefined && !route.proxies.some((p) => p.display === this.via!.display)) {
      return { kind: 'handover', why: 'a request for another proxy' };
    }
    this.key = route.key;
    if (route.kind === 'proxy') this.via ??= route.proxy;

    // The same head as the Node path sends for this request (outbound/request-head.ts says where Node differs).
    this.lastHead = {
      method: read.method,
      version: read.version,
      host: check.target?.host ?? this.deps.address,
      port: this.deps.port,
      path: check.path,
      headers: read.headers,
    };
    const parts = forwardHead(this.lastHead, this.via ? { kind: 'proxy', proxy: this.via } : { kind: 'direct' });
    const out = serialize(parts);
    const uri = parts.target;
    this.requests++;
    this.first ??= { method: read.method, uri };
    this.state = chunked ? 'chunk-line' : 'head';
    return { kind: 'forward', out, consumed: read.end, budget: length, route, request: { method: read.method, uri } };
  }

  /**
   * The connection fails over to `proxy` before its first request went out:
   * that request's head as `proxy` must get it (its own credentials), and
   * later requests go to it too.
   */
  reroute(proxy: ProxyEndpoint): string {
    this.via = proxy;
    if (this.lastHead === undefined) throw new Error('reroute() before a request head');
    return serialize(forwardHead(this.lastHead, { kind: 'proxy', proxy }));
  }

  private chunkLine(buf: Buffer): FrameStep {
    // The same limit whether the line arrives whole or in pieces: without a CRLF, more than the limit is
    // buffered only when the line (less its CRLF) is at least CHUNK_LINE_MAX long.
    const crlf = buf.indexOf('\r\n', 0, 'latin1');
    if (crlf === -1) return buf.length > CHUNK_LINE_MAX ? bad('a chunk-size line too long') : { kind: 'need-more' };
    if (crlf >= CHUNK_LINE_MAX) return bad('a chunk-size line too long');
    const text = buf.toString('latin1', 0, crlf + 2);
    const m = CHUNK_LINE.exec(text);
    if (!m || m[0].length !== text.length) return bad('a malformed chunk-size line');
    if (m[1]!.replace(/^0+/, '').length > CHUNK_SIZE_DIGITS) return bad('a chunk size too large');
    const size = parseInt(m[1]!, 16);
    if (size === 0) {
      this.state = 'trailers';
      return { kind: 'forward', out: text, consumed: text.length, budget: 0 };
    }
    this.state = 'chunk-end';
    return { kind: 'forward', out: text, consumed: text.length, budget: size };
  }

  /** After the last chunk: trailer fields up to an empty line, passed on as they are (checked line by line). */
  private trailers(buf: Buffer): FrameStep {
    let pos = 0;
    for (;;) {
      const crlf = buf.indexOf('\r\n', pos, 'latin1');
      // One byte over the limit may be the CR of the empty line that ends a section of exactly the limit.
      if (crlf === -1) return buf.length > TRAILERS_MAX + 1 ? bad('a trailer section too long') : { kind: 'need-more' };
      if (crlf === pos) {
        const out = buf.toString('latin1', 0, crlf + 2);
        this.state = 'head';
        return { kind: 'forward', out, consumed: out.length, budget: 0 };
      }
      const line = buf.toString('latin1', pos, crlf);
      if (!TRAILER_LINE.test(line)) return bad('a malformed trailer field');
      pos = crlf + 2;
      if (pos > TRAILERS_MAX) return bad('a trailer section too long');
    }
  }
}

import { parseAuthority } from '../core/names';

export { normalizeHostname } from '../core/names';

/**
 * Sniffs the head of a plain HTTP/1.x request to learn where the client
 * wanted to go. Pure: `buf` is everything read from the client so far; the
 * caller keeps reading while the answer is 'need-more'.
 */

/** A request head larger than this is treated as not-HTTP (or hostile). */
export const HTTP_SNIFF_MAX_BYTES = 64 * 1024;

/** Longest method accepted; real ones (incl. WebDAV's UPDATEREDIRECTREF) are shorter. */
const MAX_METHOD_LENGTH = 20;

/** How much of an incomplete head is validated on each call (see sniffHttpUnguarded). */
const EARLY_CHECK_BYTES = 2048;

export type HttpSniffResult =
  | { status: 'need-more' }
  | { status: 'no-match' }
  /**
   * It starts as an HTTP request (a method, a space and a request target;
   * or an empty line first) but is malformed: two Host headers, a bare CR,
   * a NUL, a bad header line. Such a request gets 400: carried as raw TCP
   * it would reach the origin past the proxy's URL filter.
   */
  | { status: 'invalid'; reason: string }
  | {
      status: 'match';
      method: string;
      target: string;
      /** As sent, e.g. "HTTP/1.1". */
      version: string;
      /**
       * Authority the client asked for, trimmed but otherwise as sent (it may
       * carry a ":port"); feed it to parseHostHeader. Taken from an
       * absolute-form or CONNECT target when there is one, since RFC 9112
       * says the target wins over the Host header. Undefined when the
       * request names no host.
       */
      host: string | undefined;
    };

const NEED_MORE = { status: 'need-more' } as const;
const NO_MATCH = { status: 'no-match' } as const;
const invalid = (reason: string): HttpSniffResult => ({ status: 'invalid', reason });

const SP = 0x20;
const HTAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;

const isUpper = (b: number): boolean => b >= 0x41 && b <= 0x5a;
// '-' and '_' occur in extension methods (VERSION-CONTROL, BASELINE-CONTROL).
const isMethodByte = (b: number): boolean => isUpper(b) || b === 0x2d || b === 0x5f;
// Visible ASCII, plus raw high bytes because some clients send unescaped UTF-8 paths.
const isTargetByte = (b: number): boolean => b > SP && b !== 0x7f;
// Control bytes never appear in a well-formed head; seeing one means binary traffic.
const isForbiddenControl = (b: number): boolean => (b < SP && b !== HTAB && b !== CR && b !== LF) || b === 0x7f;

const TCHAR = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * True while the bytes so far can still be the start of an HTTP request
 * line, i.e. a known-shaped method token followed by a space. An empty
 * buffer is trivially plausible. Lets the caller give up on non-HTTP
 * traffic after the first byte or few instead of waiting for a timeout.
 */
export function isLikelyHttpStart(buf: Buffer): boolean {
  return scanMethod(buf).status !== 'no-match';
}

type MethodScan = { status: 'need-more' } | { status: 'no-match' } | { status: 'ok'; end: number };

function scanMethod(buf: Buffer): MethodScan {
  const limit = Math.min(buf.length, MAX_METHOD_LENGTH + 1);
  for (let i = 0; i < limit; i++) {
    const b = buf[i]!;
    if (b === SP) return i === 0 ? NO_MATCH : { status: 'ok', end: i };
    if (i === 0 ? !isUpper(b) : !isMethodByte(b)) return NO_MATCH;
  }
  return buf.length > MAX_METHOD_LENGTH ? NO_MATCH : NEED_MORE;
}

/**
 * Whether the bytes start like an HTTP request: an optional empty line,
 * a method token, a space and the start of a request target (origin form
 * `/`, absolute form `http://`, `*`, or any target after CONNECT). What
 * does not is another protocol and goes as raw TCP; what does is HTTP,
 * and if malformed it gets 400, never a raw tunnel.
 */
export function isHttpShaped(buf: Buffer): boolean {
  let start = 0;
  while (start < buf.length && start < 2 && (buf[start] === CR || buf[start] === LF)) start++;
  if (start > 0) return true;
  const m = scanMethod(buf);
  if (m.status !== 'ok') return false;
  const t = m.end + 1;
  if (t >= buf.length) return true;
  const c = buf[t]!;
  if (c === 0x2f || c === 0x2a) return true; // '/' '*'
  // 'h': the absolute form (http://...), possibly not all here yet.
  return c === 0x68 || c === 0x48 || buf.toString('latin1', 0, m.end) === 'CONNECT';
}

type RequestLineScan =
  { status: 'need-more' } | { status: 'no-match' } | { status: 'ok'; method: string; target: string; version: string; next: number };

/** Validates the request line as far as it has arrived, so garbage is rejected early. */
function scanRequestLine(buf: Buffer): RequestLineScan {
  const m = scanMethod(buf);
  if (m.status !== 'ok') return m;

  const targetStart = m.end + 1;
  let i = targetStart;
  while (i < buf.length && isTargetByte(buf[i]!)) i++;
  if (i === buf.length) return NEED_MORE;
  if (i === targetStart || buf[i] !== SP) return NO_MATCH;
  const targetEnd = i;

  // "HTTP/" DIGIT "." DIGIT, checked byte by byte so a bad prefix fails early.
  const versionStart = targetEnd + 1;
  const shape = 'HTTP/d.d';
  for (let k = 0; k < shape.length; k++) {
    const at = versionStart + k;
    if (at >= buf.length) return NEED_MORE;
    const b = buf[at]!;
    const ok = shape[k] === 'd' ? b >= 0x30 && b <= 0x39 : b === shape.charCodeAt(k);
    if (!ok) return NO_MATCH;
  }
  let next = versionStart + shape.length;
  if (next < buf.length && buf[next] === CR) next++;
  if (next >= buf.length) return NEED_MORE;
  if (buf[next] !== LF) return NO_MATCH;

  return {
    status: 'ok',
    method: buf.toString('latin1', 0, m.end),
    target: buf.toString('latin1', targetStart, targetEnd),
    version: buf.toString('latin1', versionStart, versionStart + shape.length),
    next: next + 1,
  };
}

type HeadScan = { status: 'need-more' } | { status: 'no-match' } | { status: 'ok'; headers: Array<[string, string]> };

/** Reads header lines up to the empty line; tolerates bare LF line ends. */
function scanHeaders(buf: Buffer, start: number): HeadScan {
  const headers: Array<[string, string]> = [];
  let pos = start;
  for (;;) {
    const lf = buf.indexOf(LF, pos);
    const lineEnd = lf === -1 ? buf.length : lf;
    for (let i = pos; i < lineEnd; i++) {
      if (isForbiddenControl(buf[i]!)) return NO_MATCH;
      // A CR that is not part of CRLF is a classic smuggling vector; refuse it.
      if (buf[i] === CR && i !== lineEnd - 1) return NO_MATCH;
    }
    if (lf === -1) return NEED_MORE;

    const contentEnd = lf > pos && buf[lf - 1] === CR ? lf - 1 : lf;
    if (contentEnd === pos) return { status: 'ok', headers };
    const line = buf.toString('latin1', pos, contentEnd);
    pos = lf + 1;

    if (line.charCodeAt(0) === SP || line.charCodeAt(0) === HTAB) {
      // obs-fold: RFC 9112 lets a recipient replace it with a space.
      const last = headers[headers.length - 1];
      if (!last) return NO_MATCH;
      last[1] = `${last[1]} ${line.trim()}`.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) return NO_MATCH;
    const name = line.slice(0, colon);
    if (!TCHAR.test(name)) return NO_MATCH;
    headers.push([name, line.slice(colon + 1).trim()]);
  }
}

/** Authority of an absolute-form ("http://host:port/path") target, without userinfo. */
function authorityOfAbsoluteTarget(target: string): string | undefined {
  const m = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/([^/?#]*)/.exec(target);
  if (!m) return undefined;
  const authority = m[1]!;
  const at = authority.lastIndexOf('@');
  return at === -1 ? authority : authority.slice(at + 1);
}

/** `scanned`: a length of `buf` an earlier call on the same head answered need-more for (0 when unknown). */
export function sniffHttp(buf: Buffer, scanned = 0): HttpSniffResult {
  try {
    const r = sniffHttpUnguarded(buf, scanned);
    if (r.status === 'no-match' && isHttpShaped(buf)) return invalid(describeMalformed(buf));
    return r;
  } catch {
    // The scanners are written not to throw; this only keeps a bug from killing the connection handler.
    return NO_MATCH;
  }
}

function describeMalformed(buf: Buffer): string {
  if (buf[0] === CR || buf[0] === LF) return 'an empty line before the request line';
  if (buf.length >= HTTP_SNIFF_MAX_BYTES) return `a request head longer than ${HTTP_SNIFF_MAX_BYTES} bytes`;
  const end = findHeadEnd(buf);
  const head = end === -1 ? buf : buf.subarray(0, end);
  const line = scanRequestLine(head);
  if (line.status !== 'ok') return 'a malformed request line';
  const headers = scanHeaders(head, line.next);
  if (headers.status === 'ok' && headers.headers.filter(([n]) => n.toLowerCase() === 'host').length > 1) return 'two Host headers';
  return 'a malformed header line (control byte, bare CR or bad field name)';
}

/**
 * Index just past the blank line ending the head, or -1. `from`: the bytes
 * before it were searched already (an earlier call on the same head said
 * need-more). A head trickled in one byte or one line at a time is then
 * searched once, not once per piece: 60 KB a byte at a time took 957 ms of
 * the loop's CPU when each call searched from the start.
 */
function findHeadEnd(buf: Buffer, from = 0): number {
  // The blank line may straddle `from`: "\n\r" searched, "\n" just arrived.
  const start = Math.max(0, from - 2);
  const lfLf = buf.indexOf('\n\n', start, 'latin1');
  const lfCrLf = buf.indexOf('\n\r\n', start, 'latin1');
  if (lfLf === -1) return lfCrLf === -1 ? -1 : lfCrLf + 3;
  if (lfCrLf === -1 || lfLf < lfCrLf) return lfLf + 2;
  return lfCrLf + 3;
}

/** @internal sniffHttp without its safety net, exported so the fuzz test can see a throw. */
export function sniffHttpUnguarded(buf: Buffer, scanned = 0): HttpSniffResult {
  if (buf.length === 0) return NEED_MORE;
  const end = findHeadEnd(buf, scanned);
  if (end === -1 || end > HTTP_SNIFF_MAX_BYTES) {
    if (buf.length >= HTTP_SNIFF_MAX_BYTES) return NO_MATCH; // always so when end > max
    // Reject garbage early, but only look at a bounded prefix: rescanning
    // the whole buffer on each of many tiny reads would be quadratic. Once
    // an earlier call saw the whole prefix, it has nothing new to say.
    if (scanned >= EARLY_CHECK_BYTES) return NEED_MORE;
    const window = buf.subarray(0, EARLY_CHECK_BYTES);
    const line = scanRequestLine(window);
    if (line.status === 'no-match') return NO_MATCH;
    if (line.status === 'ok' && scanHeaders(window, line.next).status === 'no-match') return NO_MATCH;
    return NEED_MORE;
  }

  const head = buf.subarray(0, end);
  const line = scanRequestLine(head);
  if (line.status !== 'ok') return NO_MATCH;
  const headers = scanHeaders(head, line.next);
  if (headers.status !== 'ok') return NO_MATCH;

  const hostValues = headers.headers.filter(([name]) => name.toLowerCase() === 'host').map(([, v]) => v);
  // Two Host headers make the destination ambiguous (RFC 9112 demands a 400).
  if (hostValues.length > 1) return NO_MATCH;

  let host: string | undefined = hostValues[0];
  const fromTarget = line.method === 'CONNECT' ? line.target : authorityOfAbsoluteTarget(line.target);
  if (fromTarget !== undefined) host = fromTarget;
  if (host === '') host = undefined;

  return { status: 'match', method: line.method, target: line.target, version: line.version, host };
}

/**
 * Splits a Host header (or any URL authority without userinfo) into host
 * and port (see parseAuthority in core/names): the host validated and
 * normalized (a name lowercased without trailing dot, an IP literal in its
 * canonical form, IPv6 without brackets); undefined for anything else.
 */
export function parseHostHeader(value: string, defaultPort: number): { host: string; port: number } | undefined {
  const a = parseAuthority(value, defaultPort);
  return a === undefined ? undefined : { host: a.target.host, port: a.port };
}

/** A whole request head, its fields as sent (obs-folds joined), and where it ends in the buffer. */
export type RequestHeadRead =
  | { status: 'need-more' }
  | { status: 'no-match' }
  | { status: 'invalid'; reason: string }
  | { status: 'match'; method: string; target: string; version: string; headers: Array<[string, string]>; end: number };

/**
 * Reads one request head from the start of `buf` (the same rules as
 * sniffHttp: what sniffHttp calls a match, this reads whole). For the
 * framed HTTP path, which forwards a head it rebuilt from these fields.
 */
export function readRequestHead(buf: Buffer, scanned = 0): RequestHeadRead {
  const sniffed = sniffHttp(buf, scanned);
  if (sniffed.status !== 'match') return sniffed;
  const end = findHeadEnd(buf, scanned);
  const head = buf.subarray(0, end);
  const line = scanRequestLine(head);
  const headers = line.status === 'ok' ? scanHeaders(head, line.next) : NO_MATCH;
  if (line.status !== 'ok' || headers.status !== 'ok') return NO_MATCH; // sniffHttp matched: cannot happen
  return { status: 'match', method: line.method, target: line.target, version: line.version, headers: headers.headers, end };
}

import assert from 'node:assert/strict';
import { isValidHostname, parseIPv4, parseIPv6 } from '../../src/core/names';
import {
  HTTP_SNIFF_MAX_BYTES,
  isHttpShaped,
  isLikelyHttpStart,
  parseHostHeader,
  sniffHttp,
  sniffHttpUnguarded,
  type HttpSniffResult,
} from '../../src/sniff/http';
import { inputRng, type Rng, type Target } from './harness';
import { authorityText, hostName } from './hosts';

const METHODS = [
  'GET',
  'POST',
  'HEAD',
  'PUT',
  'CONNECT',
  'OPTIONS',
  'DELETE',
  'PATCH',
  'VERSION-CONTROL',
  'M_SEARCH',
  'get',
  'G',
  'UPDATEREDIRECTREF',
  'ABCDEFGHIJKLMNOPQRSTU',
];
const HEADER_NAMES = [
  'User-Agent',
  'Accept',
  'Connection',
  'Content-Length',
  'Transfer-Encoding',
  'X-Forwarded-For',
  'Cookie',
  'host',
  'HOST',
  'X_Y',
  'Bad Name',
  'a@b',
];

function target(r: Rng, method: string): string {
  if (method === 'CONNECT' && r.chance(0.8)) return authorityText(r);
  switch (r.int(6)) {
    case 0:
      return `http://${r.chance(0.2) ? 'user:pw@' : ''}${authorityText(r)}${r.pick(['', '/', '/p?q=1', '#f', '?x'])}`;
    case 1:
      return '*';
    case 2:
      return `/${Buffer.from(hostName(r)).toString('latin1')}\u00e9`;
    default:
      return r.pick(['/', '/index.html', '/a/b?c=d&e=f', '/%2e%2e/', '//x']);
  }
}

/** A request head built from parts: request line, headers (Host among them), blank line, maybe a body. */
function requestHead(r: Rng): Buffer {
  const eol = r.chance(0.85) ? '\r\n' : '\n';
  const method = r.chance(0.8) ? r.pick(METHODS.slice(0, 9)) : r.pick(METHODS);
  const version = r.chance(0.85) ? r.pick(['HTTP/1.1', 'HTTP/1.0']) : r.pick(['HTTP/2.0', 'HTTP/1.10', 'HTTP/x.1', 'http/1.1']);
  const lines = [`${method} ${target(r, method)} ${version}`];
  const hosts = r.chance(0.9) ? (r.chance(0.05) ? 2 : 1) : 0;
  const headers: string[] = [];
  for (let i = 0; i < hosts; i++)
    headers.push(`${r.pick(['Host', 'host', 'HOST'])}:${r.pick([' ', '', '  ', '\t'])}${authorityText(r)}${r.pick(['', ' ', '\t'])}`);
  for (let i = r.int(6); i > 0; i--)
    headers.splice(
      r.int(headers.length + 1),
      0,
      `${r.pick(HEADER_NAMES)}: ${r.pick(['1', 'close', 'chunked', 'a b c', '', '\u00ff\u0080'])}`,
    );
  if (r.chance(0.05)) headers.push(' folded continuation');
  if (r.chance(0.02)) headers.push(`X-Pad: ${'a'.repeat(r.chance(0.2) ? r.range(2000, 70000) : r.range(100, 3000))}`);
  lines.push(...headers);
  let text = `${lines.join(eol)}${eol}${eol}`;
  if (r.chance(0.2)) text += r.pick(['body', '{"a":1}', 'GET / HTTP/1.1\r\n\r\n']);
  return Buffer.from(text, 'latin1');
}

/** Index just past the blank line that ends the head, or -1 (a reference written apart from findHeadEnd). */
function headEnd(buf: Buffer): number {
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] !== 0x0a) continue;
    if (buf[i + 1] === 0x0a) return i + 2;
    if (buf[i + 1] === 0x0d && buf[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}

/**
 * sniffHttp's verdict, checked against the scanner's: the same, except that
 * a no-match that starts as an HTTP request (isHttpShaped) is 'invalid'
 * (a 400, never a raw tunnel).
 */
function sniff(buf: Buffer): HttpSniffResult {
  const r = sniffHttpUnguarded(buf);
  const g = sniffHttp(buf);
  if (r.status === 'no-match' && isHttpShaped(buf)) {
    assert.equal(g.status, 'invalid');
    assert.ok(g.status === 'invalid' && g.reason.length > 0);
  } else {
    assert.deepEqual(g, r);
  }
  return g;
}

const NO_CONTROL = /^[^\x00-\x08\x0a-\x1f\x7f]*$/;

const stats = { match: 0, hostParsed: 0, noMatch: 0, invalid: 0, needMore: 0 };

export const httpTarget: Target = {
  name: 'http',
  generate: requestHead,
  stats,
  fixtures: [
    'GET / HTTP/1.1\r\nHost: example.test\r\n\r\n',
    'GET http://abs.example.test:8080/x HTTP/1.1\r\nHost: other.test\r\n\r\n',
    'CONNECT secure.test:443 HTTP/1.1\r\nHost: secure.test:443\r\n\r\n',
    'GET / HTTP/1.0\nHost: lf.test\n\n',
    'GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\nX-A: b\r\n  folded\r\n\r\n',
    'POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc',
  ].map((s) => Buffer.from(s, 'latin1')),
  check(buf: Buffer): void {
    const res = sniff(buf);
    if (res.status === 'need-more') stats.needMore++;
    else if (res.status === 'no-match') stats.noMatch++;
    else if (res.status === 'invalid') stats.invalid++;
    else stats.match++;
    const likely = isLikelyHttpStart(buf);
    const emptyLineFirst = buf[0] === 0x0d || buf[0] === 0x0a;
    if (!likely && !emptyLineFirst) assert.equal(res.status, 'no-match', 'not a plausible request start, yet not no-match');
    if (res.status === 'match') {
      assert.ok(likely);
      assert.match(res.method, /^[A-Z][A-Z_-]*$/);
      assert.match(res.version, /^HTTP\/[0-9]\.[0-9]$/);
      assert.match(res.target, /^[^\x00-\x20\x7f]+$/);
      const end = headEnd(buf);
      assert.ok(end !== -1 && end <= HTTP_SNIFF_MAX_BYTES, 'a match without a complete head');
      if (res.host !== undefined) {
        assert.match(res.host, NO_CONTROL, 'host carries control bytes');
        assert.notEqual(res.host, '');
        const h = parseHostHeader(res.host, 80);
        if (h !== undefined) {
          stats.hostParsed++;
          assert.ok(
            isValidHostname(h.host) || parseIPv4(h.host) === h.host || parseIPv6(h.host) === h.host,
            `host ${JSON.stringify(h.host)}`,
          );
          assert.ok(h.port >= 1 && h.port <= 65535);
        }
      }
    }
    // Bytes arrive in pieces: any prefix is undecided, or already says what the whole says.
    const cuts = new Set<number>([buf.length - 1, HTTP_SNIFF_MAX_BYTES - 1, HTTP_SNIFF_MAX_BYTES]);
    const end = headEnd(buf);
    if (end > 0) cuts.add(end - 1).add(end);
    const cr = inputRng(buf);
    for (let k = 0; k < 3; k++) cuts.add(cr.int(buf.length));
    for (const cut of cuts) {
      if (cut <= 0 || cut >= buf.length) continue;
      const p = sniff(buf.subarray(0, cut));
      // The reason of an 'invalid' may name another fault in a prefix (the size limit first, say); the verdict may not change.
      if (p.status === 'invalid') assert.equal(res.status, 'invalid', `prefix of ${cut} bytes decided invalid, the whole ${res.status}`);
      else if (p.status !== 'need-more') assert.deepEqual(p, res, `prefix of ${cut} bytes decided ${p.status}, the whole ${res.status}`);
      if (res.status === 'match' && cut < end)
        assert.equal(p.status, 'need-more', `prefix of ${cut} bytes, before the head ends at ${end}`);
      // Searched on from a prefix that needed more (the executors' contract): the same answer as from the start.
      if (p.status === 'need-more') assert.deepEqual(sniffHttp(buf, cut), sniffHttp(buf), `searched on from ${cut}`);
    }
  },
  describe(input: Buffer): string {
    return `${input.toString('hex')}\n  ${JSON.stringify(input.toString('latin1').slice(0, 500))}`;
  },
};

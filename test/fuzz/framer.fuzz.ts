import assert from 'node:assert/strict';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { parseAuthority } from '../../src/core/names';
import { RequestFramer, type RequestRoute } from '../../src/pipeline/http-framer';
import { checkRequest, type RequestCheck } from '../../src/pipeline/http-request';
import { readRequestHead } from '../../src/sniff/http';
import { cutAt, drive, summary, type DriveResult } from '../support/framer-driver';
import { inputRng, type Rng, type Target } from './harness';
import { authorityText } from './hosts';

/**
 * Request streams (several requests, bodies by Content-Length or chunked,
 * hostile framing headers) through RequestFramer, driven as the framed
 * relay drives it. Besides the step invariants the driver checks, every
 * head written upstream must read back as exactly one request for the
 * validated name, and the whole upstream stream, parsed by a strict
 * reference parser written apart from the framer, must hold exactly the
 * requests the framer forwarded: a request the gateway did not see (hidden
 * in a body it framed differently) is request smuggling.
 */

const DEST = '203.0.113.10';
const GATEWAY = '192.0.2.1';
const PROXY = parseProxyUrl('http://user:pw@proxy.test:3128');
const AUTH = 'Basic dXNlcjpwdw==';
const HOP_BY_HOP = ['keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade'];

type Check = Extract<RequestCheck, { ok: true }>;

const GOOD_HOSTS = [
  'a.test',
  'B.Example.',
  'direct.test',
  'hand.test',
  '198.51.100.7',
  '[2001:db8::1]',
  'a.test:8080',
  'localhost',
  '127.1',
];

/** Where a request goes, from its name alone, so every cut of one input routes alike. */
function route(c: Check): RequestRoute {
  const host = c.target?.host ?? '';
  if (host.startsWith('direct')) return { kind: 'direct', key: 'direct' };
  if (host.startsWith('hand')) return { kind: 'handover', why: 'lookup' };
  // Most go through the proxy; a name ending in a digit other way round, to exercise the route-key handover.
  return /[0-9]$/.test(host) && host.length % 3 === 0
    ? { kind: 'direct', key: 'direct' }
    : { kind: 'proxy', key: 'proxy', proxy: PROXY, proxies: [PROXY] };
}

function newFramer(seen: Check[]): RequestFramer {
  return new RequestFramer({
    port: 80,
    address: DEST,
    isLocal: (a) => a === GATEWAY,
    route: (c) => {
      seen.push(c);
      return route(c);
    },
  });
}

function chunkedBody(r: Rng): string {
  let s = '';
  for (let n = r.int(4); n > 0; n--) {
    const data = r.pick(['hello', 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n', '0\r\n\r\n', 'x'.repeat(r.range(1, 40))]);
    const size = r.chance(0.9) ? data.length : data.length + r.pick([-1, 1, 2]);
    const hex = r.chance(0.8)
      ? size.toString(16)
      : r.pick([size.toString(16).toUpperCase(), `00${size.toString(16)}`, `${size} `, `+${size}`]);
    const ext = r.chance(0.8) ? '' : r.pick([';a', ';a=b', ';a="q d"', '; a', ';a=', ';"x"', ';a="\x01"']);
    const eol = r.chance(0.95) ? '\r\n' : r.pick(['\n', '\r', '']);
    s += `${hex}${ext}${eol}${data}${r.chance(0.95) ? '\r\n' : r.pick(['\n', '', 'xx'])}`;
  }
  s += r.chance(0.9) ? '0\r\n' : r.pick(['0;x\r\n', '000\r\n', '0\n']);
  for (let n = r.chance(0.8) ? 0 : r.range(1, 3); n > 0; n--)
    s += r.pick(['X-T: 1\r\n', 'Content-Length: 5\r\n', ' fold\r\n', 'Bad Name: 1\r\n', 'X: \x00\r\n']);
  return s + (r.chance(0.95) ? '\r\n' : '');
}

/** One request: line, headers (Host, framing ones, Connection options), then a body framed or misframed. */
function request(r: Rng): string {
  const method = r.chance(0.85) ? r.pick(['GET', 'POST', 'PUT', 'HEAD', 'OPTIONS']) : r.pick(['TRACE', 'CONNECT', 'PRI', 'DELETE']);
  const host = r.chance(0.8) ? r.pick(GOOD_HOSTS) : authorityText(r);
  const target =
    method === 'PRI'
      ? '*'
      : r.chance(0.8)
        ? r.pick(['/', '/a?b=1', '/x/y'])
        : r.pick([`http://${r.chance(0.5) ? 'elsewhere.test' : '127.0.0.1:8081'}/p`, '*', 'http://a.test']);
  const version =
    method === 'PRI' ? 'HTTP/2.0' : r.chance(0.95) ? r.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0']) : r.pick(['HTTP/2.0', 'HTTP/1.2']);
  const headers: string[] = [];
  if (r.chance(0.92)) headers.push(`Host: ${host}`);
  let body = '';
  const framing = r.int(10);
  if (framing < 3) {
    body = r.pick(['', 'abc', 'GET /h HTTP/1.1\r\nHost: localhost\r\n\r\n', 'x'.repeat(r.range(0, 100))]);
    const len = r.chance(0.85)
      ? String(body.length)
      : r.pick([`${body.length + 1}`, `+${body.length}`, `${body.length}, ${body.length}`, '0x1', '', '99999999999999999']);
    headers.push(`${r.pick(['Content-Length', 'content-length'])}: ${len}`);
    if (r.chance(0.1)) headers.push(`Content-Length: ${r.chance(0.5) ? len : body.length + 2}`);
  } else if (framing < 6) {
    headers.push(
      `Transfer-Encoding: ${r.chance(0.85) ? 'chunked' : r.pick(['gzip, chunked', 'chunked, gzip', 'Chunked', 'gzip', 'chunked, chunked', ''])}`,
    );
    if (r.chance(0.05)) headers.push(`Content-Length: ${r.int(20)}`);
    body = chunkedBody(r);
  }
  for (let n = r.int(4); n > 0; n--) {
    headers.splice(
      r.int(headers.length + 1),
      0,
      r.pick([
        'Connection: keep-alive',
        'Connection: close',
        `Connection: ${r.pick(['content-length', 'transfer-encoding', 'x-a', 'upgrade', 'host', 'te'])}`,
        'X-A: 1',
        'Keep-Alive: 5',
        'Proxy-Authorization: Basic Y2xpZW50',
        'Proxy-Connection: keep-alive',
        'TE: trailers',
        'Upgrade: websocket',
        'User-Agent: fuzz',
        ' folded',
        'X-B: a\rb',
      ]),
    );
  }
  const eol = r.chance(0.95) ? '\r\n' : '\n';
  return `${method} ${target} ${version}${eol}${headers.map((h) => `${h}${eol}`).join('')}${eol}${body}`;
}

function stream(r: Rng): Buffer {
  let s = '';
  for (let n = r.range(1, r.chance(0.3) ? 5 : 2); n > 0; n--) s += request(r);
  if (r.chance(0.05)) s += r.pick(['\x16\x03\x01\x00', 'hello\r\n\r\n', '\r\nGET / HTTP/1.1\r\n\r\n']);
  return Buffer.from(s, 'latin1');
}

/** The requests in the upstream stream, read strictly (RFC 9112 6.3 for requests) by code that shares nothing with the framer. */
function referenceParse(up: Buffer): { heads: string[]; complete: boolean } {
  const text = up.toString('latin1');
  const heads: string[] = [];
  let pos = 0;
  const line = (): string | undefined => {
    const e = text.indexOf('\r\n', pos);
    if (e === -1) return undefined;
    const l = text.slice(pos, e);
    pos = e + 2;
    return l;
  };
  while (pos < text.length) {
    const end = text.indexOf('\r\n\r\n', pos);
    assert.ok(end !== -1, `upstream ends inside a request head at ${pos}`);
    const head = text.slice(pos, end + 4);
    pos = end + 4;
    heads.push(head);
    const lines = head.slice(0, -4).split('\r\n');
    assert.match(lines[0]!, /^[A-Z_-]+ [^\x00-\x20\x7f]+ HTTP\/1\.[01]$/, 'request line');
    const te: string[] = [];
    const cl: string[] = [];
    for (const l of lines.slice(1)) {
      const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?(.*)$/.exec(l);
      assert.ok(m, `header line ${JSON.stringify(l)}`);
      assert.doesNotMatch(l, /[\x00-\x08\x0a-\x1f\x7f]/, 'control byte in a header');
      const name = m[1]!.toLowerCase();
      if (name === 'transfer-encoding') te.push(m[2]!.trim());
      if (name === 'content-length') cl.push(m[2]!.trim());
      // A recipient honouring the option would drop the framing header before it reads the body.
      if (name === 'connection') {
        const options = m[2]!.split(',').map((o) => o.trim().toLowerCase());
        assert.ok(
          !options.includes('content-length') && !options.includes('transfer-encoding'),
          'Connection names a framing header upstream',
        );
      }
    }
    // RFC 9112 6.1: an HTTP/1.0 recipient may not know chunked; its framing would then differ from ours.
    if (te.length > 0) assert.ok(!lines[0]!.endsWith('HTTP/1.0'), 'Transfer-Encoding in an HTTP/1.0 request upstream');
    if (te.length > 0) {
      assert.equal(cl.length, 0, 'Transfer-Encoding with Content-Length upstream');
      assert.match(te.join(',').toLowerCase(), /(^|,)\s*chunked$/, 'a Transfer-Encoding upstream that does not end in chunked');
      for (;;) {
        const l = line();
        if (l === undefined) return { heads, complete: false };
        const m = /^([0-9a-fA-F]+)(;[^\x00-\x08\x0a-\x1f\x7f]*)?$/.exec(l);
        assert.ok(m, `chunk-size line ${JSON.stringify(l)}`);
        const size = parseInt(m[1]!, 16);
        if (size === 0) break;
        if (pos + size + 2 > text.length) return { heads, complete: false };
        pos += size;
        assert.equal(text.slice(pos, pos + 2), '\r\n', 'chunk data not followed by CRLF upstream');
        pos += 2;
      }
      for (;;) {
        const l = line();
        if (l === undefined) return { heads, complete: false };
        if (l === '') break;
        assert.match(l, /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*$/, 'trailer field upstream');
      }
    } else if (cl.length > 0) {
      assert.ok(
        cl.every((v) => v === cl[0] && /^[0-9]+$/.test(v)),
        `Content-Length ${cl.join(' / ')} upstream`,
      );
      const n = Number(cl[0]);
      if (pos + n > text.length) return { heads, complete: false };
      pos += n;
    }
  }
  return { heads, complete: true };
}

const stats = { forwarded: 0, multi: 0, chunked: 0, refused: 0, handover: 0, notHttp: 0 };

function checkHeads(res: DriveResult, seen: Check[]): void {
  const heads = res.forwards.filter((f) => f.route !== undefined);
  assert.ok(seen.length >= heads.length);
  heads.forEach((f, i) => {
    const check = seen[i]!;
    const route = f.route!;
    assert.notEqual(route.kind, 'handover');
    const back = readRequestHead(Buffer.from(f.out, 'latin1'));
    assert.equal(back.status, 'match', `head ${JSON.stringify(f.out)} does not read back`);
    if (back.status !== 'match') return;
    assert.equal(back.end, f.out.length, 'a head step writes more than one head');
    const again = checkRequest({
      method: back.method,
      url: back.target,
      rawHeaders: back.headers.flat(),
      port: 80,
      isLocal: (a) => a === GATEWAY,
    });
    assert.ok(again.ok, `the rebuilt head is refused: ${again.ok ? '' : again.reason}`);
    const names = back.headers.map(([n]) => n.toLowerCase());
    if (route.kind === 'proxy') {
      const m = /^http:\/\/([^/?#]*)/.exec(back.target);
      assert.ok(m, `not an absolute URI: ${back.target}`);
      const a = parseAuthority(m[1]!, 80);
      assert.ok(a !== undefined, `URI authority ${m[1]}`);
      assert.equal(a.target.host, check.target?.host ?? DEST, 'the request line names another host than the one validated');
      assert.equal(a.port, 80);
      assert.deepEqual(
        back.headers.filter(([n]) => n.toLowerCase() === 'proxy-authorization').map(([, v]) => v),
        [AUTH],
      );
    } else {
      assert.ok(back.target.startsWith('/') || back.target === '*', `not origin form: ${back.target}`);
      assert.equal(again.ok ? again.target?.host : 'refused', check.target?.host, 'the Host names another host than the one validated');
      assert.ok(!names.includes('proxy-authorization'), 'a Proxy-Authorization passed direct');
    }
    // One head builder for both routes (outbound/request-head.ts): hop-by-hop headers go, Connection is written anew.
    for (const h of HOP_BY_HOP) assert.ok(!names.includes(h), `${h} passed ${route.kind}`);
    const conn = back.headers.filter(([n]) => n.toLowerCase() === 'connection').map(([, v]) => v);
    assert.ok(conn.length === 0 || (conn.length === 1 && /^(close|keep-alive)$/.test(conn[0]!)), `Connection ${conn.join()}`);
  });
}

export const framerTarget: Target = {
  name: 'framer',
  generate: stream,
  stats,
  fixtures: [
    'GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n',
    'POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a.test\r\n\r\n',
    'POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n',
    'POST / HTTP/1.1\r\nHost: direct.test\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello',
    'GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n',
  ].map((s) => Buffer.from(s, 'latin1')),
  check(input: Buffer): void {
    const seen: Check[] = [];
    const whole = drive(newFramer(seen), [input]);
    checkHeads(whole, seen);
    const heads = whole.forwards.filter((f) => f.route !== undefined).map((f) => f.out);
    const ref = referenceParse(whole.upstream);
    assert.deepEqual(ref.heads, heads, 'the upstream stream holds other requests than those forwarded');
    if (whole.end.kind === 'eof-in-body') assert.equal(ref.complete, false);

    if (heads.length > 0) stats.forwarded++;
    if (heads.length > 1) stats.multi++;
    if (whole.forwards.length > heads.length) stats.chunked++;
    if (whole.end.kind === 'refuse') stats.refused++;
    if (whole.end.kind === 'handover') stats.handover++;
    if (whole.end.kind === 'not-http') stats.notHttp++;

    // Cut anywhere, the same bytes go upstream and the run ends the same way.
    const expected = summary(whole);
    // A few cuts per input (the unit tests cut their fixtures at every byte): many tiny pieces would make each
    // input cost a rescan of its head per piece, and the target must stay fast.
    if (input.length > 1) {
      const r = inputRng(input);
      const cuts = Array.from({ length: r.range(1, 4) }, () => r.range(1, input.length - 1)).sort((x, y) => x - y);
      assert.deepEqual(summary(drive(newFramer([]), cutAt(input, cuts))), expected, `cut at ${cuts.join(',')}`);
    }
  },
  describe(input: Buffer): string {
    return `${input.toString('hex')}\n  ${JSON.stringify(input.toString('latin1').slice(0, 800))}`;
  },
};

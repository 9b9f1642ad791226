import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseProxyUrl, type ProxyEndpoint } from '../../src/config/proxy-url';
import { ErrorCodes } from '../../src/core/errors';
import { RequestFramer, type FramerDeps, type RequestRoute } from '../../src/pipeline/http-framer';
import type { RequestCheck } from '../../src/pipeline/http-request';
import { Rng } from '../fuzz/harness';
import { cutAt, drive, summary, type DriveResult } from '../support/framer-driver';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Where the client connected (the original destination) and an address of this gateway. */
const DEST = '203.0.113.10';
const GATEWAY = '192.0.2.1';
const PROXY: ProxyEndpoint = parseProxyUrl('http://user:pw@proxy.test:3128');
const AUTH = 'Proxy-Authorization: Basic dXNlcjpwdw==\r\n';

type Check = Extract<RequestCheck, { ok: true }>;
type Router = (check: Check) => RequestRoute;

const toProxy: Router = () => ({ kind: 'proxy', key: 'proxy', proxy: PROXY, proxies: [PROXY] });
const direct: Router = () => ({ kind: 'direct', key: 'direct' });

function framer(route: Router = toProxy, seen: Check[] = [], port = 80): RequestFramer {
  const deps: FramerDeps = {
    port,
    address: DEST,
    isLocal: (a) => a === GATEWAY,
    route: (check) => {
      seen.push(check);
      return route(check);
    },
  };
  return new RequestFramer(deps);
}

/**
 * Runs `input` through a fresh framer whole, then cut at every byte
 * boundary, one byte at a time, and in seeded random pieces: the framer
 * decides at boundaries only, so every cutting must send the same bytes
 * upstream and end the same way. Returns the whole run.
 */
function run(input: string | Buffer, route: Router = toProxy, seen: Check[] = []): DriveResult {
  const bytes = typeof input === 'string' ? b(input) : input;
  const whole = drive(framer(route, seen), [bytes]);
  const expected = summary(whole);
  const cuttings: Buffer[][] = [];
  // Every boundary of a short input; of a long one (the limit tests) every 97th, so the suite stays fast.
  const step = bytes.length <= 1024 ? 1 : 97;
  for (let c = 1; c < bytes.length; c += step) cuttings.push(cutAt(bytes, [c]));
  if (bytes.length <= 8192)
    cuttings.push(
      cutAt(
        bytes,
        Array.from({ length: bytes.length }, (_, i) => i),
      ),
    );
  const r = new Rng(bytes.length);
  // Tiny pieces of a long input cost a rescan each (the trailer section is read from its start at every call).
  for (let k = 0; k < (bytes.length <= 8192 ? 20 : 2); k++) {
    const cuts: number[] = [];
    for (let at = r.range(1, 16); at < bytes.length; at += r.range(1, 24)) cuts.push(at);
    cuttings.push(cutAt(bytes, cuts));
  }
  for (const chunks of cuttings) {
    const got = summary(drive(framer(route), chunks));
    assert.deepEqual(got, expected, `cut into ${chunks.map((c) => c.length).join('+')} bytes`);
  }
  return whole;
}

function assertRefused(r: DriveResult, status: number, code: string, reason?: RegExp): void {
  assert.equal(r.end.kind, 'refuse', `ended ${JSON.stringify(r.end)}`);
  if (r.end.kind !== 'refuse') return;
  assert.equal(r.end.status, status);
  assert.equal(r.end.code, code);
  if (reason) assert.match(r.end.reason, reason);
}

const refusedBad = (r: DriveResult, reason?: RegExp): void => assertRefused(r, 400, ErrorCodes.BAD_REQUEST, reason);

describe('RequestFramer rebuilds request heads', () => {
  it('GET with Host goes to the proxy in absolute form, with the route proxy credentials', () => {
    const r = run('GET /a?b=1 HTTP/1.1\r\nHost: Example.TEST\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n');
    assert.deepEqual(r.end, { kind: 'eof' });
    assert.equal(
      r.upstream.toString('latin1'),
      `GET http://example.test/a?b=1 HTTP/1.1\r\nHost: Example.TEST\r\nUser-Agent: t\r\nAccept: */*\r\n${AUTH}\r\n`,
    );
    assert.equal(r.forwards[0]!.budget, 0);
    assert.equal(r.forwards[0]!.route?.kind, 'proxy');
  });

  it('a request without Host is named by the destination address, not left for the proxy to guess', () => {
    const seen: Check[] = [];
    const r = run('GET / HTTP/1.0\r\n\r\n', toProxy, seen);
    assert.equal(r.upstream.toString('latin1'), `GET http://${DEST}/ HTTP/1.0\r\n${AUTH}\r\n`);
    assert.equal(seen[0]!.target, undefined);
  });

  it('a destination port other than 80 is in the absolute URI (the port the client connected to)', () => {
    const f = framer(toProxy, [], 8080);
    const r = drive(f, [b('GET /x HTTP/1.1\r\nHost: a.test:9999\r\n\r\n')]);
    assert.equal(r.upstream.toString('latin1'), `GET http://a.test:8080/x HTTP/1.1\r\nHost: a.test:9999\r\n${AUTH}\r\n`);
  });

  it('the authority of an absolute-form target is never used: the Host is (GET http://127.0.0.1:8081/ past the check)', () => {
    const seen: Check[] = [];
    const r = run('GET http://elsewhere.test:8081/p?q HTTP/1.1\r\nHost: good.test\r\n\r\n', toProxy, seen);
    assert.equal(r.upstream.toString('latin1'), `GET http://good.test/p?q HTTP/1.1\r\nHost: good.test\r\n${AUTH}\r\n`);
    assert.equal(seen[0]!.target?.host, 'good.test');
    // Direct: origin form, and the Host as sent.
    const d = run('GET http://elsewhere.test:8081/p?q HTTP/1.1\r\nHost: good.test\r\n\r\n', direct);
    assert.equal(d.upstream.toString('latin1'), 'GET /p?q HTTP/1.1\r\nHost: good.test\r\n\r\n');
    // Without a Host, the destination address, not the URI's authority.
    const n = run('GET http://elsewhere.test/ HTTP/1.1\r\n\r\n');
    assert.equal(n.upstream.toString('latin1'), `GET http://${DEST}/ HTTP/1.1\r\n${AUTH}\r\n`);
  });

  it('a keep-alive sequence of 3 requests is framed request by request', () => {
    const seen: Check[] = [];
    const r = run(
      'GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: a.test\r\n\r\n',
      toProxy,
      seen,
    );
    assert.deepEqual(r.end, { kind: 'eof' });
    assert.deepEqual(
      r.forwards.map((f) => f.out.split('\r\n')[0]),
      ['GET http://a.test/1 HTTP/1.1', 'GET http://a.test/2 HTTP/1.1', 'HEAD http://a.test/3 HTTP/1.1'],
    );
    assert.equal(seen.length, 3);
  });

  it('HTTP/1.0 keep-alive survives for the proxy (Connection is hop-by-hop, so it is written anew)', () => {
    const r = run('GET / HTTP/1.0\r\nHost: a.test\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\r\n');
    assert.equal(r.upstream.toString('latin1'), `GET http://a.test/ HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n${AUTH}\r\n`);
  });

  it('Connection: close reaches the proxy, so it ends the upstream connection too', () => {
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    assert.equal(r.upstream.toString('latin1'), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n${AUTH}\r\n`);
  });

  // Direct used to keep them (all but Proxy-*) while the Node path removed them: one head builder for both now.
  it('hop-by-hop and Connection-named headers are removed for the proxy and direct alike', () => {
    const head =
      'GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\nTE: trailers\r\n' +
      'Trailer: X-T\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Y2xpZW50OmNyZWRz\r\nX-Keep: k\r\n\r\n';
    const p = run(head);
    assert.equal(p.upstream.toString('latin1'), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Keep: k\r\n${AUTH}\r\n`);
    const d = run(head, direct);
    assert.equal(d.upstream.toString('latin1'), 'GET / HTTP/1.1\r\nHost: a.test\r\nX-Keep: k\r\n\r\n');
  });

  it('a client Proxy-Authorization never reaches the proxy, and a proxy without credentials gets none', () => {
    const anon = parseProxyUrl('http://proxy.test:3128');
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic Y2xpZW50OmNyZWRz\r\n\r\n', () => ({
      kind: 'proxy',
      key: 'p',
      proxy: anon,
      proxies: [anon],
    }));
    assert.equal(r.upstream.toString('latin1'), 'GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n');
  });

  it('bare LF line ends are rebuilt with CRLF (the proxy never has to agree with our tolerance)', () => {
    const r = run('GET / HTTP/1.1\nHost: a.test\nX-A: 1\n\n');
    assert.equal(r.upstream.toString('latin1'), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n${AUTH}\r\n`);
  });

  it('obs-fold is joined into one line: the rebuilt head has no continuation line for the proxy to read otherwise', () => {
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\nX-A: one\r\n  two\r\n\tthree\r\n\r\n', direct);
    assert.equal(r.upstream.toString('latin1'), 'GET / HTTP/1.1\r\nHost: a.test\r\nX-A: one two three\r\n\r\n');
    // A folded Host is the Host the check validated, and only that is written.
    const seen: Check[] = [];
    const h = run('GET / HTTP/1.1\r\nHost:\r\n a.test\r\n\r\n', toProxy, seen);
    assert.equal(seen[0]!.target?.host, 'a.test');
    assert.equal(h.upstream.toString('latin1'), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n${AUTH}\r\n`);
    // A folded Transfer-Encoding frames as the joined value, which is what is forwarded.
    const c = run('POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n', direct);
    assert.equal(c.upstream.toString('latin1'), 'POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n');
    // A fold as the first header line continues nothing: refused, never forwarded.
    refusedBad(run('GET / HTTP/1.1\r\n X: y\r\nHost: a.test\r\n\r\n'));
  });
});

describe('RequestFramer frames bodies exactly', () => {
  it('a Content-Length body passes verbatim and the request after it is read as a request', () => {
    const body = 'GET /hidden HTTP/1.1\r\nHost: localhost\r\n\r\n'; // inside a body it is data, not a request
    const r = run(
      `POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: ${body.length}\r\n\r\n${body}GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n`,
    );
    assert.deepEqual(r.end, { kind: 'eof' });
    assert.equal(r.forwards.length, 2);
    assert.equal(r.forwards[0]!.budget, body.length);
    assert.equal(
      r.upstream.toString('latin1'),
      `POST http://a.test/up HTTP/1.1\r\nHost: a.test\r\nContent-Length: ${body.length}\r\n${AUTH}\r\n${body}` +
        `GET http://a.test/next HTTP/1.1\r\nHost: a.test\r\n${AUTH}\r\n`,
    );
  });

  it('a body that ends early is owed, not taken from what follows', () => {
    const r = run('POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\nabc');
    assert.deepEqual(r.end, { kind: 'eof-in-body', budget: 7 });
  });

  it('repeated equal Content-Lengths frame as one; leading zeros are the same number', () => {
    const r = run('POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 003\r\nContent-Length: 003\r\n\r\nabc', direct);
    assert.equal(r.forwards[0]!.budget, 3);
    assert.deepEqual(r.end, { kind: 'eof' });
  });

  it('a chunked body with extensions and trailers passes verbatim, line by line', () => {
    const body = '5;name=val;q="a b"\r\nhello\r\nA\r\n0123456789\r\n0;last\r\nX-Sum: 1\r\nX-Empty:\r\n\r\n';
    const r = run(
      `POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n${body}GET /n HTTP/1.1\r\nHost: a.test\r\n\r\n`,
      direct,
    );
    assert.deepEqual(r.end, { kind: 'eof' });
    assert.equal(
      r.upstream.toString('latin1'),
      `POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n${body}GET /n HTTP/1.1\r\nHost: a.test\r\n\r\n`,
    );
    // Head, size line, chunk end, size line, chunk end, last chunk, trailers, the next head.
    assert.deepEqual(
      r.forwards.map((f) => f.budget),
      [0, 5, 0, 10, 0, 0, 0, 0],
    );
  });

  it('a chunk whose data looks like a request stays data (the budget covers it)', () => {
    const inner = 'GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
    const r = run(
      `POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`,
    );
    assert.deepEqual(r.end, { kind: 'eof' });
    assert.equal(r.forwards.length, 5);
  });
});

describe('RequestFramer refuses what it cannot frame exactly (request smuggling)', () => {
  const post = (headers: string, body = ''): string => `POST / HTTP/1.1\r\nHost: a.test\r\n${headers}\r\n${body}`;
  const chunked = (body: string): string => post('Transfer-Encoding: chunked\r\n', body);

  it('Transfer-Encoding and Content-Length together (CL.TE / TE.CL desync)', () => {
    refusedBad(run(post('Content-Length: 4\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n')), /both/);
    refusedBad(run(post('Transfer-Encoding: chunked\r\nContent-Length: 0\r\n', '0\r\n\r\n')), /both/);
  });

  it('a Transfer-Encoding that does not end in chunked, or has chunked twice (length unknown to one side)', () => {
    refusedBad(run(post('Transfer-Encoding: gzip\r\n')), /cannot be framed/);
    refusedBad(run(post('Transfer-Encoding: chunked, gzip\r\n')), /cannot be framed/);
    refusedBad(run(post('Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n')), /cannot be framed/);
    refusedBad(run(post('Transfer-Encoding: xchunked\r\n')), /cannot be framed/);
    refusedBad(run(post('Transfer-Encoding:\r\n')), /cannot be framed/);
  });

  it('two different Content-Lengths (which one the proxy takes is its choice, not ours)', () => {
    refusedBad(run(post('Content-Length: 3\r\nContent-Length: 4\r\n', 'abcd')), /Content-Length/);
    refusedBad(run(post('Content-Length: 3, 4\r\n', 'abcd')), /Content-Length/);
  });

  it('a Content-Length that is not plain digits, or too large to be exact', () => {
    for (const v of ['+3', '-1', '3 3', '0x10', '3.0', '', ' ', '1e3', '1234567890123456', '99999999999999999999']) {
      refusedBad(run(post(`Content-Length: ${v}\r\n`, 'abc')), /Content-Length/);
    }
  });

  it('a chunk-size line that is not hex[;ext]CRLF (bare LF, spaces, non-hex, empty, sign)', () => {
    for (const line of [
      '5\nhello',
      '5 \r\nhello',
      ' 5\r\nhello',
      '5 ;a\r\nhello',
      'g\r\n',
      '\r\n',
      '+5\r\nhello',
      '0x5\r\nhello',
      '5;\r\nhello',
      '5;a=\r\nhello',
      '5;a="b\r\nhello',
      '5;a="\x01"\r\nhello',
      '5;a="\x7f"\r\nhello',
    ]) {
      refusedBad(run(chunked(`${line}\r\n0\r\n\r\n`), direct), /chunk-size line/);
    }
  });

  it('chunk data not followed by CRLF (the proxy would read the next chunk line elsewhere)', () => {
    refusedBad(run(chunked('3\r\nabcd\r\n0\r\n\r\n')), /CRLF/);
    refusedBad(run(chunked('3\r\nabc\n0\r\n\r\n')), /CRLF/);
  });

  it('an over-long chunk-size line, however it arrives (a peer with a smaller limit would cut it elsewhere)', () => {
    refusedBad(run(chunked(`5;${'a'.repeat(5000)}\r\nhello\r\n0\r\n\r\n`)), /too long/);
    refusedBad(run(chunked(`5;${'a'.repeat(5000)}`)), /too long/);
  });

  it('the chunk-line and trailer limits hold at their edge whatever the cut (a limit met only when bytes arrive in pieces)', () => {
    const head = b(chunked(''));
    // A chunk-size line whose content (less CRLF) is one byte under the limit passes, at the limit it is refused.
    for (const [len, ok] of [
      [4095, true],
      [4096, false],
    ] as const) {
      const line = `5;${'a'.repeat(len - 2)}`;
      const bytes = Buffer.concat([head, b(`${line}\r\nhello\r\n0\r\n\r\n`)]);
      const cr = head.length + line.length + 1; // the line and its CR, without the LF
      const whole = summary(drive(framer(), [bytes]));
      assert.equal(whole.end.kind, ok ? 'eof' : 'refuse', `line of ${len}`);
      for (const cut of [cr - 1, cr, cr + 1])
        assert.deepEqual(summary(drive(framer(), cutAt(bytes, [cut]))), whole, `line of ${len} cut at ${cut}`);
    }
    // A trailer section of exactly the limit (16 KiB before its empty line) passes, cut before the empty line's LF too.
    const lines = `X-A: ${'a'.repeat(1017)}\r\n`.repeat(16);
    assert.equal(lines.length, 16 * 1024);
    const bytes = Buffer.concat([head, b(`0\r\n${lines}\r\n`)]);
    const whole = summary(drive(framer(), [bytes]));
    assert.deepEqual(whole.end, { kind: 'eof' });
    assert.deepEqual(summary(drive(framer(), cutAt(bytes, [bytes.length - 1]))), whole);
    const over = Buffer.concat([head, b(`0\r\n${lines}X: 1\r\n\r\n`)]);
    refusedBad(drive(framer(), [over]), /too long/);
    refusedBad(drive(framer(), cutAt(over, [over.length - 1])), /too long/);
  });

  it('a chunk size beyond what a budget carries exactly (2^53)', () => {
    refusedBad(run(chunked('fffffffffffffff\r\n')), /chunk/);
    const ok = run(chunked('fffffffffffff\r\n'));
    assert.deepEqual(ok.end, { kind: 'eof-in-body', budget: 0xfffffffffffff });
  });

  it('a malformed trailer (obs-fold, no colon, bare LF, control byte, bad name)', () => {
    for (const t of [' folded\r\n', 'NoColon\r\n', 'X-A: 1\nX-B: 2\r\n', 'X-A: \x00\r\n', 'Bad Name: 1\r\n', 'X-A: a\rb\r\n']) {
      refusedBad(run(chunked(`0\r\n${t}\r\n`)), /trailer/);
    }
  });

  it('an over-long trailer section', () => {
    refusedBad(run(chunked(`0\r\n${'X-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'.repeat(600)}\r\n`)), /too long/);
  });

  it('a bare CR or a NUL in the head (header injection)', () => {
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\rHost: b.test\r\n\r\n'));
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n'));
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\x00.evil.test\r\n\r\n'));
  });

  it('two Host headers (which one the proxy takes is its choice)', () => {
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n'), /two Host/);
  });

  it('a Connection header naming a framing header (it would be removed for the proxy, the body left to read as requests)', () => {
    const smuggled = 'GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n';
    refusedBad(run(post(`Connection: content-length\r\nContent-Length: ${smuggled.length}\r\n`, smuggled)), /Connection/);
    refusedBad(
      run(
        post(
          'Connection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n',
          `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
        ),
      ),
      /Connection/,
    );
  });

  it('Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1: faulty framing; a 1.0 parser reads the chunks as requests)', () => {
    refusedBad(run('POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'), /HTTP\/1\.0/);
  });

  it('bytes after a request that are not HTTP are refused, not carried as data', () => {
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n\x16\x03\x01\x02\x00\x01\x00'), /not an HTTP request/);
    refusedBad(run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nhello world\r\n\r\n'));
  });

  it('a malformed second request is refused after the first was forwarded', () => {
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\nBad Name: x\r\n\r\n');
    assert.equal(r.forwards.length, 1);
    refusedBad(r);
  });
});

describe('RequestFramer refuses requests the gateway must not carry', () => {
  it('TRACE, TRACK and CONNECT get 405 (TRACE echoes the proxy credentials; CONNECT asks for a tunnel)', () => {
    for (const req of [
      'TRACE / HTTP/1.1\r\nHost: a.test\r\n\r\n',
      'TRACK / HTTP/1.1\r\nHost: a.test\r\n\r\n',
      'CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n',
    ]) {
      const r = run(req);
      assertRefused(r, 405, ErrorCodes.METHOD);
      assert.equal(r.upstream.length, 0);
    }
  });

  it('a Host naming localhost, loopback (in any spelling) or the gateway gets 403 (the proxy would reach itself)', () => {
    for (const host of [
      'localhost',
      'LocalHost.',
      'foo.localhost',
      '127.1',
      '127.0.0.1:8081',
      '0x7f000001',
      '[::1]',
      '[::ffff:127.0.0.1]',
      GATEWAY,
      '169.254.169.254',
      '0',
    ]) {
      const r = run(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      assertRefused(r, 403, ErrorCodes.FORBIDDEN_TARGET);
      assert.equal(r.upstream.length, 0, host);
    }
  });

  it('an absolute-form target naming loopback gets 403 even with a good Host', () => {
    assertRefused(run('GET http://127.0.0.1:8081/ HTTP/1.1\r\nHost: a.test\r\n\r\n'), 403, ErrorCodes.FORBIDDEN_TARGET);
  });

  it('a Host that is no host name gets 400, and nothing of it is written upstream', () => {
    for (const host of ['a b', 'a.test/x', 'a..test', 'user@a.test', '"a.test"']) {
      const r = run(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      refusedBad(r);
      assert.equal(r.upstream.length, 0, host);
    }
  });

  it('a forbidden second request is refused after the first was forwarded', () => {
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
    assert.equal(r.forwards.length, 1);
    assertRefused(r, 403, ErrorCodes.FORBIDDEN_TARGET);
  });
});

describe('RequestFramer hands over what the fast path does not carry', () => {
  it('a second request that goes another way is handed over (the spliced responses would come from the wrong upstream)', () => {
    const byHost: Router = (c) =>
      c.target?.host === 'direct.test'
        ? { kind: 'direct', key: 'direct' }
        : { kind: 'proxy', key: 'proxy', proxy: PROXY, proxies: [PROXY] };
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: direct.test\r\n\r\n', byHost);
    assert.equal(r.forwards.length, 1);
    assert.equal(r.end.kind, 'handover');
    // Same way: carried.
    const same = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n', byHost);
    assert.equal(same.forwards.length, 2);
  });

  it('a route that must look the name up hands over before anything is written', () => {
    const r = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n', () => ({ kind: 'handover', why: 'lookup' }));
    assert.deepEqual(r.end, { kind: 'handover', why: 'lookup' });
    assert.equal(r.upstream.length, 0);
  });

  it('Upgrade (websocket, h2c) is handed over: after it the bytes are not HTTP requests', () => {
    const ws = run('GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x85');
    assert.equal(ws.end.kind, 'handover');
    assert.equal(ws.upstream.length, 0);
    assert.equal(run('GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: h2c\r\n\r\n').end.kind, 'handover');
    assert.equal(run('GET / HTTP/1.1\r\nHost: a.test\r\nConnection: upgrade\r\n\r\n').end.kind, 'handover');
  });

  it('the HTTP/2 prior-knowledge preface is handed over, never carried as raw TCP past the proxy', () => {
    const r = run('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00');
    assert.deepEqual(r.end, { kind: 'handover', why: 'HTTP/2.0 request' });
    // After a request too: the Node path answers it.
    const after = run('GET / HTTP/1.1\r\nHost: a.test\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    assert.equal(after.forwards.length, 1);
    assert.equal(after.end.kind, 'handover');
  });

  it('first bytes that are not HTTP at all are not-http (raw TCP), and nothing is written', () => {
    for (const first of ['\x16\x03\x01\x00\x05hello', 'SSH-2.0-OpenSSH_9.6\r\n']) {
      const r = run(first);
      assert.deepEqual(r.end, { kind: 'not-http' }, JSON.stringify(first));
      assert.equal(r.upstream.length, 0);
    }
  });
});

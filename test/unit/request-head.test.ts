import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseNoProxy } from '../../src/config/no-proxy';
import { parseProxyUrl, type ProxyEndpoint } from '../../src/config/proxy-url';
import { ConnContext } from '../../src/core/context';
import { Logger } from '../../src/core/log';
import {
  connectRequest,
  forwardHead,
  serialize,
  upgradeHead,
  type ForwardRequest,
  type HeadRoute,
  type HeaderPair,
} from '../../src/outbound/request-head';
import { Outbounds } from '../../src/outbound/outbounds';
import { RequestFramer } from '../../src/pipeline/http-framer';
import type { Relay } from '../../src/relay/relay';
import type { HostVerifier } from '../../src/route/host-verify';
import { Router } from '../../src/route/router';
import { HttpSession } from '../../src/relay/http-session';
import { drive } from '../support/framer-driver';

const PROXY: ProxyEndpoint = parseProxyUrl('http://user:pw@proxy.test:3128');
const AUTH = 'Proxy-Authorization: Basic dXNlcjpwdw==\r\n';
const toProxy: HeadRoute = { kind: 'proxy', proxy: PROXY };
const direct: HeadRoute = { kind: 'direct' };

function request(over: Partial<ForwardRequest> & { headers: HeaderPair[] }): ForwardRequest {
  return { method: 'GET', version: 'HTTP/1.1', host: 'a.test', port: 80, path: '/p?q=1', ...over };
}

const head = (req: ForwardRequest, route: HeadRoute): string => serialize(forwardHead(req, route));

describe('forwardHead: the upstream head of a plain HTTP request', () => {
  it('goes to the proxy in absolute form with the endpoint credentials, the client headers in their order and case', () => {
    const req = request({
      headers: [
        ['Host', 'A.Test'],
        ['user-agent', 'ua'],
        ['X-Two', '1'],
        ['x-two', '2'],
      ],
    });
    assert.equal(
      head(req, toProxy),
      `GET http://a.test/p?q=1 HTTP/1.1\r\nHost: A.Test\r\nuser-agent: ua\r\nX-Two: 1\r\nx-two: 2\r\n${AUTH}\r\n`,
    );
  });

  it('a proxy without credentials gets no Proxy-Authorization, and never the client one', () => {
    const anon: HeadRoute = { kind: 'proxy', proxy: parseProxyUrl('http://proxy.test:3128') };
    const req = request({
      headers: [
        ['Host', 'a.test'],
        ['Proxy-Authorization', 'Basic Y2xpZW50OmNyZWRz'],
      ],
    });
    assert.equal(head(req, anon), 'GET http://a.test/p?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n');
    // With credentials: the endpoint's, once, in place of the client's.
    assert.equal(head(req, toProxy), `GET http://a.test/p?q=1 HTTP/1.1\r\nHost: a.test\r\n${AUTH}\r\n`);
  });

  it('goes direct in origin form, with no proxy credentials at all', () => {
    const req = request({
      headers: [
        ['Host', 'a.test'],
        ['Proxy-Authorization', 'Basic Y2xpZW50OmNyZWRz'],
        ['Accept', '*/*'],
      ],
    });
    assert.equal(head(req, direct), 'GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n');
  });

  it('an IPv6 host is bracketed in the absolute URI, with and without a port', () => {
    const req = request({ host: '2001:db8::5', path: '/', headers: [['Host', '[2001:DB8::5]']] });
    assert.equal(head(req, toProxy), `GET http://[2001:db8::5]/ HTTP/1.1\r\nHost: [2001:DB8::5]\r\n${AUTH}\r\n`);
    assert.equal(head({ ...req, port: 8080 }, toProxy), `GET http://[2001:db8::5]:8080/ HTTP/1.1\r\nHost: [2001:DB8::5]\r\n${AUTH}\r\n`);
  });

  it('the URI port is the one the client connected to; a Host with a port passes as sent', () => {
    const req = request({ path: '/', headers: [['Host', 'a.test:9999']] });
    assert.equal(head(req, toProxy), `GET http://a.test/ HTTP/1.1\r\nHost: a.test:9999\r\n${AUTH}\r\n`);
    assert.equal(head({ ...req, port: 8080 }, toProxy), `GET http://a.test:8080/ HTTP/1.1\r\nHost: a.test:9999\r\n${AUTH}\r\n`);
    assert.equal(head({ ...req, port: 8080 }, direct), 'GET / HTTP/1.1\r\nHost: a.test:9999\r\n\r\n');
  });

  it('removes hop-by-hop headers and those Connection names, on both routes', () => {
    const req = request({
      path: '/',
      headers: [
        ['Host', 'a.test'],
        ['Connection', 'keep-alive, X-Secret'],
        ['connection', 'x-other'],
        ['Keep-Alive', 'timeout=5'],
        ['X-Secret', 's'],
        ['X-Other', 'o'],
        ['TE', 'trailers'],
        ['Trailer', 'X-T'],
        ['Upgrade', 'h2c'],
        ['Proxy-Connection', 'keep-alive'],
        ['Proxy-Authenticate', 'Basic'],
        ['X-Keep', 'k'],
      ],
    });
    assert.equal(head(req, toProxy), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Keep: k\r\n${AUTH}\r\n`);
    assert.equal(head(req, direct), 'GET / HTTP/1.1\r\nHost: a.test\r\nX-Keep: k\r\n\r\n');
  });

  it('keeps the framing headers even when Connection names them: the body was framed by them', () => {
    const req = request({
      method: 'POST',
      path: '/',
      headers: [
        ['Host', 'a.test'],
        ['Connection', 'Content-Length, transfer-encoding'],
        ['Content-Length', '3'],
      ],
    });
    assert.equal(head(req, direct), 'POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\n');
    const chunked = request({
      method: 'POST',
      path: '/',
      headers: [
        ['Host', 'a.test'],
        ['Transfer-Encoding', 'gzip, chunked'],
      ],
    });
    assert.equal(head(chunked, direct), 'POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n');
  });

  // Found by the framer fuzz target: Connection: host took the validated Host off a direct request.
  it('Connection cannot take the Host off: the request was checked and routed by it', () => {
    const req = request({
      path: '/',
      headers: [
        ['Connection', 'host'],
        ['Host', 'a.test'],
      ],
    });
    assert.equal(head(req, direct), 'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
    assert.equal(head(req, toProxy), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n${AUTH}\r\n`);
  });

  it('Connection is written anew: close when asked, keep-alive for an HTTP/1.0 client that asked for it', () => {
    const close = request({
      path: '/',
      headers: [
        ['Host', 'a.test'],
        ['Connection', 'Close'],
      ],
    });
    assert.equal(head(close, toProxy), `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n${AUTH}\r\n`);
    assert.equal(head(close, direct), 'GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    const old = request({
      version: 'HTTP/1.0',
      path: '/',
      headers: [
        ['Host', 'a.test'],
        ['Connection', 'Keep-Alive'],
      ],
    });
    assert.equal(head(old, direct), 'GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n');
    // HTTP/1.1 keeps its connection by default: nothing to say.
    assert.equal(head({ ...old, version: 'HTTP/1.1' }, direct), 'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
    // HTTP/1.0 without keep-alive closes by default: nothing to say either.
    assert.equal(head({ ...old, headers: [['Host', 'a.test']] }, direct), 'GET / HTTP/1.0\r\nHost: a.test\r\n\r\n');
  });

  it('HEAD as it came; OPTIONS * as the authority alone for the proxy (RFC 9112 3.2.4) and * direct', () => {
    const h = request({ method: 'HEAD', path: '/x', headers: [['Host', 'a.test']] });
    assert.equal(head(h, toProxy), `HEAD http://a.test/x HTTP/1.1\r\nHost: a.test\r\n${AUTH}\r\n`);
    const o = request({ method: 'OPTIONS', path: '*', port: 8080, headers: [['Host', 'a.test:8080']] });
    assert.equal(head(o, toProxy), `OPTIONS http://a.test:8080 HTTP/1.1\r\nHost: a.test:8080\r\n${AUTH}\r\n`);
    assert.equal(head(o, direct), 'OPTIONS * HTTP/1.1\r\nHost: a.test:8080\r\n\r\n');
  });

  it('a POST without framing says Content-Length: 0 (Node would chunk an empty body); GET and DELETE say nothing', () => {
    const post = request({ method: 'POST', path: '/', headers: [['Host', 'a.test']] });
    assert.equal(head(post, direct), 'POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n');
    assert.equal(head({ ...post, method: 'DELETE' }, direct), 'DELETE / HTTP/1.1\r\nHost: a.test\r\n\r\n');
  });

  it('refuses a host that was not validated: no request line is built from it', () => {
    for (const bad of ['a.test/x', 'a b', 'a.test\r\nX: 1', '']) {
      assert.throws(() => forwardHead(request({ host: bad, headers: [] }), toProxy), /unvalidated host/, JSON.stringify(bad));
    }
  });
});

describe('upgradeHead and connectRequest', () => {
  it('an Upgrade keeps its handshake headers, in origin form, less the client proxy headers', () => {
    const req = request({
      path: '/ws',
      headers: [
        ['Host', 'a.test'],
        ['Connection', 'Upgrade'],
        ['Upgrade', 'websocket'],
        ['Proxy-Authorization', 'Basic Y2xpZW50OmNyZWRz'],
        ['Sec-WebSocket-Key', 'k'],
      ],
    });
    assert.equal(
      serialize(upgradeHead(req)),
      'GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n',
    );
  });

  it('CONNECT names the authority in the line and in Host, IPv6 bracketed, with the endpoint credentials', () => {
    assert.equal(connectRequest(PROXY, '2001:db8::2', 22), `CONNECT [2001:db8::2]:22 HTTP/1.1\r\nHost: [2001:db8::2]:22\r\n${AUTH}\r\n`);
    assert.equal(connectRequest(parseProxyUrl('http://p:1'), 'a.test', 443), 'CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n');
  });
});

/**
 * The two executors of a plain HTTP request, the fast path's framer and
 * the Node HTTP session, against one tiny server standing for the proxy
 * (or the origin, direct): what reaches it from the session must be the
 * framer's `out` bytes, but for what Node writes itself (request-head.ts):
 * HTTP/1.1 in the request line, and `Connection: keep-alive` at the end
 * when the head carries no Connection.
 */
describe('the framer and the Node HTTP session send the same head', () => {
  /** Heads the capture server has read, and readers waiting for the next one. */
  const heads: string[] = [];
  const waiting: Array<(h: string) => void> = [];
  let capture: net.Server;
  let front: net.Server;
  let capturePort = 0;
  let session: HttpSession | undefined;
  let destination = { address: '203.0.113.10', port: 80 };

  before(async () => {
    capture = net.createServer((sock) => {
      let got = '';
      let done = false;
      sock.on('error', () => {});
      sock.on('data', (chunk: Buffer) => {
        if (done) return;
        got += chunk.toString('latin1');
        const end = got.indexOf('\r\n\r\n');
        if (end < 0) return;
        done = true;
        const h = got.slice(0, end + 4);
        const w = waiting.shift();
        if (w) w(h);
        else heads.push(h);
        sock.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      });
    });
    await new Promise<void>((r) => capture.listen(0, '127.0.0.1', r));
    capturePort = (capture.address() as net.AddressInfo).port;
    front = net.createServer((sock) => {
      const ctx = new ConnContext(
        'http',
        { address: sock.remoteAddress!, port: sock.remotePort!, family: 4 },
        { ...destination, family: 4 },
      );
      session!.accept(sock, ctx, Buffer.alloc(0), () => {});
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  });

  after(async () => {
    session?.close();
    await new Promise((r) => front.close(r));
    await new Promise((r) => capture.close(r));
  });

  const nextHead = (): Promise<string> => {
    const h = heads.shift();
    return h !== undefined ? Promise.resolve(h) : new Promise((r) => waiting.push(r));
  };

  /** The head the session sends upstream for `bytes` from a client, proxied or direct. */
  async function viaSession(bytes: string, route: 'proxy' | 'direct'): Promise<string> {
    const proxy = parseProxyUrl(`http://user:pw@127.0.0.1:${capturePort}`);
    destination = route === 'proxy' ? { address: '203.0.113.10', port: 80 } : { address: '127.0.0.1', port: capturePort };
    session?.close();
    const internal: unknown[] = [];
    session = new HttpSession({
      router: new Router(route === 'proxy' ? { http: [proxy], https: [] } : { http: [], https: [] }, parseNoProxy('')),
      // The proxy's health is told of each connection; the relay is for Upgrade only, which these requests are not.
      outbounds: new Outbounds(5000),
      relay: {} as Relay,
      verifier: {} as HostVerifier,
      log: new Logger('error', () => {}),
      connectTimeoutMs: 5000,
      idleTimeoutMs: 5000,
      isLocal: () => false,
      onInternalError: (_ctx, err) => internal.push(err),
    });
    const client = net.connect((front.address() as net.AddressInfo).port, '127.0.0.1');
    client.on('error', () => {});
    client.resume();
    client.write(bytes);
    const got = await nextHead();
    client.destroy();
    assert.deepEqual(internal, []);
    return got;
  }

  /** The framer's `out` for the same bytes and route, with the destination the session had. */
  function viaFramer(bytes: string, route: 'proxy' | 'direct'): string {
    const proxy = parseProxyUrl(`http://user:pw@127.0.0.1:${capturePort}`);
    const f = new RequestFramer({
      port: destination.port,
      address: destination.address,
      isLocal: () => false,
      route: () => (route === 'proxy' ? { kind: 'proxy', key: 'p', proxy, proxies: [proxy] } : { kind: 'direct', key: 'd' }),
    });
    const r = drive(f, [Buffer.from(bytes, 'latin1')]);
    const first = r.forwards[0];
    assert.ok(first, `the framer forwarded nothing: ${JSON.stringify(r.end)}`);
    return first.out;
  }

  /** The framer's head as Node writes it: HTTP/1.1, and its own Connection: keep-alive when the head has none. */
  function asNodeWrites(out: string): string {
    let h = out.replace(/^([^ ]+ [^ ]+) HTTP\/1\.[01]\r\n/, '$1 HTTP/1.1\r\n');
    if (!/\r\nconnection:/i.test(h)) h = `${h.slice(0, -2)}Connection: keep-alive\r\n\r\n`;
    return h;
  }

  const cases: Array<[string, string]> = [
    [
      'hop-by-hop and Connection-named headers, a client Proxy-Authorization',
      'GET /a?b=1 HTTP/1.1\r\nHost: Example.TEST\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\n' +
        'TE: trailers\r\nProxy-Authorization: Basic Y2xpZW50OmNyZWRz\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n',
    ],
    ['Connection: close', 'GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n'],
    ['Connection naming Host', 'GET / HTTP/1.1\r\nConnection: host\r\nHost: a.test\r\n\r\n'],
    ['a Content-Length body', 'POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc'],
    ['a chunked body', 'PUT /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
    // The Node path dropped the client's Transfer-Encoding and let Node frame the body anew; Node frames no GET body,
    // so the body went upstream unframed, to be read as the next request.
    ['a GET with a chunked body', 'GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
    // Node chunked the empty body of a POST without framing (Transfer-Encoding: chunked, then 0 CRLF CRLF).
    ['a POST without a body', 'POST /empty HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\r\n'],
    ['HEAD', 'HEAD /x HTTP/1.1\r\nHost: a.test\r\n\r\n'],
    ['OPTIONS *', 'OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n'],
    ['a Host with a port', 'GET / HTTP/1.1\r\nHost: a.test:9999\r\n\r\n'],
    ['an IPv6 Host', 'GET /v6 HTTP/1.1\r\nHost: [2001:db8::5]\r\n\r\n'],
    ['HTTP/1.0 keep-alive', 'GET / HTTP/1.0\r\nHost: a.test\r\nConnection: Keep-Alive\r\n\r\n'],
    ['HTTP/1.0 without a Host', 'GET /nohost HTTP/1.0\r\nAccept: */*\r\n\r\n'],
  ];

  for (const route of ['proxy', 'direct'] as const) {
    for (const [what, bytes] of cases) {
      it(`${route}: ${what}`, async () => {
        const node = await viaSession(bytes, route);
        const framed = viaFramer(bytes, route);
        assert.equal(node, asNodeWrites(framed));
        if (route === 'proxy') assert.match(framed, /\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n/);
      });
    }
  }
});

/**
 * pipeline/decide.ts without sockets: one decision per connection, from its
 * kind, addresses and first bytes, for both executors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseNoProxy } from '../../src/config/no-proxy';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { ConnContext, type ListenerKind } from '../../src/core/context';
import { ErrorCodes } from '../../src/core/errors';
import { decide, type DecideDeps, type Decision, type FirstBytes } from '../../src/pipeline/decide';
import { Router } from '../../src/route/router';

/** A minimal TLS 1.3 ClientHello record carrying `sni` (one cipher, one extension). */
function clientHello(sni: string): Buffer {
  const name = Buffer.from(sni, 'latin1');
  const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
  const serverName = Buffer.concat([u16(name.length + 3), Buffer.from([0]), u16(name.length), name]);
  const ext = Buffer.concat([u16(0), u16(serverName.length), serverName]);
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 0x11),
    Buffer.from([0]),
    u16(2),
    Buffer.from([0x13, 0x01]),
    Buffer.from([1, 0]),
    u16(ext.length),
    ext,
  ]);
  const hs = Buffer.concat([Buffer.from([1, 0, body.length >> 8, body.length & 0xff]), body]);
  return Buffer.concat([Buffer.from([0x16, 3, 1]), u16(hs.length), hs]);
}

const PROXY = parseProxyUrl('http://user:pw@198.51.100.2:3128');
const GATEWAY = '192.0.2.1';
const ORIGIN = '203.0.113.2';
const INTRANET = '198.51.100.3';

function deps(over: Partial<DecideDeps> = {}, names: Record<string, string> = {}, verified?: boolean): DecideDeps {
  return {
    router: new Router({ http: [PROXY], https: [PROXY] }, parseNoProxy(`.corp.test,${INTRANET}`)),
    names: { lookup: (_client, address) => names[address] },
    verifier: { check: () => verified },
    isLocal: (a) => a === GATEWAY,
    isForbiddenAddress: (a) => a === GATEWAY || a === PROXY.host,
    sniffTimeoutMs: 1000,
    ...over,
  };
}

function ctxOf(kind: ListenerKind, dst = ORIGIN, port = kind === 'http' ? 80 : kind === 'tls' ? 443 : 22): ConnContext {
  return new ConnContext(kind, { address: '192.0.2.10', port: 40000, family: 4 }, { address: dst, port, family: 4 });
}

const bytes = (head: string | Buffer, more: Partial<FirstBytes> = {}): FirstBytes => ({
  head: typeof head === 'string' ? Buffer.from(head, 'latin1') : head,
  final: false,
  eof: false,
  framed: true,
  ...more,
});

function expectKind<K extends Decision['kind']>(d: Decision, kind: K): Extract<Decision, { kind: K }> {
  assert.equal(
    d.kind,
    kind,
    JSON.stringify(d, (k, v: unknown) => (k === 'framer' ? undefined : v)),
  );
  return d as Extract<Decision, { kind: K }>;
}

describe('decide: TLS', () => {
  it('a ClientHello with SNI: a tunnel through the proxy, by name', () => {
    const ctx = ctxOf('tls');
    const d = expectKind(decide(ctx, bytes(clientHello('www.example.test')), deps()), 'tunnel');
    assert.equal(d.route.kind, 'proxy');
    assert.equal(ctx.name, 'www.example.test');
  });

  it('half a ClientHello: read more; at the deadline a trickle is refused, not carried', () => {
    const hello = clientHello('www.example.test');
    const half = hello.subarray(0, 20);
    assert.equal(decide(ctxOf('tls'), bytes(half), deps()).kind, 'read-more');
    const d = expectKind(decide(ctxOf('tls'), bytes(half, { final: true }), deps()), 'refuse');
    assert.equal(d.code, ErrorCodes.SNIFF_TIMEOUT);
    assert.equal(d.status, undefined, 'a reset, not an HTTP answer');
  });

  it('an SNI naming the gateway is refused (never CONNECTed for a client)', () => {
    const d = expectKind(decide(ctxOf('tls'), bytes(clientHello('localhost')), deps()), 'refuse');
    assert.equal(d.code, ErrorCodes.FORBIDDEN_TARGET);
  });

  it('a no_proxy name goes direct only once verified; unknown: verify first; false: the proxy', () => {
    const hello = bytes(clientHello('git.corp.test'));
    assert.deepEqual(decide(ctxOf('tls'), hello, deps()), { kind: 'verify', name: 'git.corp.test' });
    assert.equal(expectKind(decide(ctxOf('tls'), hello, deps({}, {}, true)), 'tunnel').route.kind, 'direct');
    assert.equal(expectKind(decide(ctxOf('tls'), hello, deps({}, {}, false)), 'tunnel').route.kind, 'proxy');
  });

  it('a connection to the gateway itself closes (a loop), whatever it sends', () => {
    const ctx = ctxOf('tls', GATEWAY);
    assert.equal(decide(ctx, bytes(clientHello('www.example.test')), deps()).kind, 'close');
    assert.equal(ctx.result, ErrorCodes.LOOP);
  });
});

describe('decide: TCP', () => {
  it('no bytes are read: the name comes from the client DNS answers', () => {
    const ctx = ctxOf('tcp');
    const d = expectKind(decide(ctx, bytes('', { final: true }), deps({}, { [ORIGIN]: 'ssh.example.test' })), 'tunnel');
    assert.equal(d.route.kind, 'proxy');
    assert.equal(ctx.name, 'ssh.example.test');
  });

  it('a no_proxy address goes direct without a name', () => {
    const d = expectKind(decide(ctxOf('tcp', INTRANET), bytes('', { final: true }), deps()), 'tunnel');
    assert.equal(d.route.kind, 'direct');
  });
});

describe('decide: HTTP', () => {
  const get = (host: string, path = '/') => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: t\r\n\r\n`;

  it('a request through the proxy: absolute form with the proxy credentials, on the framed executor', () => {
    const ctx = ctxOf('http');
    const d = expectKind(decide(ctx, bytes(get('www.example.test', '/a?b')), deps()), 'http');
    assert.equal(d.route.kind, 'proxy');
    assert.match(d.out, /^GET http:\/\/www\.example\.test\/a\?b HTTP\/1\.1\r\n/);
    assert.match(d.out, /\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n/);
    assert.equal(d.consumed, Buffer.byteLength(get('www.example.test', '/a?b')));
    assert.equal(d.budget, 0);
    assert.equal(ctx.name, 'www.example.test');
    assert.equal(ctx.requests, 1);
  });

  it('without a framed executor the same request goes to the Node HTTP session', () => {
    assert.equal(decide(ctxOf('http'), bytes(get('www.example.test'), { framed: false }), deps()).kind, 'http-session');
  });

  it('a head not whole yet: read more; at the deadline 408', () => {
    const part = 'GET / HTTP/1.1\r\nHost: www.exa';
    assert.equal(decide(ctxOf('http'), bytes(part), deps()).kind, 'read-more');
    const d = expectKind(decide(ctxOf('http'), bytes(part, { final: true }), deps()), 'refuse');
    assert.equal(d.status, 408);
  });

  it('Host naming the gateway: 403; TRACE: 405; two Hosts: 400', () => {
    assert.equal(expectKind(decide(ctxOf('http'), bytes(get('127.1')), deps()), 'refuse').status, 403);
    assert.equal(expectKind(decide(ctxOf('http'), bytes('TRACE / HTTP/1.1\r\nHost: a.test\r\n\r\n'), deps()), 'refuse').status, 405);
    const two = 'GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n';
    assert.equal(expectKind(decide(ctxOf('http'), bytes(two), deps()), 'refuse').status, 400);
  });

  it('bytes that are not HTTP at all on an HTTP port: a TCP tunnel; a server that speaks first: the same at the deadline', () => {
    assert.equal(decide(ctxOf('http'), bytes('\x16\x03\x01\x00\x05hello'), deps()).kind, 'tunnel');
    assert.equal(decide(ctxOf('http'), bytes('', { final: true }), deps()).kind, 'tunnel');
    assert.equal(decide(ctxOf('http'), bytes('', { final: true, eof: true }), deps()).kind, 'close');
  });

  it('an Upgrade request goes to the Node HTTP session', () => {
    const up = 'GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n';
    assert.equal(decide(ctxOf('http'), bytes(up), deps()).kind, 'http-session');
  });

  it('a no_proxy name to verify: the Node HTTP session (it can wait for the lookup)', () => {
    assert.equal(decide(ctxOf('http'), bytes(get('wiki.corp.test')), deps()).kind, 'http-session');
    const d = expectKind(decide(ctxOf('http'), bytes(get('wiki.corp.test')), deps({}, {}, true)), 'http');
    assert.equal(d.route.kind, 'direct');
    assert.match(d.out, /^GET \/ HTTP\/1\.1\r\nHost: wiki\.corp\.test\r\n/, 'origin form, direct');
  });

  it('a body by Content-Length passes verbatim: the budget', () => {
    const post = 'POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhel';
    const d = expectKind(decide(ctxOf('http'), bytes(post), deps()), 'http');
    assert.equal(d.consumed, post.length - 3);
    assert.equal(d.budget, 5);
  });
});

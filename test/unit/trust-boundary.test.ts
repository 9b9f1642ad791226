/**
 * The pure parts of the trust boundary: names as clients send them, the
 * targets no client may have fetched for it, the one reading of an HTTP
 * request's destination, host verification and admission.
 */
import assert from 'node:assert/strict';
import { describe, it, test } from 'node:test';
import { isValidHostname, parseHost, parseIPv4, requestLineHost } from '../../src/core/names';
import { connectRequest } from '../../src/outbound/http-connect';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { Admission, RefusalLog, connectionBudget } from '../../src/inbound/admission';
import { HostVerifier } from '../../src/route/host-verify';
import { forbiddenTarget } from '../../src/route/targets';
import { absoluteUri } from '../../src/outbound/request-head';
import { checkRequest } from '../../src/pipeline/http-request';

describe('parseHost', () => {
  const cases: Array<[string, ReturnType<typeof parseHost>]> = [
    ['WWW.Example.TEST.', { kind: 'name', host: 'www.example.test' }],
    ['_sip._tcp.example.test', { kind: 'name', host: '_sip._tcp.example.test' }],
    ['127.0.0.1', { kind: 'ip', host: '127.0.0.1', family: 4 }],
    ['0x7f000001', { kind: 'ip', host: '127.0.0.1', family: 4 }],
    ['2130706433', { kind: 'ip', host: '127.0.0.1', family: 4 }],
    ['0177.1', { kind: 'ip', host: '127.0.0.1', family: 4 }],
    ['127.1.', { kind: 'ip', host: '127.0.0.1', family: 4 }],
    ['[::1]', { kind: 'ip', host: '::1', family: 6 }],
    ['0:0:0:0:0:0:0:1', { kind: 'ip', host: '::1', family: 6 }],
    ['a.example.test 1.1\r\nvia', undefined],
    ['a\x1b[2J.example', undefined],
    ['caf\u00e9.example', undefined],
    ['a..b', undefined],
    ['', undefined],
    ['.', undefined],
    ['256.1.1.1', undefined],
    ['08.1.1.1', undefined],
    ['1.2.3.4.5', undefined],
    ['example.123', undefined],
    ['[fe80::1%eth0]', undefined],
    [
      `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`,
      { kind: 'name', host: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}` },
    ],
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`, undefined],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${JSON.stringify(expected)}`, () => assert.deepEqual(parseHost(input), expected));
  }

  it('agrees with the WHATWG URL parser on IPv4 spellings', () => {
    for (const s of ['1', '0x1.0x2', '1.2.3', '0.0.0.0', '4294967295', '0xffffffff', '1.16777215', '0x.0x.0x.0x', '00.00']) {
      assert.equal(parseIPv4(s), new URL(`http://${s}/`).hostname, s);
    }
    for (const s of ['4294967296', '1.2.3.256', '1.16777216', '0x100000000', '09']) {
      assert.equal(parseIPv4(s), undefined, s);
      assert.throws(() => new URL(`http://${s}/`), s);
    }
  });

  it('every name it returns validates, and parsing it again gives the same', () => {
    for (const [input] of cases) {
      const r = parseHost(input);
      if (r?.kind === 'name') assert.ok(isValidHostname(r.host));
      if (r) assert.deepEqual(parseHost(r.host), r);
    }
  });
});

test('forbiddenTarget: localhost, loopback, unspecified, link-local, multicast and this host', () => {
  const local = (a: string): boolean => a === '192.0.2.1';
  const t = (host: string) => parseHost(host)!;
  for (const bad of [
    'localhost',
    'a.localhost',
    '127.0.0.1',
    '0x7f000001',
    '0.0.0.0',
    '169.254.169.254',
    '224.0.0.1',
    '::1',
    '::',
    'fe80::1',
    '::ffff:127.0.0.1',
    '::ffff:169.254.1.1',
    '192.0.2.1',
  ]) {
    assert.ok(forbiddenTarget(t(bad), local), bad);
  }
  for (const good of ['www.example.test', 'localhost.example.test', '203.0.113.2', '2001:db8::2', '10.1.2.3']) {
    assert.equal(forbiddenTarget(t(good), local), undefined, good);
  }
});

describe('checkRequest', () => {
  const base = { method: 'GET', url: '/', rawHeaders: ['Host', 'www.example.test'], port: 80, isLocal: (_a: string): boolean => false };
  const codeOf = (over: Partial<typeof base>): string => {
    const r = checkRequest({ ...base, ...over });
    return r.ok ? 'ok' : `${r.status} ${r.code}`;
  };

  it('a plain request goes to its Host', () => {
    assert.deepEqual(checkRequest(base), { ok: true, target: { kind: 'name', host: 'www.example.test' }, path: '/' });
  });

  it('the absolute form keeps only its path: the client connected to the Host, not to the URI', () => {
    const r = checkRequest({ ...base, url: 'http://other.example.test:8081/a?b#c' });
    assert.deepEqual(r, { ok: true, target: { kind: 'name', host: 'www.example.test' }, path: '/a?b' });
    assert.deepEqual(checkRequest({ ...base, url: 'http://other.example.test', rawHeaders: [] }), {
      ok: true,
      target: undefined,
      path: '/',
    });
  });

  it('refuses what the proxy must never be asked for a client', () => {
    assert.equal(codeOf({ method: 'TRACE' }), '405 TG_ERR_METHOD');
    assert.equal(codeOf({ method: 'CONNECT', url: 'www.example.test:443' }), '405 TG_ERR_METHOD');
    assert.equal(codeOf({ rawHeaders: ['Host', 'localhost'] }), '403 TG_ERR_FORBIDDEN_TARGET');
    assert.equal(codeOf({ rawHeaders: ['Host', '0x7f000001:8081'] }), '403 TG_ERR_FORBIDDEN_TARGET');
    assert.equal(codeOf({ url: 'http://127.0.0.1:8081/' }), '403 TG_ERR_FORBIDDEN_TARGET');
    assert.equal(codeOf({ rawHeaders: ['Host', '192.0.2.1'], isLocal: (a: string) => a === '192.0.2.1' }), '403 TG_ERR_FORBIDDEN_TARGET');
  });

  it('refuses heads whose destination is ambiguous or not a host', () => {
    assert.equal(codeOf({ rawHeaders: ['Host', 'a.example', 'host', 'b.example'] }), '400 TG_ERR_BAD_REQUEST');
    assert.equal(codeOf({ rawHeaders: ['Host', 'a.example 1.1\r\nX: y'] }), '400 TG_ERR_BAD_REQUEST');
    assert.equal(codeOf({ rawHeaders: ['Host', 'caf\u00e9.example'] }), '400 TG_ERR_BAD_REQUEST');
    assert.equal(codeOf({ url: 'ftp://a.example/' }), '400 TG_ERR_BAD_REQUEST');
    assert.equal(codeOf({ url: '*' }), '400 TG_ERR_BAD_REQUEST');
    assert.equal(codeOf({ method: 'OPTIONS', url: '*' }), 'ok');
  });
});

describe('HostVerifier', () => {
  it("a no_proxy name is verified by the client's own answer, an equal literal, or the resolver", async () => {
    const asked: string[] = [];
    const v = new HostVerifier({
      names: { lookup: (client, address) => (client === '192.0.2.2' && address === '198.51.100.3' ? 'wiki.corp.test' : undefined) },
      resolve: async (name) => {
        asked.push(name);
        return name === 'intranet.corp.test' ? ['198.51.100.3', '::ffff:198.51.100.4'] : [];
      },
    });
    assert.equal(v.check('192.0.2.2', 'wiki.corp.test', '::ffff:198.51.100.3'), true);
    assert.equal(v.check('192.0.2.2', '198.51.100.3', '198.51.100.3'), true);
    assert.equal(v.check('192.0.2.2', '198.51.100.3', '203.0.113.2'), false);
    assert.equal(v.check('192.0.2.9', 'intranet.corp.test', '203.0.113.2'), undefined);
    assert.equal(await v.verify('192.0.2.9', 'intranet.corp.test', '203.0.113.2'), false, 'a forged Host');
    assert.equal(v.check('192.0.2.9', 'intranet.corp.test', '198.51.100.4'), true, 'cached');
    assert.equal(await v.verify('192.0.2.9', 'gone.corp.test', '198.51.100.3'), false, 'no answer');
    assert.deepEqual(asked, ['intranet.corp.test', 'gone.corp.test']);
  });

  it('a resolver that does not answer in time verifies nothing', async () => {
    const v = new HostVerifier({ resolve: () => new Promise(() => {}), timeoutMs: 20 });
    const t0 = Date.now();
    assert.equal(await v.verify('192.0.2.2', 'slow.corp.test', '198.51.100.3'), false);
    assert.ok(Date.now() - t0 < 1000);
  });

  it('a failing resolver verifies nothing', async () => {
    const v = new HostVerifier({ resolve: () => Promise.reject(new Error('ENOTFOUND')) });
    assert.equal(await v.verify('192.0.2.2', 'x.corp.test', '198.51.100.3'), false);
  });
});

test('Admission: per client, in all, and --clients', () => {
  const a = new Admission({ perClient: 2, total: 3, allow: (c) => c.startsWith('192.0.2.') });
  assert.equal(a.admit('192.0.2.2'), undefined);
  assert.equal(a.admit('192.0.2.2'), undefined);
  assert.equal(a.admit('192.0.2.2'), 'TG_ERR_CLIENT_LIMIT');
  assert.equal(a.admit('198.51.100.9'), 'TG_ERR_CLIENT_REFUSED');
  assert.equal(a.admit('192.0.2.3'), undefined);
  assert.equal(a.admit('192.0.2.4'), 'TG_ERR_LIMIT');
  a.release('192.0.2.2');
  assert.equal(a.of('192.0.2.2'), 1);
  assert.equal(a.admit('192.0.2.4'), undefined);
  assert.equal(a.open, 3);
  a.release('192.0.2.9'); // never admitted: no effect
  assert.equal(a.open, 3);
});

test('RefusalLog: one line per code and interval, then the count', () => {
  let now = 0;
  const lines: string[] = [];
  const r = new RefusalLog(
    10_000,
    (l) => lines.push(l),
    () => now,
  );
  r.note('A', 'a1');
  r.note('A', 'a2');
  r.note('B', 'b1');
  now = 10_000;
  r.note('A', 'a3');
  assert.deepEqual(lines, ['a1', 'b1', 'a3 (and 1 more since the last such line)']);
});

test('the default --max-conns leaves descriptors for the rest', () => {
  assert.equal(connectionBudget(20_000), 9872);
  assert.equal(connectionBudget(1024), 384);
  assert.equal(connectionBudget(300), 112);
  assert.equal(connectionBudget(40), 16);
  assert.equal(connectionBudget(Infinity), 0);
});

// A name with CR LF from a DNS answer was written into `CONNECT name:port` (the name map took it raw).
test('no unvalidated host reaches an upstream request line', () => {
  const proxy = parseProxyUrl('http://198.51.100.2:3128');
  assert.match(connectRequest(proxy, 'git.example.test', 22), /^CONNECT git\.example\.test:22 HTTP\/1\.1\r\n/);
  assert.match(connectRequest(proxy, '2001:db8::2', 22), /^CONNECT \[2001:db8::2\]:22 /);
  for (const bad of ['a.example.test 1.1\r\nvia: x', 'A.Example.Test', '0x7f000001', '2001:DB8::2', '']) {
    assert.throws(() => connectRequest(proxy, bad, 22), /unvalidated host/, JSON.stringify(bad));
    assert.throws(() => requestLineHost(bad));
  }
  assert.throws(() => absoluteUri('x y', 80, '/'), /unvalidated host/);
});

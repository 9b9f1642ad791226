import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_PROXY_PORT, maskProxyPassword, parseProxyUrl, proxyFromEnv } from '../../src/config/proxy-url';
import { ErrorCodes, GatewayError } from '../../src/core/errors';

const basic = (userPass: string): string => `Basic ${Buffer.from(userPass, 'utf8').toString('base64')}`;

describe('parseProxyUrl accepts', () => {
  const cases: Array<[string, object]> = [
    ['http://proxy.example:3128', { host: 'proxy.example', port: 3128, display: 'http://proxy.example:3128' }],
    ['http://proxy.example:3128/', { host: 'proxy.example', port: 3128, display: 'http://proxy.example:3128' }],
    ['HTTP://Proxy.EXAMPLE:3128', { host: 'proxy.example', port: 3128, display: 'http://proxy.example:3128' }],
    ['  http://proxy.example:3128  ', { host: 'proxy.example', port: 3128, display: 'http://proxy.example:3128' }],
    ['proxy.example:3128', { host: 'proxy.example', port: 3128, display: 'http://proxy.example:3128' }],
    ['proxy.example', { host: 'proxy.example', port: 1080, display: 'http://proxy.example:1080' }],
    ['http://proxy.example', { host: 'proxy.example', port: 1080, display: 'http://proxy.example:1080' }],
    ['http://proxy.example/some/path?x#y', { host: 'proxy.example', port: 1080, display: 'http://proxy.example:1080' }],
    ['http://10.0.0.1:8080', { host: '10.0.0.1', port: 8080, display: 'http://10.0.0.1:8080' }],
    ['http://[2001:db8::1]:3128/', { host: '2001:db8::1', port: 3128, display: 'http://[2001:db8::1]:3128' }],
    ['[2001:DB8::1]', { host: '2001:db8::1', port: 1080, display: 'http://[2001:db8::1]:1080' }],
    ['http://localhost:65535', { host: 'localhost', port: 65535, display: 'http://localhost:65535' }],
    [
      'http://user:p%40ss@proxy.example:3128',
      {
        host: 'proxy.example',
        port: 3128,
        auth: { user: 'user', password: 'p@ss' },
        authorization: basic('user:p@ss'),
        display: 'http://proxy.example:3128',
      },
    ],
    [
      'http://dom%5Cuser:p%3Aw%2Fd%25@proxy.example:3128',
      {
        host: 'proxy.example',
        port: 3128,
        auth: { user: 'dom\\user', password: 'p:w/d%' },
        authorization: basic('dom\\user:p:w/d%'),
        display: 'http://proxy.example:3128',
      },
    ],
    [
      // Unencoded '@' and ':' in a password, common in the wild: the last '@' ends the userinfo.
      'http://alice:p@ss:word@proxy.example:3128',
      {
        host: 'proxy.example',
        port: 3128,
        auth: { user: 'alice', password: 'p@ss:word' },
        authorization: basic('alice:p@ss:word'),
        display: 'http://proxy.example:3128',
      },
    ],
    [
      'http://alice@proxy.example:3128',
      {
        host: 'proxy.example',
        port: 3128,
        auth: { user: 'alice', password: '' },
        authorization: basic('alice:'),
        display: 'http://proxy.example:3128',
      },
    ],
    [
      'http://J%C3%BCrgen:%E2%82%AC@proxy.example:3128',
      {
        host: 'proxy.example',
        port: 3128,
        auth: { user: 'Jürgen', password: '€' },
        authorization: basic('Jürgen:€'),
        display: 'http://proxy.example:3128',
      },
    ],
    [
      'user:secret@proxy.example:8080',
      {
        host: 'proxy.example',
        port: 8080,
        auth: { user: 'user', password: 'secret' },
        authorization: 'Basic dXNlcjpzZWNyZXQ=',
        display: 'http://proxy.example:8080',
      },
    ],
  ];

  for (const [input, expected] of cases) {
    it(JSON.stringify(input), () => {
      assert.deepEqual(parseProxyUrl(input), expected);
    });
  }

  it("uses curl's default port", () => {
    assert.equal(DEFAULT_PROXY_PORT, 1080);
  });
});

describe('parseProxyUrl rejects', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /empty value/],
    ['   ', /empty value/],
    ['https://proxy.example:3128', /https:\/\/ proxies are not supported yet, use an http:\/\/ proxy/],
    ['socks5://proxy.example:1080', /socks5:\/\/ proxies are not supported yet, use an http:\/\/ proxy/],
    ['socks5h://proxy.example', /socks5h:\/\/ proxies are not supported yet/],
    ['socks4://proxy.example', /socks4:\/\/ proxies are not supported yet/],
    ['ftp://proxy.example', /unsupported scheme ftp:\/\//],
    ['http://', /empty host/],
    ['http://:3128', /empty host/],
    ['http://user:pw@:3128', /empty host/],
    ['http://proxy.example:0', /bad port "0"/],
    ['http://proxy.example:65536', /bad port "65536"/],
    ['http://proxy.example:31x8', /bad port "31x8"/],
    ['http://proxy.example:', /bad port ""/],
    ['http://2001:db8::1:3128', /IPv6 addresses must be in brackets/],
    ['http://[2001:db8::1:3128', /unterminated \[/],
    ['http://[2001:db8::1]3128', /unexpected text after \]/],
    ['http://[proxy.example]:3128', /bad IPv6 address/],
    ['http://pro xy.example:3128', /bad host name/],
    ['http://proxy_example!:3128', /bad host name/],
    ['http://:pw@proxy.example:3128', /empty user name/],
    ['http://user:%zz@proxy.example:3128', /bad percent-encoding in the password/],
  ];

  for (const [input, message] of cases) {
    it(`${JSON.stringify(input)} → ${message}`, () => {
      assert.throws(
        () => parseProxyUrl(input),
        (err: unknown) => {
          assert.ok(err instanceof GatewayError);
          assert.equal(err.code, ErrorCodes.CONFIG);
          assert.match(err.message, message);
          assert.match(err.message, /expected http:\/\/\[user:password@\]host\[:port\]/);
          return true;
        },
      );
    });
  }

  it('never shows the password in the error', () => {
    for (const input of ['https://bob:hunter2@proxy.example', 'http://bob:hunter2@proxy.example:99999', 'http://bob:hunter2@/']) {
      assert.throws(
        () => parseProxyUrl(input),
        (err: unknown) => {
          const msg = (err as Error).message;
          assert.doesNotMatch(msg, /hunter2/);
          assert.match(msg, /bob:\*\*\*@/);
          return true;
        },
      );
    }
  });
});

describe('maskProxyPassword', () => {
  const cases: Array<[string, string]> = [
    ['http://u:secret@h:1', 'http://u:***@h:1'],
    ['u:secret@h:1', 'u:***@h:1'],
    ['http://u:se@cret@h:1', 'http://u:***@h:1'],
    ['http://u@h:1', 'http://u@h:1'],
    ['http://h:1', 'http://h:1'],
  ];
  for (const [input, expected] of cases) {
    it(`${input} → ${expected}`, () => assert.equal(maskProxyPassword(input), expected));
  }
});

describe('proxyFromEnv', () => {
  const P = (host: string, port: number): object => ({ host, port, display: `http://${host}:${port}` });

  it('nothing set', () => {
    assert.deepEqual(proxyFromEnv({}), { noProxy: '' });
  });

  it('lowercase http_proxy; https falls back to it', () => {
    assert.deepEqual(proxyFromEnv({ http_proxy: 'http://a.example:3128' }), {
      http: P('a.example', 3128),
      https: P('a.example', 3128),
      noProxy: '',
    });
  });

  it('uppercase variables are read too', () => {
    assert.deepEqual(proxyFromEnv({ HTTP_PROXY: 'a.example:1', HTTPS_PROXY: 'b.example:2', NO_PROXY: 'localhost' }), {
      http: P('a.example', 1),
      https: P('b.example', 2),
      noProxy: 'localhost',
    });
  });

  it('lowercase wins when both are set, like curl', () => {
    const env = {
      http_proxy: 'lower.example:1',
      HTTP_PROXY: 'upper.example:1',
      https_proxy: 'lower.example:2',
      HTTPS_PROXY: 'upper.example:2',
      no_proxy: 'lower.test',
      NO_PROXY: 'upper.test',
    };
    assert.deepEqual(proxyFromEnv(env), { http: P('lower.example', 1), https: P('lower.example', 2), noProxy: 'lower.test' });
  });

  it('empty strings mean unset, so the other spelling applies', () => {
    const env = { http_proxy: '', HTTP_PROXY: 'upper.example:1', https_proxy: ' ', no_proxy: '', NO_PROXY: '10.0.0.0/8' };
    assert.deepEqual(proxyFromEnv(env), { http: P('upper.example', 1), https: P('upper.example', 1), noProxy: '10.0.0.0/8' });
  });

  it('https only', () => {
    assert.deepEqual(proxyFromEnv({ https_proxy: 'b.example:2' }), { https: P('b.example', 2), noProxy: '' });
  });

  it('a bad value names the variable and masks the password', () => {
    assert.throws(
      () => proxyFromEnv({ https_proxy: 'socks5://u:topsecret@s.example:1080' }),
      (err: unknown) => {
        assert.ok(err instanceof GatewayError);
        assert.equal(err.code, ErrorCodes.CONFIG);
        assert.match(err.message, /^https_proxy: /);
        assert.match(err.message, /not supported yet, use an http:\/\/ proxy/);
        assert.doesNotMatch(err.message, /topsecret/);
        return true;
      },
    );
  });
});

describe('proxy URL hosts are canonical addresses', () => {
  // The host was only lowercased, so [2001:DB8:0::1] stayed 2001:db8:0::1 and never equalled the address a
  // socket reports for the proxy (the gateway's set of proxy addresses compares the two as text).
  it('writes IPv6 literals in RFC 5952 text', () => {
    assert.equal(parseProxyUrl('http://[2001:DB8:0:0::1]:3128').host, '2001:db8::1');
    assert.equal(parseProxyUrl('http://[::FFFF:198.51.100.1]:3128').host, '::ffff:198.51.100.1');
    assert.equal(parseProxyUrl('http://198.51.100.1:3128').host, '198.51.100.1');
  });
});

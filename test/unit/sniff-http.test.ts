import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HTTP_SNIFF_MAX_BYTES, isLikelyHttpStart, parseHostHeader, sniffHttp, sniffHttpUnguarded } from '../../src/sniff/http';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const NEED_MORE = { status: 'need-more' };
const NO_MATCH = { status: 'no-match' };

function match(method: string, target: string, version: string, host: string | undefined): object {
  return { status: 'match', method, target, version, host };
}

describe('sniffHttp matches request heads', () => {
  const cases: Array<[string, string, object]> = [
    [
      'origin-form with Host',
      'GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n',
      match('GET', '/index.html', 'HTTP/1.1', 'example.com'),
    ],
    ['Host with port', 'GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n', match('GET', '/', 'HTTP/1.1', 'example.com:8080')],
    [
      'Host name in any case, value trimmed',
      'GET / HTTP/1.1\r\nhOsT: \t Example.COM  \r\n\r\n',
      match('GET', '/', 'HTTP/1.1', 'Example.COM'),
    ],
    ['bare LF line ends', 'GET / HTTP/1.1\nHost: example.com\n\n', match('GET', '/', 'HTTP/1.1', 'example.com')],
    ['mixed CRLF and LF', 'GET / HTTP/1.1\r\nHost: example.com\n\r\n', match('GET', '/', 'HTTP/1.1', 'example.com')],
    ['missing Host (HTTP/1.0)', 'GET / HTTP/1.0\r\n\r\n', match('GET', '/', 'HTTP/1.0', undefined)],
    ['empty Host', 'GET / HTTP/1.1\r\nHost:\r\n\r\n', match('GET', '/', 'HTTP/1.1', undefined)],
    [
      'absolute-form wins over Host',
      'GET http://Target.example:8080/x?y HTTP/1.1\r\nHost: other.example\r\n\r\n',
      match('GET', 'http://Target.example:8080/x?y', 'HTTP/1.1', 'Target.example:8080'),
    ],
    [
      'absolute-form without Host',
      'GET http://target.example HTTP/1.1\r\n\r\n',
      match('GET', 'http://target.example', 'HTTP/1.1', 'target.example'),
    ],
    [
      'absolute-form drops userinfo',
      'GET http://user:pw@target.example/ HTTP/1.1\r\n\r\n',
      match('GET', 'http://user:pw@target.example/', 'HTTP/1.1', 'target.example'),
    ],
    [
      'absolute-form IPv6',
      'GET http://[2001:db8::1]:81/ HTTP/1.1\r\n\r\n',
      match('GET', 'http://[2001:db8::1]:81/', 'HTTP/1.1', '[2001:db8::1]:81'),
    ],
    [
      'CONNECT authority-form',
      'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
      match('CONNECT', 'example.com:443', 'HTTP/1.1', 'example.com:443'),
    ],
    ['OPTIONS *', 'OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n', match('OPTIONS', '*', 'HTTP/1.1', 'example.com')],
    [
      'extension method with a dash',
      'VERSION-CONTROL /r HTTP/1.1\r\nHost: dav.example\r\n\r\n',
      match('VERSION-CONTROL', '/r', 'HTTP/1.1', 'dav.example'),
    ],
    [
      'obs-fold continuation',
      'GET / HTTP/1.1\r\nX-Long: a\r\n  b\r\nHost: example.com\r\n\r\n',
      match('GET', '/', 'HTTP/1.1', 'example.com'),
    ],
    [
      'body after the head is ignored',
      'POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello',
      match('POST', '/f', 'HTTP/1.1', 'example.com'),
    ],
    [
      'raw UTF-8 in the path',
      'GET /b\u00c3\u00bccher HTTP/1.1\r\nHost: example.com\r\n\r\n',
      match('GET', '/b\u00c3\u00bccher', 'HTTP/1.1', 'example.com'),
    ],
  ];

  for (const [label, request, expected] of cases) {
    it(label, () => {
      assert.deepEqual(sniffHttp(b(request)), expected);
    });
  }

  it('a request split byte by byte is need-more until the blank line', () => {
    const request = b('GET /path HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n');
    for (let n = 0; n < request.length; n++) {
      assert.deepEqual(sniffHttp(request.subarray(0, n)), NEED_MORE, `prefix ${n}`);
    }
    assert.deepEqual(sniffHttp(request), match('GET', '/path', 'HTTP/1.1', 'example.com'));
  });

  it('an LF-only request split byte by byte too', () => {
    const request = b('HEAD / HTTP/1.0\nHost: a.example\n\n');
    for (let n = 0; n < request.length; n++) {
      assert.deepEqual(sniffHttp(request.subarray(0, n)), NEED_MORE, `prefix ${n}`);
    }
    assert.deepEqual(sniffHttp(request), match('HEAD', '/', 'HTTP/1.0', 'a.example'));
  });

  it('a large body after a CRLF head does not count toward the limit', () => {
    const request = b(`POST /u HTTP/1.1\r\nHost: example.com\r\n\r\n${'x'.repeat(HTTP_SNIFF_MAX_BYTES)}\n\n`);
    assert.deepEqual(sniffHttp(request), match('POST', '/u', 'HTTP/1.1', 'example.com'));
    const lfOnly = b(`POST /u HTTP/1.1\nHost: example.com\n\n${'x'.repeat(HTTP_SNIFF_MAX_BYTES)}\n\r\n`);
    assert.deepEqual(sniffHttp(lfOnly), match('POST', '/u', 'HTTP/1.1', 'example.com'));
  });

  it('a head just under the limit matches', () => {
    const start = 'GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: ';
    const pad = 'a'.repeat(HTTP_SNIFF_MAX_BYTES - start.length - 4);
    const request = b(`${start}${pad}\r\n\r\n`);
    assert.equal(request.length, HTTP_SNIFF_MAX_BYTES);
    assert.deepEqual(sniffHttp(request), match('GET', '/', 'HTTP/1.1', 'example.com'));
  });
});

describe('sniffHttp rejects non-HTTP early', () => {
  const firstByte: Array<[string, number]> = [
    ['TLS handshake', 0x16],
    ['NUL', 0x00],
    ['0xff', 0xff],
    ['lowercase letter', 0x67],
    ['space', 0x20],
    ['digit', 0x31],
    ['dash', 0x2d],
  ];
  for (const [label, byte] of firstByte) {
    it(`${label} as first byte → no-match on one byte`, () => {
      assert.deepEqual(sniffHttp(Buffer.from([byte])), NO_MATCH);
    });
  }

  it('SSH banner → no-match within the first few bytes', () => {
    const banner = b('SSH-2.0-OpenSSH_9.6\r\n');
    assert.deepEqual(sniffHttp(banner.subarray(0, 4)), NEED_MORE); // "SSH-" could still be a method
    assert.deepEqual(sniffHttp(banner.subarray(0, 5)), NO_MATCH); // '2' cannot
    assert.deepEqual(sniffHttp(banner), NO_MATCH);
  });

  it('SMTP-like greeting from a client (lowercase) → no-match at once', () => {
    assert.deepEqual(sniffHttp(b('ehlo x\r\n')), NO_MATCH);
  });

  it('random binary garbage → no-match', () => {
    const garbage = Buffer.from('8a1f00e3c2b7', 'hex');
    assert.deepEqual(sniffHttp(garbage), NO_MATCH);
    assert.deepEqual(sniffHttp(garbage.subarray(0, 1)), NO_MATCH);
  });

  for (const [label, request] of [
    ['method longer than 20 characters', `${'A'.repeat(21)} / HTTP/1.1\r\n\r\n`],
    ['two spaces after the method', 'GET  / HTTP/1.1\r\n\r\n'],
    ['a word and a space, then no request target', 'HELO mail.example\r\n'],
  ]) {
    it(`${label} → no-match (not HTTP: carried as raw TCP)`, () => {
      assert.deepEqual(sniffHttp(b(request!)), NO_MATCH);
    });
  }

  // These start as HTTP requests: carried as raw TCP they reached the origin past the proxy's URL filter. Now a 400.
  const bad: Array<[string, string]> = [
    ['HTTP/0.9 request line', 'GET /\r\n\r\n'],
    ['lowercase version', 'GET / http/1.1\r\n\r\n'],
    ['version without digits', 'GET / HTTP/x.y\r\n\r\n'],
    ['junk after the version', 'GET / HTTP/1.1 x\r\n\r\n'],
    ['control byte in the target', 'GET /\x01 HTTP/1.1\r\n\r\n'],
    ['control byte in a header value', 'GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n'],
    ['bare CR inside a header line', 'GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n'],
    ['header line without a colon', 'GET / HTTP/1.1\r\nHost example.com\r\n\r\n'],
    ['space before the colon', 'GET / HTTP/1.1\r\nHost : example.com\r\n\r\n'],
    ['duplicate Host', 'GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n'],
    ['fold with nothing to continue', 'GET / HTTP/1.1\r\n folded\r\n\r\n'],
    ['an empty line before the request line', '\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n'],
    ['a bare LF before the request line', '\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n'],
    ['absolute form with a NUL', 'GET http://a\x00b/ HTTP/1.1\r\n\r\n'],
  ];
  for (const [label, request] of bad) {
    it(`${label} → invalid`, () => {
      assert.equal(sniffHttp(b(request)).status, 'invalid');
      assert.deepEqual(sniffHttpUnguarded(b(request)), NO_MATCH, 'the scanner itself says no-match; sniffHttp tells HTTP from not');
    });
  }

  it('says why a head is invalid', () => {
    assert.deepEqual(sniffHttp(b('GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n')), {
      status: 'invalid',
      reason: 'two Host headers',
    });
    assert.deepEqual(sniffHttp(b('\r\nGET / HTTP/1.1\r\n\r\n')), { status: 'invalid', reason: 'an empty line before the request line' });
  });

  it('a bad version is caught before the line ends', () => {
    assert.equal(sniffHttp(b('GET / HTTX')).status, 'invalid');
  });

  it('binary bytes in the headers are caught before the head ends', () => {
    assert.equal(sniffHttp(b('GET / HTTP/1.1\r\nX: \x02')).status, 'invalid');
  });

  it('binary bytes far into a head are caught once the head completes', () => {
    // Early checks look only at a bounded prefix so each call stays cheap; the full check runs at the end.
    const partial = b(`GET / HTTP/1.1\r\nX-Pad: ${'a'.repeat(4096)}\x00`);
    assert.deepEqual(sniffHttp(partial), NEED_MORE);
    assert.equal(sniffHttp(Buffer.concat([partial, b('\r\n\r\n')])).status, 'invalid');
  });

  it('an overlong head → invalid at the limit', () => {
    const head = b(`GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: ${'a'.repeat(HTTP_SNIFF_MAX_BYTES)}`);
    assert.deepEqual(sniffHttp(head.subarray(0, HTTP_SNIFF_MAX_BYTES - 1)), NEED_MORE);
    assert.deepEqual(sniffHttp(head.subarray(0, HTTP_SNIFF_MAX_BYTES)), {
      status: 'invalid',
      reason: `a request head longer than ${HTTP_SNIFF_MAX_BYTES} bytes`,
    });
    assert.equal(sniffHttp(Buffer.concat([head, b('\r\n\r\n')])).status, 'invalid');
  });

  it('an overlong request target → invalid at the limit', () => {
    const line = b(`GET /${'a'.repeat(HTTP_SNIFF_MAX_BYTES)}`);
    assert.equal(sniffHttp(line).status, 'invalid');
  });

  it('empty input is need-more', () => {
    assert.deepEqual(sniffHttp(Buffer.alloc(0)), NEED_MORE);
  });

  it('2000 mutated requests never throw', () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const base = b('GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n X: y\r\n\r\n');
    for (let i = 0; i < 2000; i++) {
      const buf = Buffer.from(base.subarray(0, rand(base.length + 1)));
      for (let e = rand(4); e >= 0; e--) if (buf.length) buf[rand(buf.length)] = [0x0a, 0x0d, 0x20, 0x3a, 0x09, rand(256)][rand(6)]!;
      assert.doesNotThrow(() => sniffHttpUnguarded(buf), `iteration ${i}`);
    }
  });
});

describe('isLikelyHttpStart', () => {
  const cases: Array<[string, boolean]> = [
    ['', true],
    ['G', true],
    ['GE', true],
    ['GET', true],
    ['GET ', true],
    ['GET / HTTP/1.1\r\n', true],
    ['PROPFIND ', true],
    ['M-SEARCH * HTTP/1.1\r\n', true],
    ['g', false],
    [' ', false],
    ['\x16\x03\x01', false],
    ['SSH-2', false],
    ['GET\t/', false],
    [`${'A'.repeat(20)} `, true],
    [`${'A'.repeat(21)}`, false],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${expected}`, () => {
      assert.equal(isLikelyHttpStart(b(input)), expected);
    });
  }
});

describe('parseHostHeader', () => {
  const cases: Array<[string, number, { host: string; port: number } | undefined]> = [
    ['example.com', 80, { host: 'example.com', port: 80 }],
    ['Example.COM', 80, { host: 'example.com', port: 80 }],
    ['example.com.', 80, { host: 'example.com', port: 80 }],
    ['  example.com  ', 80, { host: 'example.com', port: 80 }],
    ['example.com:8080', 80, { host: 'example.com', port: 8080 }],
    ['example.com:', 443, { host: 'example.com', port: 443 }],
    ['localhost', 80, { host: 'localhost', port: 80 }],
    ['my_host.internal', 80, { host: 'my_host.internal', port: 80 }],
    ['1.2.3.4', 80, { host: '1.2.3.4', port: 80 }],
    ['1.2.3.4:81', 80, { host: '1.2.3.4', port: 81 }],
    ['[2001:db8::1]', 80, { host: '2001:db8::1', port: 80 }],
    ['[2001:db8::1]:80', 8080, { host: '2001:db8::1', port: 80 }],
    ['[2001:DB8::A]:443', 80, { host: '2001:db8::a', port: 443 }],
    ['', 80, undefined],
    ['2001:db8::1', 80, undefined],
    ['[2001:db8::1', 80, undefined],
    ['[2001:db8::1]x', 80, undefined],
    ['[not-an-ip]:80', 80, undefined],
    ['[fe80::1%eth0]', 80, undefined],
    ['example.com:0', 80, undefined],
    ['example.com:65536', 80, undefined],
    ['example.com:80x', 80, undefined],
    ['example.com:-1', 80, undefined],
    ['exa mple.com', 80, undefined],
    ['example.com/path', 80, undefined],
    ['user@example.com', 80, undefined],
    ['a..b', 80, undefined],
    ['999.1.1.1', 80, undefined],
    // inet_aton spellings are addresses, as a proxy's resolver reads them.
    ['1.2.3', 80, { host: '1.2.0.3', port: 80 }],
    ['0x7f000001', 80, { host: '127.0.0.1', port: 80 }],
    ['0x7f.1:8080', 80, { host: '127.0.0.1', port: 8080 }],
    ['1.2.3.0x', 80, { host: '1.2.3.0', port: 80 }],
    ['a.0x1g', 80, { host: 'a.0x1g', port: 80 }],
    ['1.2.3.4.5', 80, undefined],
    ['0x100000000', 80, undefined],
    ['[::FFFF:127.0.0.1]', 80, { host: '::ffff:127.0.0.1', port: 80 }],
    ['ex\u0000ample.com', 80, undefined],
    [`${'a'.repeat(64)}.com`, 80, undefined],
  ];
  for (const [value, defaultPort, expected] of cases) {
    it(`${JSON.stringify(value)} (default ${defaultPort}) → ${JSON.stringify(expected)}`, () => {
      assert.deepEqual(parseHostHeader(value, defaultPort), expected);
    });
  }
});

// A head trickled in was searched from its start at every piece, and its first 2 KB parsed again each time: 60 KB
// a byte at a time took about a second of the loop. With `scanned`, what an earlier call searched is not searched
// again; the answers must be the ones a call from the start gives, at every prefix.
describe('sniffHttp(buf, scanned): a head searched piece by piece answers as a head searched whole', () => {
  const pad = 'X-Pad: ' + 'p'.repeat(60) + '\r\n';
  const heads: Array<[string, string]> = [
    ['CRLF endings', 'GET /a HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n'],
    ['bare LF endings', 'GET /a HTTP/1.1\nHost: a.test\n\n'],
    ['LF then CRLF', 'GET /a HTTP/1.1\r\nHost: a.test\n\r\n'],
    ['a head past the early-check window', 'GET /big HTTP/1.1\r\nHost: a.test\r\n' + pad.repeat(60) + '\r\n'],
    ['garbage after the window', 'GET /g HTTP/1.1\r\nHost: a.test\r\n' + pad.repeat(40) + 'bad header\r\n\r\n'],
    ['garbage early', 'GET /g HTTP/1.1\r\nbad header\r\nHost: a.test\r\n\r\n'],
    ['two Host headers', 'GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n'],
  ];
  for (const [label, head] of heads) {
    for (const step of [1, 2, 3, 7]) {
      it(`${label}, ${step} byte(s) at a time`, () => {
        const buf = b(head + 'GET /next HTTP/1.1\r\n');
        let scanned = 0;
        for (let n = Math.min(step, buf.length); ; n = Math.min(n + step, buf.length)) {
          const prefix = buf.subarray(0, n);
          const got = sniffHttp(prefix, scanned);
          assert.deepEqual(got, sniffHttp(prefix), `prefix of ${n} bytes`);
          if (got.status !== 'need-more' || n === buf.length) break;
          scanned = n;
        }
      });
    }
  }
});

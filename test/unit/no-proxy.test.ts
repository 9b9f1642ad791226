import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseNoProxy } from '../../src/config/no-proxy';
import { CidrSet, formatCidr, parseCidr, parseIp } from '../../src/core/ip';

type Case = [noProxy: string, kind: 'name' | 'addr', target: string, port: number, expected: boolean];

const cases: Case[] = [
  // empty and match-all
  ['', 'name', 'example.com', 80, false],
  ['', 'addr', '10.0.0.1', 80, false],
  ['*', 'name', 'anything.example', 443, true],
  ['*', 'addr', '192.0.2.1', 22, true],
  ['internal.example, *', 'name', 'other.example', 80, true],

  // domains: plain, leading dot and *. all mean the domain and its subdomains (curl-like)
  ['example.com', 'name', 'example.com', 80, true],
  ['example.com', 'name', 'www.example.com', 80, true],
  ['example.com', 'name', 'a.b.example.com', 443, true],
  ['example.com', 'name', 'notexample.com', 80, false],
  ['example.com', 'name', 'example.com.evil.test', 80, false],
  ['example.com', 'name', 'com', 80, false],
  ['.example.com', 'name', 'example.com', 80, true],
  ['.example.com', 'name', 'www.example.com', 80, true],
  ['.example.com', 'name', 'notexample.com', 80, false],
  ['*.example.com', 'name', 'example.com', 80, true],
  ['*.example.com', 'name', 'deep.www.example.com', 80, true],
  ['Example.COM', 'name', 'WWW.example.com', 80, true],
  ['example.com.', 'name', 'www.example.com.', 80, true],
  ['localhost', 'name', 'localhost', 8080, true],
  ['local', 'name', 'printer.local', 631, true],

  // separators: commas, whitespace, both, stray ones
  ['a.test,b.test', 'name', 'b.test', 80, true],
  ['a.test b.test', 'name', 'b.test', 80, true],
  [' a.test ,\tb.test\n, ,c.test,', 'name', 'c.test', 80, true],
  [' a.test ,\tb.test\n, ,c.test,', 'name', 'd.test', 80, false],

  // ports
  ['example.com:8080', 'name', 'example.com', 8080, true],
  ['example.com:8080', 'name', 'www.example.com', 8080, true],
  ['example.com:8080', 'name', 'example.com', 80, false],
  ['.example.com:443', 'name', 'api.example.com', 443, true],
  ['.example.com:443', 'name', 'api.example.com', 80, false],

  // IPv4 addresses and ranges
  ['10.1.2.3', 'addr', '10.1.2.3', 80, true],
  ['10.1.2.3', 'addr', '10.1.2.4', 80, false],
  ['10.0.0.0/8', 'addr', '10.255.0.1', 443, true],
  ['10.0.0.0/8', 'addr', '11.0.0.1', 443, false],
  ['192.168.1.0/24', 'addr', '192.168.1.200', 80, true],
  ['192.168.1.0/24', 'addr', '192.168.2.1', 80, false],
  ['172.16.0.0/12', 'addr', '172.31.255.255', 80, true],
  ['172.16.0.0/12', 'addr', '172.32.0.0', 80, false],
  ['10.1.2.3/8', 'addr', '10.9.9.9', 80, true], // host bits cleared, like Go
  ['0.0.0.0/0', 'addr', '203.0.113.9', 80, true],
  ['0.0.0.0/0', 'addr', '2001:db8::1', 80, false],
  ['10.1.2.3:8080', 'addr', '10.1.2.3', 8080, true],
  ['10.1.2.3:8080', 'addr', '10.1.2.3', 80, false],
  ['10.0.0.0/8:80', 'addr', '10.2.3.4', 80, true],
  ['10.0.0.0/8:80', 'addr', '10.2.3.4', 443, false],

  // IPv4-mapped IPv6 matches IPv4 entries, in both spellings
  ['10.0.0.0/8', 'addr', '::ffff:10.1.2.3', 80, true],
  ['10.0.0.0/8', 'addr', '::ffff:a01:203', 80, true],
  ['10.0.0.0/8', 'addr', '::ffff:11.1.2.3', 80, false],
  ['::ffff:10.0.0.0/104', 'addr', '10.9.8.7', 80, true],
  ['127.0.0.1', 'addr', '::ffff:127.0.0.1', 80, true],

  // IPv6
  ['::1', 'addr', '::1', 80, true],
  ['::1', 'addr', '::2', 80, false],
  ['[::1]', 'addr', '::1', 80, true],
  ['[::1]:443', 'addr', '::1', 443, true],
  ['[::1]:443', 'addr', '::1', 80, false],
  ['2001:db8::/32', 'addr', '2001:db8:ffff::1', 80, true],
  ['2001:db8::/32', 'addr', '2001:db9::1', 80, false],
  ['2001:db8::/32:443', 'addr', '2001:db8::1', 443, true],
  ['[2001:db8::]/32', 'addr', '2001:db8::1', 80, true],
  ['[2001:db8::]/32:8443', 'addr', '2001:db8::1', 80, false],
  ['fe80::/10', 'addr', 'fe80::1%eth0', 80, true],
  ['2001:DB8::1', 'addr', '2001:db8:0:0:0:0:0:1', 80, true],
  ['2001:db8::1', 'addr', '[2001:db8::1]', 80, true],
  ['::/0', 'addr', '10.0.0.1', 80, false],

  // IP literals given as names are matched as addresses, not as domains
  ['10.0.0.0/8', 'name', '10.1.1.1', 80, true],
  ['::1', 'name', '[::1]', 80, true],
  ['0.0.1', 'name', '10.0.0.1', 80, false],
  ['example.com', 'addr', '93.184.216.34', 80, false],

  // invalid entries are skipped, not fatal
  ['bad entry!, example.com', 'name', 'example.com', 80, true],
  ['10.0.0.0/33, example.com', 'addr', '10.0.0.1', 80, false],
];

describe('parseNoProxy matching', () => {
  for (const [value, kind, target, port, expected] of cases) {
    it(`${JSON.stringify(value)}: ${kind} ${target}:${port} → ${expected}`, () => {
      const np = parseNoProxy(value);
      const got = kind === 'name' ? np.matchName(target, port) : np.matchAddress(target, port);
      assert.equal(got, expected);
    });
  }
});

describe('parseNoProxy bookkeeping', () => {
  it('collects invalid entries instead of throwing', () => {
    const np = parseNoProxy(
      'ok.example, bad_/x, 10.0.0.0/33, 1.2.3.4:0, host:99999, exa mple.com, *foo.com, [::1, [zz]:80, a..b, example.com:',
    );
    assert.deepEqual(np.invalid, [
      'bad_/x',
      '10.0.0.0/33',
      '1.2.3.4:0',
      'host:99999',
      '*foo.com',
      '[::1',
      '[zz]:80',
      'a..b',
      'example.com:',
    ]);
    assert.deepEqual(np.domainSuffixes(), ['ok.example', 'exa', 'mple.com']);
  });

  it('isEmpty ignores invalid entries', () => {
    assert.equal(parseNoProxy('').isEmpty, true);
    assert.equal(parseNoProxy(' , ').isEmpty, true);
    assert.equal(parseNoProxy('a..b').isEmpty, true);
    assert.equal(parseNoProxy('example.com').isEmpty, false);
    assert.equal(parseNoProxy('10.0.0.0/8').isEmpty, false);
    assert.equal(parseNoProxy('*').isEmpty, false);
  });

  it('matchesAll only for *', () => {
    assert.equal(parseNoProxy('*').matchesAll, true);
    assert.equal(parseNoProxy('a.test,*').matchesAll, true);
    assert.equal(parseNoProxy('*.a.test').matchesAll, false);
  });

  it('domainSuffixes lists domains without dots or stars, deduplicated, not addresses', () => {
    const np = parseNoProxy('.corp.example, *.svc.cluster.local, corp.example:8080, localhost, 10.0.0.0/8, ::1, [::1]:80, Corp.Example');
    assert.deepEqual(np.domainSuffixes(), ['corp.example', 'svc.cluster.local', 'localhost']);
    np.domainSuffixes().push('mutated');
    assert.equal(np.domainSuffixes().length, 3, 'returns a copy');
  });

  it('an empty name never matches a domain entry', () => {
    assert.equal(parseNoProxy('example.com').matchName('', 80), false);
    assert.equal(parseNoProxy('example.com').matchAddress('not-an-ip', 80), false);
  });
});

describe('cidr', () => {
  it('parseCidr normalises and rejects', () => {
    const ok: Array<[string, string]> = [
      ['10.0.0.0/8', '10.0.0.0/8'],
      ['10.1.2.3/8', '10.0.0.0/8'],
      ['10.1.2.3', '10.1.2.3/32'],
      ['192.168.1.129/25', '192.168.1.128/25'],
      ['2001:db8::/32', '2001:db8::/32'],
      ['2001:db8::1', '2001:db8::1/128'],
      ['::ffff:10.0.0.0/104', '10.0.0.0/8'],
      ['::ffff:1.2.3.4', '1.2.3.4/32'],
      ['::/0', '::/0'],
      ['64:ff9b::192.0.2.1/128', '64:ff9b::c000:201/128'],
    ];
    for (const [input, expected] of ok) {
      const c = parseCidr(input);
      assert.ok(c, input);
      assert.equal(formatCidr(c), expected, input);
    }
    for (const bad of [
      '',
      '10.0.0.0/33',
      '2001:db8::/129',
      '10.0.0/8',
      '10.0.0.0/',
      '10.0.0.0/8/8',
      '10.0.0.0/-1',
      'example.com/8',
      'fe80::1%eth0/64',
      '10.0.0.0/ 8',
    ]) {
      assert.equal(parseCidr(bad), undefined, bad);
    }
  });

  it('parseIp unmaps IPv4-mapped IPv6', () => {
    assert.deepEqual(parseIp('::ffff:1.2.3.4'), { family: 4, bytes: Uint8Array.from([1, 2, 3, 4]) });
    assert.deepEqual(parseIp('::ffff:102:304'), { family: 4, bytes: Uint8Array.from([1, 2, 3, 4]) });
    assert.equal(parseIp('::1')?.family, 6);
    assert.equal(parseIp('1.2.3.4.5'), undefined);
    assert.equal(parseIp('example.com'), undefined);
  });

  it('CidrSet add/has/size', () => {
    const set = new CidrSet();
    assert.equal(set.has('10.0.0.1'), false);
    assert.equal(set.add('10.0.0.0/8'), true);
    assert.equal(set.add('2001:db8::/32'), true);
    assert.equal(set.add('nonsense'), false);
    const parsed = parseCidr('198.51.100.7');
    assert.ok(parsed);
    assert.equal(set.add(parsed), true);
    assert.equal(set.size, 3);
    assert.equal(set.has('10.20.30.40'), true);
    assert.equal(set.has('::ffff:10.20.30.40'), true);
    assert.equal(set.has('2001:db8:1::5'), true);
    assert.equal(set.has('198.51.100.7'), true);
    assert.equal(set.has('198.51.100.8'), false);
    assert.equal(set.has('11.0.0.1'), false);
    assert.equal(set.has('garbage'), false);
    assert.deepEqual(set.toJSON(), ['10.0.0.0/8', '2001:db8::/32', '198.51.100.7/32']);
  });

  it('prefix boundaries inside a byte', () => {
    const set = new CidrSet();
    set.add('192.0.2.64/27'); // .64-.95
    assert.equal(set.has('192.0.2.63'), false);
    assert.equal(set.has('192.0.2.64'), true);
    assert.equal(set.has('192.0.2.95'), true);
    assert.equal(set.has('192.0.2.96'), false);
  });
});

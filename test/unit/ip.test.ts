import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isIPv4, isIPv6 } from 'node:net';
import {
  CidrSet,
  cidrContains,
  formatCidr,
  formatIPv4,
  formatIPv6,
  maskBytes,
  normalizeIp,
  parseCidr,
  parseCidrOf,
  parseInetAton,
  parseIp,
  parseIPv4Bytes,
  parseIPv6Bytes,
} from '../../src/core/ip';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/ /g, ''), 'hex'));

describe('core/ip: IPv6 text to bytes', () => {
  const good: Array<[string, string]> = [
    ['::', '00000000 00000000 00000000 00000000'],
    ['::1', '00000000 00000000 00000000 00000001'],
    ['1::', '00010000 00000000 00000000 00000000'],
    ['::ffff:1.2.3.4', '00000000 00000000 0000ffff 01020304'],
    ['::FFFF:1.2.3.4', '00000000 00000000 0000ffff 01020304'],
    ['::ffff:102:304', '00000000 00000000 0000ffff 01020304'],
    ['::1.2.3.4', '00000000 00000000 00000000 01020304'],
    ['1:2:3:4:5:6:1.2.3.4', '00010002 00030004 00050006 01020304'],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '20010db8 00000000 00000000 00000001'],
    ['2001:DB8::0001', '20010db8 00000000 00000000 00000001'],
    // '::' may stand for a single group (RFC 4291 2.2), at either end too.
    ['1:2:3:4:5:6:7::', '00010002 00030004 00050006 00070000'],
    ['::1:2:3:4:5:6:7', '00000001 00020003 00040005 00060007'],
    ['1:2:3::5:6:7:8', '00010002 00030000 00050006 00070008'],
    ['ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255', 'ffffffff ffffffff ffffffff ffffffff'],
  ];
  for (const [text, bytes] of good) {
    it(`reads ${text}`, () => {
      assert.deepEqual(parseIPv6Bytes(text), hex(bytes));
      assert.ok(isIPv6(text), 'node:net agrees it is IPv6');
    });
  }
  const bad = [
    '',
    ':',
    ':::',
    '1:::2',
    ':1::',
    '1::2::3',
    '1:',
    ':1',
    '1:2:3:4:5:6:7:8:9',
    '1::2:3:4:5:6:7:8', // '::' with eight groups besides
    '1:2:3:4:5:6:7',
    '::00001', // five hex digits
    '::g',
    '::1.2.3',
    '::1.2.3.4.5',
    '::ffff:01.2.3.4', // leading zero in the dotted tail
    '1:2:3:4:5:6:7:1.2.3.4', // dotted tail past 128 bits
    '::1.2.3.4:5',
    'fe80::1%eth0', // zone ids are not addresses here
    '[::1]',
    ' ::1',
    '::1 ',
    '1.2.3.4',
  ];
  for (const text of bad) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      assert.equal(parseIPv6Bytes(text), undefined);
      if (!text.includes('%')) assert.equal(isIPv6(text), false, 'node:net agrees it is not');
    });
  }
});

describe('core/ip: IPv4 text to bytes', () => {
  it('reads dotted quads', () => {
    assert.deepEqual(parseIPv4Bytes('0.0.0.0'), hex('00000000'));
    assert.deepEqual(parseIPv4Bytes('255.255.255.255'), hex('ffffffff'));
    assert.deepEqual(parseIPv4Bytes('192.0.2.10'), hex('c000020a'));
  });
  // inet_aton reads 010 as 8, inet_pton refuses it: a strict parser that read it as 10 would disagree with both.
  for (const text of [
    '01.2.3.4',
    '1.2.3.04',
    '1.2.3',
    '1.2.3.4.5',
    '256.1.1.1',
    '1.2.3.4.',
    '.1.2.3.4',
    '1..2.3',
    '0x1.2.3.4',
    '1.2.3.4 ',
    '',
  ]) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      assert.equal(parseIPv4Bytes(text), undefined);
      assert.equal(isIPv4(text), false);
    });
  }
});

describe('core/ip: RFC 5952 text', () => {
  const cases: Array<[string, string]> = [
    ['00000000 00000000 00000000 00000000', '::'],
    ['00000000 00000000 00000000 00000001', '::1'],
    ['00010000 00000000 00000000 00000000', '1::'],
    // 4.1 no leading zeros; 4.3 lower case
    ['20010db8 00000000 00000000 00000001', '2001:db8::1'],
    ['20010DB8 000000AB 00000000 00000001', '2001:db8:0:ab::1'],
    // 4.2.2 a single zero group is not shortened
    ['20010db8 00000001 00010001 00010001', '2001:db8:0:1:1:1:1:1'],
    // 4.2.1 the longest run; 4.2.3 the first of equal runs
    ['00010000 00000001 00000000 00000001', '1:0:0:1::1'],
    ['20010db8 00000000 00010000 00000001', '2001:db8::1:0:0:1'],
    ['00010000 00010000 00010000 00010000', '1:0:1:0:1:0:1:0'],
    ['00010000 00000000 00010000 00000001', '1::1:0:0:1'],
    // 5: IPv4-mapped in the mixed form, as sockets report it
    ['00000000 00000000 0000ffff 01020304', '::ffff:1.2.3.4'],
    ['00000000 00000000 0000ffff 00000000', '::ffff:0.0.0.0'],
    // the deprecated IPv4-compatible form stays hex
    ['00000000 00000000 00000000 01020304', '::102:304'],
    ['ffffffff ffffffff ffffffff ffffffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ];
  for (const [bytes, text] of cases) {
    it(`writes ${text}`, () => {
      assert.equal(formatIPv6(hex(bytes)), text);
      assert.deepEqual(parseIPv6Bytes(text), hex(bytes), 'and reads it back');
    });
  }
  it('formats from an offset in a larger buffer (an AAAA record inside a DNS answer)', () => {
    const buf = Buffer.concat([Buffer.from([9, 9, 9]), Buffer.from(hex('20010db8 00000000 00000000 00000001')), Buffer.from([7])]);
    assert.equal(formatIPv6(buf, 3), '2001:db8::1');
    assert.equal(formatIPv4(Buffer.from([1, 192, 0, 2, 1, 5]), 1), '192.0.2.1');
  });
  it('normalizeIp gives canonical text and keeps v4-mapped as IPv6', () => {
    assert.deepEqual(normalizeIp('2001:DB8:0:0::1'), { family: 6, text: '2001:db8::1' });
    assert.deepEqual(normalizeIp('::ffff:102:304'), { family: 6, text: '::ffff:1.2.3.4' });
    assert.deepEqual(normalizeIp('192.0.2.1'), { family: 4, text: '192.0.2.1' });
    assert.equal(normalizeIp('fe80::1%eth0'), undefined);
    assert.equal(normalizeIp('127.1'), undefined);
  });
});

describe('core/ip: parseIp (socket addresses)', () => {
  it('unmaps v4-mapped IPv6 and ignores a zone id', () => {
    assert.deepEqual(parseIp('::ffff:192.0.2.1'), { family: 4, bytes: hex('c0000201') });
    assert.deepEqual(parseIp('::ffff:c000:201'), { family: 4, bytes: hex('c0000201') });
    assert.deepEqual(parseIp('fe80::1%eth0'), { family: 6, bytes: hex('fe800000 00000000 00000000 00000001') });
    assert.equal(parseIp('%eth0'), undefined);
    assert.equal(parseIp('example.test'), undefined);
  });
});

describe('core/ip: inet_aton spellings', () => {
  it('reads the short, hex and octal forms', () => {
    assert.equal(parseInetAton('127.1'), 0x7f000001);
    assert.equal(parseInetAton('0x7f000001'), 0x7f000001);
    assert.equal(parseInetAton('0177.0.0.1'), 0x7f000001);
    assert.equal(parseInetAton('1.2.3.4.'), 0x01020304);
    assert.equal(parseInetAton('1.2.3.256'), undefined);
    assert.equal(parseInetAton('4294967296'), undefined);
    assert.equal(parseInetAton('08.1.1.1'), undefined);
  });
});

describe('core/ip: CIDR', () => {
  it('clears host bits, and maskBytes leaves whole bytes inside the prefix alone', () => {
    assert.deepEqual(maskBytes(hex('ffffffff'), 20), hex('fffff000'));
    assert.deepEqual(maskBytes(hex('ffffffff'), 0), hex('00000000'));
    assert.equal(formatCidr(parseCidr('192.0.2.77/26')!), '192.0.2.64/26');
    assert.equal(formatCidr(parseCidr(' 2001:db8::1/32 ')!), '2001:db8::/32');
  });
  it('parseCidr reads a v4-mapped range as IPv4; parseCidrOf keeps it IPv6', () => {
    assert.equal(formatCidr(parseCidr('::ffff:10.0.0.0/104')!), '10.0.0.0/8');
    assert.equal(formatCidr(parseCidr('::ffff:0:0/95')!), '::fffe:0:0/95');
    assert.equal(formatCidr(parseCidrOf('::ffff:1.2.3.4/96', 6) as never), '::ffff:0:0/96');
  });
  it('formatCidr writes the host bits of a v4-mapped range in hex, a v4-mapped host in the mixed form', () => {
    assert.equal(formatCidr(parseCidrOf('::ffff:0:0/96', 6) as never), '::ffff:0:0/96');
    assert.equal(formatCidr(parseCidrOf('::ffff:1.2.3.4/100', 6) as never), '::ffff:0.0.0.0/100');
    assert.equal(formatCidr(parseCidrOf('::ffff:1.2.3.4', 6) as never), '::ffff:1.2.3.4/128');
  });
  it('parseCidrOf says which part is wrong', () => {
    assert.equal(parseCidrOf('10.0.0.0/33', 4), 'prefix');
    assert.equal(parseCidrOf('10.0.0.0/', 4), 'prefix');
    assert.equal(parseCidrOf('10.0.0.0/1a', 4), 'prefix');
    assert.equal(parseCidrOf('2001:db8::/32', 4), 'address');
    assert.equal(parseCidrOf('10.0.0.0/8', 6), 'address');
    assert.equal(parseCidrOf('fe80::%eth0/64', 6), 'address');
  });
  it('refuses malformed ranges', () => {
    for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/-1', '10.0.0.0/0008', '10.0.0.0/8/8', 'fe80::1%eth0/64', '/8', '']) {
      assert.equal(parseCidr(bad), undefined, bad);
    }
  });
  it('cidrContains compares the prefix bits only', () => {
    const c = parseCidr('2001:db8:8000::/33')!;
    assert.equal(cidrContains(c, parseIp('2001:db8:8fff::1')!), true);
    assert.equal(cidrContains(c, parseIp('2001:db8:7fff::1')!), false);
    assert.equal(cidrContains(c, parseIp('192.0.2.1')!), false);
  });
});

describe('core/ip: CidrSet', () => {
  it('matches v4, v4-mapped and v6 clients, and nothing that is not an address', () => {
    const set = new CidrSet();
    for (const r of ['192.168.1.0/24', '10.0.0.0/8', '2001:db8:1::/64', '0.0.0.0/32']) assert.ok(set.add(r));
    assert.equal(set.add('nonsense'), false);
    assert.equal(set.has('192.168.1.200'), true);
    assert.equal(set.has('192.168.2.1'), false);
    assert.equal(set.has('::ffff:10.20.30.40'), true);
    assert.equal(set.has('::ffff:a14:1e28'), true);
    assert.equal(set.has('::ffff:11.0.0.1'), false);
    assert.equal(set.has('2001:db8:1::7'), true);
    assert.equal(set.has('2001:db8:1::7%eth0'), true);
    assert.equal(set.has('2001:db8:2::7'), false);
    // The mapped form of 0.0.0.0 is in 0.0.0.0/32; '::' is IPv6 and is not.
    assert.equal(set.has('::ffff:0.0.0.0'), true);
    assert.equal(set.has('::'), false);
    assert.equal(set.has('192.168.1.'), false);
    assert.equal(set.has(''), false);
    assert.deepEqual(set.toJSON(), ['192.168.1.0/24', '10.0.0.0/8', '2001:db8:1::/64', '0.0.0.0/32']);
  });
  it('an empty prefix matches every address of its family', () => {
    const set = new CidrSet();
    set.add('0.0.0.0/0');
    assert.equal(set.has('203.0.113.9'), true);
    assert.equal(set.has('::ffff:203.0.113.9'), true);
    assert.equal(set.has('2001:db8::1'), false);
  });
  it('a parse that fails half-way does not leave a match behind (the scratch buffer is reused)', () => {
    const set = new CidrSet();
    set.add('1.2.3.4/32');
    assert.equal(set.has('1.2.3.4'), true);
    assert.equal(set.has('1.2.3.4.5'), false);
    assert.equal(set.has('::ffff:1.2.3.4:1'), false);
  });
});

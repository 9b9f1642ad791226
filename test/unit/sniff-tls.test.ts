/**
 * Fixtures in test/fixtures/clienthello-*.bin are real ClientHellos from
 * OpenSSL 3.0, captured by a node net server that saved everything a
 * client sent before hanging up:
 *   tls13-sni    openssl s_client -connect 127.0.0.1:PORT -servername www.example.test
 *   tls12-sni    ... -servername www.example.test -tls1_2
 *   tls13-nosni  ... -noservername
 *   tls13-alpn   ... -servername www.example.test -alpn h2,http/1.1
 * Each is one TLS record; fragmented and enlarged variants are built here.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TLS_SNIFF_MAX_BYTES, sniffTls, sniffTlsUnguarded } from '../../src/sniff/tls';

const FIXTURES = path.join(__dirname, '../../../test/fixtures');
const load = (name: string): Buffer => fs.readFileSync(path.join(FIXTURES, name));

const fixtures = {
  tls13Sni: load('clienthello-tls13-sni.bin'),
  tls12Sni: load('clienthello-tls12-sni.bin'),
  tls13NoSni: load('clienthello-tls13-nosni.bin'),
  tls13Alpn: load('clienthello-tls13-alpn.bin'),
};

// ---- helpers to take a hello apart and put it back together ----------------

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number): Buffer => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);

/** Handshake bytes (4-byte header + body) of a single-record fixture. */
function handshakeOf(record: Buffer): Buffer {
  assert.equal(record[0], 0x16);
  assert.equal(record.readUInt16BE(3) + 5, record.length, 'fixture is exactly one record');
  return record.subarray(5);
}

/** Frames handshake bytes into TLS records of at most `size` payload bytes each. */
function frame(handshake: Buffer, size = 16384): Buffer {
  const records: Buffer[] = [];
  for (let off = 0; off < handshake.length; off += size) {
    const chunk = handshake.subarray(off, Math.min(off + size, handshake.length));
    records.push(Buffer.from([0x16, 0x03, 0x01]), u16(chunk.length), chunk);
  }
  return Buffer.concat(records);
}

interface Ext {
  type: number;
  data: Buffer;
}
interface HelloParts {
  /** version, random, session id, cipher suites, compression methods. */
  fixed: Buffer;
  exts: Ext[];
}

function splitHello(record: Buffer): HelloParts {
  const body = handshakeOf(record).subarray(4);
  let off = 2 + 32;
  off += 1 + body[off]!;
  off += 2 + body.readUInt16BE(off);
  off += 1 + body[off]!;
  const fixed = body.subarray(0, off);
  const extEnd = off + 2 + body.readUInt16BE(off);
  const exts: Ext[] = [];
  for (let p = off + 2; p < extEnd;) {
    const type = body.readUInt16BE(p);
    const len = body.readUInt16BE(p + 2);
    exts.push({ type, data: body.subarray(p + 4, p + 4 + len) });
    p += 4 + len;
  }
  return { fixed, exts };
}

function helloHandshake(parts: HelloParts, withExtensions = true): Buffer {
  const extBytes = Buffer.concat(parts.exts.flatMap((e) => [u16(e.type), u16(e.data.length), e.data]));
  const body = withExtensions ? Buffer.concat([parts.fixed, u16(extBytes.length), extBytes]) : parts.fixed;
  return Buffer.concat([Buffer.from([0x01]), u24(body.length), body]);
}

function buildHello(parts: HelloParts, recordSize = 16384): Buffer {
  return frame(helloHandshake(parts), recordSize);
}

function serverNameExt(...names: Array<[number, Buffer | string]>): Ext {
  const list = Buffer.concat(
    names.flatMap(([type, name]) => {
      const b = Buffer.isBuffer(name) ? name : Buffer.from(name, 'latin1');
      return [Buffer.from([type]), u16(b.length), b];
    }),
  );
  return { type: 0, data: Buffer.concat([u16(list.length), list]) };
}

function alpnExt(...protocols: string[]): Ext {
  const list = Buffer.concat(protocols.flatMap((p) => [Buffer.from([p.length]), Buffer.from(p, 'latin1')]));
  return { type: 16, data: Buffer.concat([u16(list.length), list]) };
}

function withExts(record: Buffer, edit: (exts: Ext[]) => Ext[]): Buffer {
  const parts = splitHello(record);
  return buildHello({ fixed: parts.fixed, exts: edit(parts.exts) });
}

interface FixedFields {
  version: Buffer;
  random: Buffer;
  sessionId: Buffer;
  cipherSuites: Buffer;
  compression: Buffer;
}

function fixedFields(fixed: Buffer): FixedFields {
  let off = 2 + 32;
  const sessionId = fixed.subarray(off + 1, off + 1 + fixed[off]!);
  off += 1 + sessionId.length;
  const cipherSuites = fixed.subarray(off + 2, off + 2 + fixed.readUInt16BE(off));
  off += 2 + cipherSuites.length;
  const compression = fixed.subarray(off + 1, off + 1 + fixed[off]!);
  return { version: fixed.subarray(0, 2), random: fixed.subarray(2, 34), sessionId, cipherSuites, compression };
}

/** Rebuilds a hello with edited fixed fields, every length prefix kept consistent. */
function withFixed(record: Buffer, edit: (f: FixedFields) => FixedFields): Buffer {
  const parts = splitHello(record);
  const f = edit(fixedFields(parts.fixed));
  const fixed = Buffer.concat([
    f.version,
    f.random,
    Buffer.from([f.sessionId.length]),
    f.sessionId,
    u16(f.cipherSuites.length),
    f.cipherSuites,
    Buffer.from([f.compression.length]),
    f.compression,
  ]);
  return buildHello({ fixed, exts: parts.exts });
}

const replaceSni = (record: Buffer, ext: Ext): Buffer => withExts(record, (exts) => exts.map((e) => (e.type === 0 ? ext : e)));

/** Adds a padding extension (RFC 7685) to reach post-quantum ClientHello sizes. */
const padded = (record: Buffer, n: number): Buffer => withExts(record, (exts) => [...exts, { type: 21, data: Buffer.alloc(n) }]);

// ---- tests ------------------------------------------------------------------

describe('sniffTls on real ClientHellos', () => {
  const cases: Array<[string, Buffer, string | undefined, string[] | undefined]> = [
    ['TLS 1.3 with SNI', fixtures.tls13Sni, 'www.example.test', undefined],
    ['TLS 1.2 only with SNI', fixtures.tls12Sni, 'www.example.test', undefined],
    ['TLS 1.3 without SNI', fixtures.tls13NoSni, undefined, undefined],
    ['TLS 1.3 with ALPN', fixtures.tls13Alpn, 'www.example.test', ['h2', 'http/1.1']],
  ];

  for (const [label, hello, sni, alpn] of cases) {
    it(`${label}: match with the right fields`, () => {
      const expected = alpn ? { status: 'match', sni, alpn } : { status: 'match', sni };
      assert.deepEqual(sniffTls(hello), expected);
    });

    it(`${label}: every prefix (TCP segmentation) is need-more`, () => {
      for (let n = 0; n < hello.length; n++) {
        assert.deepEqual(sniffTls(hello.subarray(0, n)), { status: 'need-more' }, `prefix ${n}`);
      }
    });

    it(`${label}: re-framed into 100-byte records still matches, only at full length`, () => {
      const fragmented = frame(handshakeOf(hello), 100);
      assert.ok(fragmented.length > hello.length, 'several records');
      for (let n = 0; n < fragmented.length; n++) {
        assert.equal(sniffTls(fragmented.subarray(0, n)).status, 'need-more', `prefix ${n}`);
      }
      assert.deepEqual(sniffTls(fragmented), sniffTls(hello));
    });
  }

  it('one-byte records reassemble too', () => {
    const tiny = frame(handshakeOf(fixtures.tls13Alpn), 1);
    assert.deepEqual(sniffTls(tiny), sniffTls(fixtures.tls13Alpn));
  });

  it('bytes after the ClientHello (early data, next record) do not matter', () => {
    const trailing = Buffer.concat([fixtures.tls13Sni, Buffer.from([0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb])]);
    assert.deepEqual(sniffTls(trailing), { status: 'match', sni: 'www.example.test' });
  });

  it('a post-quantum-sized hello (~1.9 KB) needs two TCP segments', () => {
    const big = padded(fixtures.tls13Sni, 1600);
    assert.ok(big.length > 1800);
    assert.equal(sniffTls(big.subarray(0, 1460)).status, 'need-more');
    assert.deepEqual(sniffTls(big), { status: 'match', sni: 'www.example.test' });
  });

  it('a hello filling a maximum-size record is accepted', () => {
    const parts = splitHello(fixtures.tls13Sni);
    const base = helloHandshake(parts).length;
    const big = padded(fixtures.tls13Sni, 16384 - base - 4);
    assert.equal(big.length, TLS_SNIFF_MAX_BYTES);
    assert.deepEqual(sniffTls(big), { status: 'match', sni: 'www.example.test' });
  });
});

describe('sniffTls server_name handling', () => {
  it('lowercases the name and drops a trailing dot', () => {
    const hello = replaceSni(fixtures.tls13Sni, serverNameExt([0, 'WWW.Example.TEST.']));
    assert.deepEqual(sniffTls(hello), { status: 'match', sni: 'www.example.test' });
  });

  const undefinedSni: Array<[string, Buffer | string]> = [
    ['a control byte', 'www.exa\x01ple.test'],
    ['a NUL', Buffer.from('evil.test\0.good.test', 'latin1')],
    ['an IPv4 literal (forbidden by RFC 6066)', '192.0.2.1'],
    ['an IPv6 literal', '2001:db8::1'],
    ['a space', 'www example.test'],
    ['UTF-8 bytes', Buffer.from('bücher.example', 'utf8')],
    ['an empty label', 'www..example.test'],
    ['a 64-byte label', `${'a'.repeat(64)}.test`],
    ['an empty name', ''],
  ];
  for (const [label, name] of undefinedSni) {
    it(`a name with ${label} gives sni undefined`, () => {
      const hello = replaceSni(fixtures.tls13Sni, serverNameExt([0, name]));
      assert.deepEqual(sniffTls(hello), { status: 'match', sni: undefined });
    });
  }

  it('ignores non-host_name entries', () => {
    const hello = replaceSni(fixtures.tls13Sni, serverNameExt([7, 'other'], [0, 'a.example.test']));
    assert.deepEqual(sniffTls(hello), { status: 'match', sni: 'a.example.test' });
  });

  it('accepts an IDN in A-label form', () => {
    const hello = replaceSni(fixtures.tls13Sni, serverNameExt([0, 'xn--bcher-kva.example']));
    assert.deepEqual(sniffTls(hello), { status: 'match', sni: 'xn--bcher-kva.example' });
  });
});

describe('sniffTls rejects what is not a well-formed ClientHello', () => {
  const sni = fixtures.tls13Sni;
  const mutate = (f: (b: Buffer) => void): Buffer => {
    const copy = Buffer.from(sni);
    f(copy);
    return copy;
  };
  const parts = splitHello(sni);

  const noMatch: Array<[string, Buffer]> = [
    ['application data record', Buffer.from([0x17, 0x03, 0x03, 0x00, 0x10])],
    ['SSLv2-compatible hello', Buffer.from('802e0103010015000000100000390000380000350000', 'hex')],
    ['record version major 2', Buffer.from([0x16, 0x02, 0x00, 0x00, 0x10])],
    ['HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: example.test\r\n\r\n')],
    ['SSH banner', Buffer.from('SSH-2.0-OpenSSH_9.6\r\n')],
    ['ServerHello instead of ClientHello', mutate((b) => (b[5] = 0x02))],
    ['zero-length record', Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00, 0x16, 0x03, 0x01])],
    ['record longer than 2^14', Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01, 0x01])],
    ['handshake length beyond the sniff limit', Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x40, 0x00])],
    ['client_version major 2', mutate((b) => (b[9] = 0x02))],
    ['session id longer than 32', withFixed(sni, (f) => ({ ...f, sessionId: Buffer.alloc(33) }))],
    ['no cipher suites', withFixed(sni, (f) => ({ ...f, cipherSuites: Buffer.alloc(0) }))],
    ['odd cipher suite length', withFixed(sni, (f) => ({ ...f, cipherSuites: Buffer.from([0x13, 0x01, 0x00]) }))],
    ['no compression methods', withFixed(sni, (f) => ({ ...f, compression: Buffer.alloc(0) }))],
    [
      'bytes after the extensions block',
      (() => {
        const hs = Buffer.concat([helloHandshake(parts), Buffer.from([0x00])]);
        hs.writeUIntBE(hs.length - 4, 1, 3);
        return frame(hs);
      })(),
    ],
    ['handshake length shorter than its content', mutate((b) => b.writeUIntBE(b.readUIntBE(6, 3) - 10, 6, 3))],
    [
      'handshake length longer than its content, then a non-handshake record',
      Buffer.concat([mutate((b) => b.writeUIntBE(b.readUIntBE(6, 3) + 10, 6, 3)), Buffer.from([0x17, 0x03, 0x03, 0x00, 0x0a])]),
    ],
    [
      'extensions length overruns the message',
      buildHello({ fixed: parts.fixed, exts: parts.exts }).fill(0xff, 9 + parts.fixed.length, 9 + parts.fixed.length + 1),
    ],
    ['duplicate server_name extension', withExts(sni, (e) => [...e, serverNameExt([0, 'other.test'])])],
    ['two host_name entries', replaceSni(sni, serverNameExt([0, 'a.test'], [0, 'b.test']))],
    ['server_name list length mismatch', replaceSni(sni, { type: 0, data: Buffer.from([0x00, 0x09, 0x00, 0x00, 0x01, 0x61]) })],
    ['empty ALPN list', withExts(sni, (e) => [...e, { type: 16, data: Buffer.from([0, 0]) }])],
    ['empty ALPN protocol', withExts(sni, (e) => [...e, alpnExt('h2', '')])],
    ['duplicate ALPN extension', withExts(fixtures.tls13Alpn, (e) => [...e, alpnExt('h2')])],
    [
      'extension header cut short',
      (() => {
        const extBytes = Buffer.concat([...parts.exts.flatMap((e) => [u16(e.type), u16(e.data.length), e.data]), u16(0x15)]);
        const body = Buffer.concat([parts.fixed, u16(extBytes.length), extBytes]);
        return frame(Buffer.concat([Buffer.from([0x01]), u24(body.length), body]));
      })(),
    ],
    [
      'non-handshake record in the middle of a fragmented hello',
      (() => {
        const f = frame(handshakeOf(sni), 100);
        f[105] = 0x17;
        return f;
      })(),
    ],
  ];
  for (const [label, buf] of noMatch) {
    it(`${label} → no-match`, () => {
      assert.deepEqual(sniffTls(buf), { status: 'no-match' });
      assert.deepEqual(sniffTlsUnguarded(buf), { status: 'no-match' }, 'not via the safety net');
    });
  }

  it('non-TLS is recognised on the first byte', () => {
    for (const b of [0x00, 0x17, 0x47 /* G */, 0x53 /* S */, 0x80, 0xff]) {
      assert.deepEqual(sniffTls(Buffer.from([b])), { status: 'no-match' }, `0x${b.toString(16)}`);
    }
    assert.deepEqual(sniffTls(Buffer.from([0x16, 0x03])), { status: 'need-more' });
  });

  it('a handshake length longer than the record waits for the next record', () => {
    const longer = mutate((b) => b.writeUIntBE(b.readUIntBE(6, 3) + 10, 6, 3));
    assert.deepEqual(sniffTls(longer), { status: 'need-more' });
  });

  it('the helpers rebuild an unedited hello byte for byte', () => {
    assert.deepEqual(
      withFixed(sni, (f) => f),
      sni,
    );
    assert.deepEqual(
      withExts(sni, (e) => e),
      sni,
    );
  });

  it('a 32-byte session id (the maximum) is fine', () => {
    const hello = withFixed(sni, (f) => ({ ...f, sessionId: Buffer.alloc(32, 7) }));
    assert.deepEqual(sniffTls(hello), { status: 'match', sni: 'www.example.test' });
  });

  it('a hello without an extensions block matches with no SNI', () => {
    const hello = frame(helloHandshake(parts, false));
    assert.deepEqual(sniffTls(hello), { status: 'match', sni: undefined });
  });

  it('gives up once the limit is reached without a complete hello', () => {
    // A valid-looking 16 000-byte hello in 10-byte records needs ~24 KB on the wire.
    const hs = Buffer.concat([Buffer.from([0x01]), u24(16000), Buffer.alloc(16000)]);
    const wire = frame(hs, 10);
    assert.equal(sniffTls(wire.subarray(0, TLS_SNIFF_MAX_BYTES - 10)).status, 'need-more');
    assert.deepEqual(sniffTls(wire.subarray(0, TLS_SNIFF_MAX_BYTES)), { status: 'no-match' });
    assert.deepEqual(sniffTls(wire), { status: 'no-match' });
  });

  it('a hello that ends past the limit is no-match however it arrives (in two records it matched when read at once)', () => {
    // Fits one record (5 + hello = limit - 2), but framed in two the hello ends 3 bytes past the limit: a caller
    // reading in pieces stopped at the limit with no-match, one that got it in a single read matched it.
    const pad = TLS_SNIFF_MAX_BYTES - 2 - 5 - helloHandshake(parts).length - 4;
    const hs = helloHandshake({ ...parts, exts: [...parts.exts, { type: 0x15, data: Buffer.alloc(pad) }] });
    assert.equal(5 + hs.length, TLS_SNIFF_MAX_BYTES - 2);
    assert.deepEqual(sniffTls(frame(hs)), { status: 'match', sni: 'www.example.test' });
    const wire = frame(hs, 8192);
    assert.equal(wire.length, TLS_SNIFF_MAX_BYTES + 3);
    assert.deepEqual(sniffTls(wire.subarray(0, TLS_SNIFF_MAX_BYTES)), { status: 'no-match' });
    assert.deepEqual(sniffTls(wire), { status: 'no-match' });
  });

  it('oversized garbage is no-match', () => {
    assert.deepEqual(sniffTls(Buffer.alloc(TLS_SNIFF_MAX_BYTES * 2, 0x16)), { status: 'no-match' });
  });
});

describe('sniffTls fuzz', () => {
  /** mulberry32: small seeded PRNG so failures reproduce. */
  function rng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  it('2000 mutated fixtures never throw and always give a valid status', () => {
    const rand = rng(0x7a11);
    const int = (n: number): number => Math.floor(rand() * n);
    const bases = [...Object.values(fixtures), frame(handshakeOf(fixtures.tls13Alpn), 100), padded(fixtures.tls13Sni, 1600)];
    const counts = { 'need-more': 0, 'no-match': 0, match: 0 };
    for (let i = 0; i < 2000; i++) {
      let buf = Buffer.from(bases[int(bases.length)]!);
      const edits = 1 + int(4);
      for (let e = 0; e < edits; e++) {
        const at = int(buf.length);
        switch (int(5)) {
          case 0: // flip a byte, biased toward the length-heavy header area
            buf[rand() < 0.5 ? int(Math.min(buf.length, 80)) : at] = int(256);
            break;
          case 1: // set a 16-bit field to an extreme
            if (at + 1 < buf.length) buf.writeUInt16BE([0, 1, 0xffff, 0x4000, int(0x10000)][int(5)]!, at);
            break;
          case 2: // truncate
            buf = buf.subarray(0, at);
            break;
          case 3: // insert random bytes
            buf = Buffer.concat([buf.subarray(0, at), Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256))), buf.subarray(at)]);
            break;
          default: // duplicate a slice
            buf = Buffer.concat([buf, buf.subarray(at, at + int(64))]);
        }
      }
      let result;
      assert.doesNotThrow(() => (result = sniffTlsUnguarded(buf)), `iteration ${i}: ${buf.toString('hex')}`);
      const status = (result as unknown as { status: keyof typeof counts }).status;
      assert.ok(status in counts, `iteration ${i}`);
      counts[status]++;
    }
    // The fuzz is only meaningful if it reaches all three outcomes.
    assert.ok(counts.match > 0 && counts['no-match'] > 0 && counts['need-more'] > 0, JSON.stringify(counts));
  });

  it('2000 random buffers starting like TLS never throw', () => {
    const rand = rng(42);
    for (let i = 0; i < 2000; i++) {
      const len = Math.floor(rand() * 600);
      const buf = Buffer.from(Array.from({ length: len }, () => Math.floor(rand() * 256)));
      if (len > 0) buf[0] = 0x16;
      if (len > 1) buf[1] = 0x03;
      if (len > 5) buf[5] = 0x01;
      assert.doesNotThrow(() => sniffTlsUnguarded(buf), `iteration ${i}`);
    }
  });
});

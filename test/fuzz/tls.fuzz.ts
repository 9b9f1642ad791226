import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isValidHostname } from '../../src/core/names';
import { TLS_SNIFF_MAX_BYTES, sniffTls, sniffTlsUnguarded, type TlsSniffResult } from '../../src/sniff/tls';
import { inputRng, type Rng, type Target } from './harness';
import { hostText } from './hosts';

const FIXTURES = path.join(__dirname, '../../../test/fixtures');

const u16 = (n: number): Buffer => Buffer.from([(n >> 8) & 0xff, n & 0xff]);
const u24 = (n: number): Buffer => Buffer.from([(n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
const vec16 = (b: Buffer): Buffer => Buffer.concat([u16(b.length), b]);
const ext = (type: number, data: Buffer): Buffer => Buffer.concat([u16(type), vec16(data)]);

function serverName(r: Rng): Buffer {
  const entries: Buffer[] = [];
  const n = r.chance(0.9) ? 1 : r.int(4);
  for (let i = 0; i < n; i++) {
    const name = r.chance(0.05) ? r.bytes(r.int(40)) : Buffer.from(hostText(r), r.chance(0.9) ? 'latin1' : 'utf8');
    entries.push(Buffer.concat([Buffer.from([r.chance(0.9) ? 0 : r.int(256)]), vec16(name)]));
  }
  return ext(0x0000, vec16(Buffer.concat(entries)));
}

function alpn(r: Rng): Buffer {
  const protos: Buffer[] = [];
  for (let i = r.range(r.chance(0.05) ? 0 : 1, 4); i > 0; i--) {
    const p = r.chance(0.9) ? Buffer.from(r.pick(['h2', 'http/1.1', 'h3', 'spdy/3', 'acme-tls/1'])) : r.bytes(r.int(10));
    protos.push(Buffer.concat([Buffer.from([p.length]), p]));
  }
  return ext(0x0010, vec16(Buffer.concat(protos)));
}

function extensions(r: Rng): Buffer[] {
  const exts: Buffer[] = [];
  if (r.chance(0.85)) exts.push(serverName(r));
  if (r.chance(0.4)) exts.push(alpn(r));
  if (r.chance(0.03)) exts.push(serverName(r));
  if (r.chance(0.03)) exts.push(alpn(r));
  // supported_versions, supported_groups, GREASE, an empty one, a key share of post-quantum size.
  if (r.chance(0.6)) exts.push(ext(0x002b, Buffer.from([0x04, 0x03, 0x04, 0x03, 0x03])));
  if (r.chance(0.5)) exts.push(ext(0x000a, Buffer.from([0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])));
  if (r.chance(0.3)) exts.push(ext(0x0a0a, Buffer.alloc(0)));
  if (r.chance(0.3)) exts.push(ext(0x0033, r.bytes(r.chance(0.3) ? 1250 : 40)));
  // padding (RFC 7685), now and then up to what fills the sniff limit
  if (r.chance(0.2)) exts.push(ext(0x0015, Buffer.alloc(r.chance(0.1) ? r.range(15_000, 16_500) : r.int(512))));
  for (let i = exts.length - 1; i > 0; i--) {
    const j = r.int(i + 1);
    [exts[i], exts[j]] = [exts[j]!, exts[i]!];
  }
  return exts;
}

/** A ClientHello handshake message: fixed fields, then the extensions block (or none). */
function clientHello(r: Rng): Buffer {
  const sessionId = r.bytes(r.pick([0, 32, 32, r.int(34)]));
  const suites = r.bytes(2 * r.range(r.chance(0.02) ? 0 : 1, 20));
  const parts = [
    Buffer.from([0x03, r.pick([0x01, 0x03, 0x03])]),
    r.bytes(32),
    Buffer.from([sessionId.length]),
    sessionId,
    vec16(suites),
    Buffer.from([1, 0]),
  ];
  if (r.chance(0.97)) parts.push(vec16(Buffer.concat(extensions(r))));
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([0x01]), u24(body.length), body]);
}

/** Handshake bytes framed as TLS records, fragmented at random points (as a client or middlebox may). */
function records(r: Rng, hs: Buffer): Buffer {
  const out: Buffer[] = [];
  const version = r.pick([0x0301, 0x0303, 0x0300]);
  const fragment = r.chance(0.3);
  for (let off = 0; off < hs.length;) {
    const len = Math.min(hs.length - off, fragment ? r.range(1, r.chance(0.5) ? 8 : 600) : 16384);
    out.push(Buffer.from([0x16]), u16(version), u16(len), hs.subarray(off, off + len));
    off += len;
  }
  // What follows the hello (more handshake, early data) must not change the answer.
  if (r.chance(0.1)) out.push(Buffer.from([0x17, 0x03, 0x03, 0x00, 0x03, 0xaa, 0xbb, 0xcc]));
  if (r.chance(0.05)) out.push(Buffer.from([0x16, 0x03, 0x03, 0x00, 0x01, 0x02]));
  return Buffer.concat(out);
}

function sniff(buf: Buffer): TlsSniffResult {
  const r = sniffTlsUnguarded(buf);
  assert.deepEqual(sniffTls(buf), r);
  return r;
}

function loadFixtures(): Buffer[] {
  return fs
    .readdirSync(FIXTURES)
    .filter((f) => /^clienthello-.*\.bin$/.test(f))
    .sort()
    .map((f) => fs.readFileSync(path.join(FIXTURES, f)));
}

const stats = { match: 0, sni: 0, alpn: 0, noMatch: 0, needMore: 0 };

export const tlsTarget: Target = {
  name: 'tls',
  generate: (r) => records(r, clientHello(r)),
  fixtures: loadFixtures(),
  stats,
  check(buf: Buffer): void {
    const res = sniff(buf);
    if (res.status === 'need-more') stats.needMore++;
    else if (res.status === 'no-match') stats.noMatch++;
    else stats.match++;
    if (res.status === 'match') {
      if (res.sni !== undefined) stats.sni++;
      if (res.alpn !== undefined) stats.alpn++;
      if (res.sni !== undefined) assert.ok(isValidHostname(res.sni), `sni ${JSON.stringify(res.sni)} does not validate`);
      if (res.alpn !== undefined) {
        assert.ok(res.alpn.length > 0);
        for (const p of res.alpn) assert.ok(p.length > 0 && p.length < 256);
      }
    }
    if (buf.length >= TLS_SNIFF_MAX_BYTES) assert.notEqual(res.status, 'need-more', 'need-more past the sniff limit');
    // Bytes arrive in pieces: any prefix is undecided, or already says what the whole says.
    const cr = inputRng(buf);
    const cuts = new Set<number>([buf.length - 1, TLS_SNIFF_MAX_BYTES - 1, TLS_SNIFF_MAX_BYTES, 1, 5, 9]);
    for (let k = 0; k < 4; k++) cuts.add(cr.int(buf.length));
    for (const cut of cuts) {
      if (cut <= 0 || cut >= buf.length) continue;
      const p = sniff(buf.subarray(0, cut));
      if (p.status !== 'need-more') assert.deepEqual(p, res, `prefix of ${cut} bytes decided ${p.status}, the whole ${res.status}`);
    }
  },
};

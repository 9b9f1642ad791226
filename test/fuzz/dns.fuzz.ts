import assert from 'node:assert/strict';
import { SocketAddress, isIPv4 } from 'node:net';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseIPv6 } from '../../src/core/names';
import {
  DnsFormatError,
  HEADER_LEN,
  MAX_UDP_PLAIN,
  RRType,
  answerAddresses,
  buildError,
  cacheTtl,
  checkQuery,
  clientUdpLimit,
  parseMessage,
  personalize,
  readHeader,
  readName,
  sameName,
  truncate,
  type Message,
} from '../../src/dns/message';
import { inputRng, type Rng, type Target } from './harness';

/**
 * An input is a client's query and an upstream's answer to it, framed as
 * u16 length, query, answer: the query side runs what the gateway does
 * with client bytes, the answer side what it does with an upstream's.
 */
function frame(query: Buffer, answer: Buffer): Buffer {
  return Buffer.concat([Buffer.from([query.length >> 8, query.length & 0xff]), query, answer]);
}

function unframe(input: Buffer): [Buffer, Buffer] {
  if (input.length < 2) return [input, Buffer.alloc(0)];
  const qlen = input.readUInt16BE(0);
  return [input.subarray(2, 2 + qlen), input.subarray(2 + qlen)];
}

// ---- building messages from parts --------------------------------------------

class Writer {
  private bytes: number[] = [];
  /** Suffixes written so far (labels joined, lowercased) -> offset, for compression pointers. */
  private readonly names = new Map<string, number>();
  constructor(private readonly r: Rng) {}

  get length(): number {
    return this.bytes.length;
  }
  u8(n: number): void {
    this.bytes.push(n & 0xff);
  }
  u16(n: number): void {
    this.bytes.push((n >> 8) & 0xff, n & 0xff);
  }
  u32(n: number): void {
    this.u16(n >>> 16);
    this.u16(n & 0xffff);
  }
  raw(b: Buffer | number[]): void {
    for (const x of b) this.bytes.push(x);
  }
  setU16(at: number, n: number): void {
    this.bytes[at] = (n >> 8) & 0xff;
    this.bytes[at + 1] = n & 0xff;
  }
  /** A name, compressed to an earlier one's suffix when there is one (most of the time). */
  name(labels: readonly Buffer[], compress = true): void {
    const keys: string[] = [];
    for (let i = labels.length - 1, key = ''; i >= 0; i--) keys[i] = key = `${labels[i]!.toString('latin1').toLowerCase()}\0${key}`;
    for (let i = 0; i < labels.length; i++) {
      const key = keys[i]!;
      const at = this.names.get(key);
      if (compress && at !== undefined && this.r.chance(0.85)) {
        this.u16(0xc000 | at);
        return;
      }
      if (this.length < 0x3fff && !this.names.has(key)) this.names.set(key, this.length);
      this.u8(labels[i]!.length);
      this.raw(labels[i]!);
    }
    this.u8(0);
  }
  done(): Buffer {
    return Buffer.from(this.bytes);
  }
}

function label(r: Rng): Buffer {
  const len = r.chance(0.03) ? r.pick([63, 64, r.range(40, 63)]) : r.range(1, 10);
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) {
    if (r.chance(0.02)) b[i] = r.pick([0x2e, 0x5c, 0x00, 0x20, 0x7f, 0x80, 0xc0, 0xe0, 0xff, 0x0a]);
    else if (r.chance(0.1)) b[i] = r.range(0x41, 0x5a);
    else b[i] = 'abcdefghijklmnopqrstuvwxyz0123456789-_'.charCodeAt(r.int(38));
  }
  return b;
}

function labels(r: Rng): Buffer[] {
  if (r.chance(0.03)) return [];
  const n = r.chance(0.02) ? r.range(30, 130) : r.range(1, 4);
  return Array.from({ length: n }, () => label(r));
}

/** The same labels in another case mix, as a 0x20-randomizing client or a server may return them. */
function recase(r: Rng, ls: readonly Buffer[]): Buffer[] {
  return ls.map((l) => {
    const b = Buffer.from(l);
    for (let i = 0; i < b.length; i++) if (r.chance(0.3) && (b[i]! | 0x20) >= 0x61 && (b[i]! | 0x20) <= 0x7a) b[i]! ^= 0x20;
    return b;
  });
}

function opt(w: Writer, r: Rng): void {
  w.u8(0);
  w.u16(RRType.OPT);
  w.u16(r.pick([0, 512, 1232, 4096, 65535, r.int(65536)]));
  w.u32(r.chance(0.3) ? 0x8000 : r.chance(0.05) ? r.u32() : 0);
  const options: number[] = [];
  if (r.chance(0.3)) {
    // padding (RFC 7830), as DoH servers add to their answers
    const len = r.chance(0.2) ? r.range(400, 1500) : r.int(100);
    options.push(0, 12, len >> 8, len & 0xff, ...Buffer.alloc(len));
  }
  if (r.chance(0.1)) options.push(0, 10, 0, 8, ...r.bytes(8)); // cookie
  w.u16(options.length);
  w.raw(options);
}

function query(r: Rng, qname: Buffer[], qtype: number): Buffer {
  const w = new Writer(r);
  const edns = r.chance(0.4);
  w.u16(r.int(65536));
  let flags = r.chance(0.9) ? 0x0100 : 0;
  if (r.chance(0.03)) flags |= 0x8000;
  if (r.chance(0.03)) flags |= r.int(16) << 11;
  if (r.chance(0.03)) flags |= 0x0200;
  w.u16(flags);
  w.u16(r.chance(0.97) ? 1 : r.pick([0, 2]));
  w.u16(r.chance(0.98) ? 0 : 1);
  w.u16(0);
  w.u16(edns ? 1 : 0);
  w.name(qname);
  w.u16(qtype);
  w.u16(r.chance(0.95) ? 1 : r.pick([3, 255, r.int(65536)]));
  if (edns) opt(w, r);
  return w.done();
}

function answer(r: Rng, qname: Buffer[], qtype: number, q: Buffer): Buffer {
  const w = new Writer(r);
  const rcode = r.pick([0, 0, 0, 3, 3, 2, 5, r.int(16)]);
  w.u16(r.chance(0.95) ? q.readUInt16BE(0) : r.int(65536));
  w.u16((r.chance(0.97) ? 0x8000 : 0) | 0x0100 | 0x0080 | (r.chance(0.03) ? 0x0200 : 0) | rcode);
  const counts = HEADER_LEN - 8;
  w.u16(1);
  w.raw([0, 0, 0, 0, 0, 0]); // counts, filled in below
  w.name(recase(r, qname));
  w.u16(r.chance(0.97) ? qtype : r.int(65536));
  w.u16(1);

  const sections = [0, 0, 0];
  const many = r.chance(0.1);
  const nAnswers = rcode === 0 && r.chance(0.8) ? r.range(1, many ? 60 : 4) : 0;
  const rr = (owner: Buffer[], type: number, body: () => void): void => {
    w.name(owner);
    w.u16(type);
    w.u16(1);
    w.u32(r.pick([0, 1, 60, 300, 86400, 0x7fffffff, 0xffffffff, r.u32()]));
    const lenAt = w.length;
    w.u16(0);
    body();
    w.setU16(lenAt, w.length - lenAt - 2);
  };
  let owner = qname;
  for (let i = 0; i < nAnswers; i++) {
    const type = r.chance(0.1) ? RRType.CNAME : r.chance(0.8) ? qtype : r.pick([RRType.A, RRType.AAAA, RRType.TXT, RRType.MX]);
    if (type === RRType.CNAME) {
      const target = labels(r);
      rr(owner, type, () => w.name(target));
      owner = target;
      continue;
    }
    rr(owner, type, () => {
      if (type === RRType.A) w.raw(r.bytes(r.chance(0.95) ? 4 : r.int(8)));
      else if (type === RRType.AAAA) {
        const a = r.bytes(16);
        if (r.chance(0.5)) a.fill(0, r.int(16), r.int(17));
        if (r.chance(0.1)) a.fill(0, 0, 10).fill(0xff, 10, 12);
        w.raw(r.chance(0.95) ? a : r.bytes(r.int(20)));
      } else if (type === RRType.MX) {
        w.u16(10);
        w.name(labels(r));
      } else w.raw(r.bytes(r.int(60)));
    });
  }
  sections[0] = nAnswers;
  if ((rcode === 3 || nAnswers === 0) && r.chance(0.7)) {
    rr(qname.slice(r.int(qname.length + 1)), RRType.SOA, () => {
      w.name(labels(r));
      w.name(labels(r));
      for (let i = 0; i < 5; i++) w.u32(r.chance(0.5) ? r.int(4000) : r.u32());
      if (r.chance(0.05)) w.raw(r.bytes(r.int(4)));
    });
    sections[1] = 1;
  }
  if (r.chance(0.5)) {
    opt(w, r);
    sections[2] = 1;
  }
  const out = w.done();
  for (let i = 0; i < 3; i++) out.writeUInt16BE(sections[i]!, counts + 2 + 2 * i);
  return out;
}

function generate(r: Rng): Buffer {
  const qname = labels(r);
  const qtype = r.pick([RRType.A, RRType.AAAA, RRType.A, RRType.MX, RRType.TXT, r.int(65536)]);
  const q = query(r, qname, qtype);
  return frame(q, r.chance(0.95) ? answer(r, qname, qtype, q) : Buffer.alloc(0));
}

// ---- references and invariants ---------------------------------------------------

/**
 * The labels of the name at `off`, written apart from readName: every jump
 * must land before every place the name was read from so far (which
 * rules out loops) and past the header, labels up to 63 bytes, 255 bytes
 * in all with the root.
 */
function refLabels(buf: Buffer, off: number): { labels: Buffer[]; end: number } | undefined {
  const out: Buffer[] = [];
  const starts = [off];
  let pos = off;
  let end: number | undefined;
  let wire = 1;
  while (pos < buf.length) {
    const b = buf[pos]!;
    if (b === 0) return { labels: out, end: end ?? pos + 1 };
    if (b >= 0xc0) {
      if (pos + 2 > buf.length) return undefined;
      const target = buf.readUInt16BE(pos) & 0x3fff;
      end ??= pos + 2;
      if (target < HEADER_LEN || starts.some((s) => target >= s)) return undefined;
      starts.push(target);
      pos = target;
    } else if (b >= 0x40) {
      return undefined;
    } else {
      if (pos + 1 + b > buf.length) return undefined;
      wire += b + 1;
      if (wire > 255) return undefined;
      out.push(buf.subarray(pos + 1, pos + 1 + b));
      pos += 1 + b;
    }
  }
  return undefined;
}

/**
 * Reads name text back into labels: dots separate labels, a backslash
 * escapes the next character or starts \DDD (RFC 1035 5.1). A name's text
 * must give back exactly its wire labels, or two different names (one
 * label "a.b" and the two labels "a", "b") would share a cache entry.
 */
function textToLabels(name: string): Buffer[] {
  if (name === '') return [];
  const out: Buffer[] = [];
  let cur: number[] = [];
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0x2e) {
      out.push(Buffer.from(cur));
      cur = [];
    } else if (c === 0x5c && /^[0-9]{3}$/.test(name.slice(i + 1, i + 4))) {
      cur.push(Number(name.slice(i + 1, i + 4)));
      i += 3;
    } else if (c === 0x5c && i + 1 < name.length) {
      cur.push(name.charCodeAt(++i));
    } else {
      cur.push(c);
    }
  }
  out.push(Buffer.from(cur));
  return out;
}

function checkName(buf: Buffer, off: number): string | undefined {
  const ref = refLabels(buf, off);
  let got: { name: string; end: number };
  try {
    got = readName(buf, off);
  } catch (err) {
    assert.ok(err instanceof DnsFormatError, `readName threw ${String(err)}`);
    assert.equal(ref, undefined, `readName refused a name the reference reads at ${off}`);
    return undefined;
  }
  assert.ok(ref, `readName read a name the reference refuses at ${off}`);
  assert.equal(got.end, ref.end);
  assert.ok(got.end > off && got.end <= buf.length);
  assert.deepEqual(textToLabels(got.name), ref.labels, `name text ${JSON.stringify(got.name)} does not say which labels it has`);
  return got.name;
}

function parse(buf: Buffer): Message | undefined {
  let m: Message;
  try {
    m = parseMessage(buf);
  } catch (err) {
    assert.ok(err instanceof DnsFormatError, `parseMessage threw ${String(err)}`);
    return undefined;
  }
  const h = m.header;
  assert.deepEqual(h, readHeader(buf));
  if (m.question) {
    assert.equal(h.qdcount, 1);
    assert.equal(m.question.start, HEADER_LEN);
    assert.ok(m.question.end <= buf.length);
    assert.equal(m.question.name, checkName(buf, HEADER_LEN));
    assert.equal(m.question.type, buf.readUInt16BE(m.question.end - 4));
  } else {
    assert.equal(h.qdcount, 0);
  }
  assert.equal(m.records.length + (m.opt ? 1 : 0), h.ancount + h.nscount + h.arcount);
  let prev = m.question ? m.question.end : HEADER_LEN;
  for (const rr of m.records) {
    assert.ok(rr.ttlOffset >= prev && rr.rdataStart === rr.ttlOffset + 6 && rr.rdataEnd <= buf.length && rr.rdataStart <= rr.rdataEnd);
    assert.equal(rr.ttl, buf.readUInt32BE(rr.ttlOffset));
    assert.equal(rr.rdataEnd - rr.rdataStart, buf.readUInt16BE(rr.ttlOffset + 4));
    prev = rr.rdataEnd;
  }
  if (m.opt) {
    assert.ok(m.edns && m.edns.udpSize >= MAX_UDP_PLAIN);
    assert.ok(m.opt.start >= HEADER_LEN && m.opt.end <= buf.length);
    assert.equal(readName(buf, m.opt.start).name, '', 'the OPT record is owned by the root');
  } else {
    assert.equal(m.edns, undefined);
  }
  return m;
}

/** The 16 bytes of an all-hex IPv6 text (with at most one '::'). */
function v6Bytes(text: string): Buffer {
  // A dotted tail (::ffff:a.b.c.d) as the two groups it stands for.
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(2).map(Number) as [number, number, number, number];
    text = `${dotted[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  assert.equal(groups.length, 8, text);
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => {
    assert.match(g, /^(?:0|[1-9a-f][0-9a-f]{0,3})$/, `group ${g} of ${text}`);
    out.writeUInt16BE(parseInt(g, 16), 2 * i);
  });
  return out;
}

function checkAnswerReaders(a: Buffer, m: Message): void {
  const ttl = cacheTtl(a, m);
  if (ttl !== undefined) assert.ok(Number.isInteger(ttl) && ttl >= 0 && ttl <= 0xffffffff);
  if (m.header.tc || (m.header.rcode !== 0 && m.header.rcode !== 3)) assert.equal(ttl, undefined);
  const addrs = answerAddresses(a, m);
  const expected = m.records.filter(
    (rr) =>
      rr.section === 'answer' &&
      ((rr.type === RRType.A && rr.rdataEnd - rr.rdataStart === 4) || (rr.type === RRType.AAAA && rr.rdataEnd - rr.rdataStart === 16)),
  );
  assert.equal(addrs.length, expected.length);
  addrs.forEach((x, i) => {
    const rr = expected[i]!;
    assert.equal(x.ttl, rr.ttl);
    if (rr.type === RRType.A) {
      assert.ok(isIPv4(x.address));
      assert.deepEqual(Buffer.from(x.address.split('.').map(Number)), a.subarray(rr.rdataStart, rr.rdataEnd));
    } else {
      // The address the record holds, in canonical text (RFC 5952) as Node's inet_ntop prints it, but for
      // the deprecated IPv4-compatible ::a.b.c.d, which Node writes dotted and ours keep in hex.
      assert.deepEqual(v6Bytes(x.address), a.subarray(rr.rdataStart, rr.rdataEnd));
      const node = new SocketAddress({ address: x.address, family: 'ipv6' }).address;
      if (!node.includes('.') || node.startsWith('::ffff:')) assert.equal(x.address, node);
      assert.equal(parseIPv6(x.address), x.address);
    }
  });
}

function checkBuiltError(q: Buffer, rcode: number, qname: string | undefined): void {
  const e = buildError(q, rcode);
  if (q.length < HEADER_LEN) {
    assert.equal(e, undefined);
    return;
  }
  assert.ok(e);
  const m = parse(e);
  assert.ok(m, 'buildError output does not parse');
  const qh = readHeader(q);
  assert.equal(m.header.id, qh.id);
  assert.ok(m.header.qr);
  assert.equal(m.header.rcode, rcode & 0xf);
  assert.equal(m.header.opcode, qh.opcode);
  assert.equal(m.header.rd, qh.rd);
  assert.equal(m.records.length, 0);
  if (qname !== undefined) {
    assert.ok(m.question, 'the error answer lost the question');
    assert.equal(m.question.name, qname);
  }
}

const stats = { queryOk: 0, answerOk: 0, personalized: 0, truncated: 0 };

function check(input: Buffer): void {
  const [q, a] = unframe(input);
  const cr = inputRng(input);
  // readName anywhere: refuses with DnsFormatError or reads what the reference reads
  if (q.length > 0) checkName(q, cr.int(q.length));
  if (a.length > 0) checkName(a, cr.int(a.length));

  const qm = parse(q);
  const c = checkQuery(q);
  if (c.ok) {
    stats.queryOk++;
    assert.ok(qm && qm.question && !qm.header.qr && qm.header.opcode === 0);
    assert.equal(qm.header.ancount + qm.header.nscount, 0);
    assert.deepEqual(c.message, qm);
    assert.equal(c.question, c.message.question);
    const limit = clientUdpLimit(c.message);
    assert.ok(limit >= MAX_UDP_PLAIN && limit <= 65535);
    checkBuiltError(q, cr.pick([1, 2, 3, 4, 5]), c.question.name);
  } else if (c.rcode === undefined) {
    assert.ok(q.length < HEADER_LEN || readHeader(q).qr, 'dropped a query that had a header and was no response');
  } else {
    checkBuiltError(q, c.rcode, undefined);
  }

  const am = parse(a);
  if (!am) return;
  stats.answerOk++;
  checkAnswerReaders(a, am);
  if (!c.ok) return;
  // What the resolver accepts from an upstream (DnsResolver#fetch): a response to this very question.
  const aq = am.question;
  const qq = c.question;
  if (!am.header.qr || !aq || !sameName(aq.name, qq.name) || aq.type !== qq.type || aq.class !== qq.class) return;

  const age = cr.pick([0, 0, 1, 59, 3600, 0x7fffffff]);
  const out = personalize(a, am, q, qq, age);
  stats.personalized++;
  const om = parse(out);
  assert.ok(om, 'personalize output does not parse');
  assert.equal(om.header.id, q.readUInt16BE(0));
  assert.equal(om.header.rd, c.message.header.rd);
  assert.ok(om.question && sameName(om.question.name, qq.name) && om.question.type === qq.type && om.question.class === qq.class);
  if (aq.end - aq.start === qq.end - qq.start) assert.equal(om.question.name, qq.name, "the client's case did not come back");
  assert.equal(om.records.length, am.records.length);
  om.records.forEach((rr, i) => assert.equal(rr.ttl, age > 0 ? Math.max(0, am.records[i]!.ttl - age) : am.records[i]!.ttl));

  const limit = clientUdpLimit(c.message);
  const t = truncate(out, am, limit);
  if (out.length <= limit) {
    assert.equal(t, out);
    return;
  }
  stats.truncated++;
  const tm = parse(t);
  assert.ok(tm, 'truncated answer does not parse');
  assert.ok(t.length <= limit, `truncated answer of ${t.length} bytes over the client's limit of ${limit}`);
  assert.ok(tm.header.tc);
  assert.equal(tm.header.id, om.header.id);
  assert.equal(tm.header.rcode, om.header.rcode);
  assert.ok(tm.question && tm.question.name === om.question.name && tm.question.type === qq.type);
  assert.equal(tm.records.length, 0);
  assert.equal(tm.edns !== undefined, am.edns !== undefined);
}

// The unit tests' messages, read out of their source so the two stay one set.
function loadFixtures(): Buffer[] {
  const src = fs.readFileSync(path.join(__dirname, '../../../test/unit/dns-message.test.ts'), 'utf8');
  const msgs = [...src.matchAll(/hex\(`([0-9a-f\s]+)`\)/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'hex'));
  const queries = msgs.filter((m) => m.length >= HEADER_LEN && (m[2]! & 0x80) === 0);
  const answers = msgs.filter((m) => m.length >= HEADER_LEN && (m[2]! & 0x80) !== 0);
  const out: Buffer[] = [];
  for (const q of queries) for (const a of answers) out.push(frame(q, a));
  return out;
}

export const dnsTarget: Target = {
  name: 'dns',
  generate,
  fixtures: loadFixtures(),
  check,
  stats,
  describe(input: Buffer): string {
    const [q, a] = unframe(input);
    return `${input.toString('hex')}\n  query:  ${q.toString('hex')}\n  answer: ${a.toString('hex')}`;
  },
};

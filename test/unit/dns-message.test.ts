import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DnsFormatError,
  Rcode,
  answerAddresses,
  buildError,
  buildQuery,
  cacheTtl,
  checkQuery,
  clientUdpLimit,
  parseMessage,
  personalize,
  readName,
  sameName,
  truncate,
} from '../../src/dns/message';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// www.example.test A, ID 0x1234, RD, no EDNS (as dig +noedns sends it).
const QUERY = hex(`
  1234 0100 0001 0000 0000 0000
  03 777777 07 6578616d706c65 04 74657374 00  0001 0001`);

// The same question in mixed case: WwW.example.test, ID 0xbeef, with EDNS (udp 1232, DO clear).
const QUERY_MIXED_EDNS = hex(`
  beef 0100 0001 0000 0000 0001
  03 577757 07 6578616d706c65 04 74657374 00  0001 0001
  00 0029 04d0 00000000 0000`);

// Answer to QUERY: two A records, owner names compressed to the question (c00c), TTLs 300 and 120.
const ANSWER = hex(`
  1234 8180 0001 0002 0000 0000
  03 777777 07 6578616d706c65 04 74657374 00  0001 0001
  c00c 0001 0001 0000012c 0004 cb007102
  c00c 0001 0001 00000078 0004 cb007103`);

// NXDOMAIN with an SOA in authority: SOA TTL 900, MINIMUM 60 -> cache 60 s (RFC 2308).
const NXDOMAIN = hex(`
  1234 8183 0001 0000 0001 0000
  03 777777 07 6578616d706c65 04 74657374 00  0001 0001
  c010 0006 0001 00000384 001e
    02 6e73 c010   02 6869 c010   00000001 00000e10 00000258 00093a80 0000003c`);

describe('dns message: parsing', () => {
  it('reads a query: header, question, no EDNS -> 512-byte UDP limit', () => {
    const c = checkQuery(QUERY);
    assert.ok(c.ok);
    assert.equal(c.question.name, 'www.example.test');
    assert.equal(c.question.type, 1);
    assert.equal(c.message.header.id, 0x1234);
    assert.equal(c.message.header.rd, true);
    assert.equal(clientUdpLimit(c.message), 512);
  });

  it('reads EDNS: the payload size from the OPT record', () => {
    const c = checkQuery(QUERY_MIXED_EDNS);
    assert.ok(c.ok);
    assert.equal(c.question.name, 'WwW.example.test');
    assert.deepEqual(c.message.edns, { udpSize: 1232, dnssecOk: false });
    assert.equal(clientUdpLimit(c.message), 1232);
  });

  it('follows compression pointers and records TTL offsets', () => {
    const m = parseMessage(ANSWER);
    assert.equal(m.records.length, 2);
    assert.equal(m.records[0]!.name, 'www.example.test');
    assert.equal(m.records[0]!.ttl, 300);
    assert.equal(ANSWER.readUInt32BE(m.records[1]!.ttlOffset), 120);
    assert.deepEqual(
      answerAddresses(ANSWER, m).map((a) => a.address),
      ['203.0.113.2', '203.0.113.3'],
    );
  });

  it('refuses a pointer that points forwards or at itself (loops)', () => {
    // Names in a message: after a 12-byte header.
    const header = Buffer.alloc(12);
    // "a" then a pointer back to the start of the same name: a loop.
    const loop = Buffer.concat([header, hex('01 61 c00c')]);
    assert.throws(() => readName(loop, 12), DnsFormatError);
    // Backwards to an earlier, finished name is fine.
    assert.deepEqual(readName(Buffer.concat([header, hex('01 61 00 01 62 c00c')]), 15), { name: 'b.a', end: 19 });
    const self = Buffer.concat([header, hex('c00c')]);
    assert.throws(() => readName(self, 12), DnsFormatError);
    const forward = Buffer.concat([header, hex('c00e 00')]);
    assert.throws(() => readName(forward, 12), DnsFormatError);
  });

  it('a label holding a dot is not the name its text spells (one odd question filled the cache entry of the real name)', () => {
    // One label "www.example.test" (wire 10 www.example.test 00): read raw it was the text of QUERY's three labels,
    // so it shared QUERY's cache key and, with a question of the same length, its answer went to every client.
    const odd = hex(`
      0001 0100 0001 0000 0000 0000
      10 7777772e6578616d706c652e74657374 00  0001 0001`);
    const c = checkQuery(odd);
    assert.ok(c.ok);
    assert.equal(c.question.name, 'www\\.example\\.test');
    assert.equal(c.question.end - c.question.start, parseMessage(QUERY).question!.end - parseMessage(QUERY).question!.start);
    assert.equal(sameName(c.question.name, parseMessage(QUERY).question!.name), false);
    // Backslash, NUL, high bytes and space escaped (RFC 1035 5.1), so case folding only meets ASCII letters:
    // labels C0 and E0 were 'À' and 'à' to toLowerCase and shared a cache entry too.
    assert.equal(readName(hex('03 615c62 02 00ff 01 20 00'), 0).name, 'a\\\\b.\\000\\255.\\032');
    assert.equal(sameName(readName(hex('01 c0 00'), 0).name, readName(hex('01 e0 00'), 0).name), false);
  });

  it('refuses a pointer into the header (the error answer to such a question did not parse)', () => {
    // Question "x" then a pointer to offset 2: the flags 01 00 read as the label "\0". buildError writes other
    // flags (81 80...), so its copy of the question read 0x81 as a label type and the answer was malformed.
    const q = hex('8918 0100 0001 0000 0000 0000  01 78 c002  001c 0001');
    const c = checkQuery(q);
    assert.equal(!c.ok && c.rcode, Rcode.FORMERR);
    const e = buildError(q, Rcode.FORMERR)!;
    const m = parseMessage(e);
    assert.equal(m.header.rcode, Rcode.FORMERR);
    assert.equal(m.question, undefined);
    assert.throws(() => readName(hex('0000 0000 0000 0000 0000 0000 c000'), 12), /into the header/);
  });

  it('refuses names over 255 bytes and labels past the end', () => {
    const long = Buffer.concat([
      ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])),
      Buffer.from([0]),
    ]);
    assert.throws(() => readName(long, 0), /longer than 255/);
    assert.throws(() => readName(hex('05 6162'), 0), /past the end/);
  });

  it('malformed queries: FORMERR, drop or NOTIMP, never a throw', () => {
    assert.deepEqual(checkQuery(hex('00')), { ok: false, rcode: undefined, reason: 'message of 1 bytes is shorter than a DNS header' });
    const response = checkQuery(ANSWER);
    assert.equal(response.ok, false);
    assert.equal(!response.ok && response.rcode, undefined, 'responses are dropped');
    const trailing = checkQuery(Buffer.concat([QUERY, hex('00')]));
    assert.equal(!trailing.ok && trailing.rcode, Rcode.FORMERR);
    const two = Buffer.from(QUERY);
    two.writeUInt16BE(2, 4);
    assert.equal(((c) => !c.ok && c.rcode)(checkQuery(two)), Rcode.FORMERR);
    const notify = Buffer.from(QUERY);
    notify.writeUInt16BE(0x2000, 2); // opcode 4 (NOTIFY)
    assert.equal(((c) => !c.ok && c.rcode)(checkQuery(notify)), Rcode.NOTIMP);
    const none = hex('1234 0100 0000 0000 0000 0000');
    assert.equal(((c) => !c.ok && c.rcode)(checkQuery(none)), Rcode.FORMERR);
    for (let i = 0; i < 500; i++) {
      const junk = Buffer.from(Array.from({ length: 1 + (i % 90) }, (_, j) => (i * 31 + j * 17) & 0xff));
      checkQuery(junk); // must not throw
      buildError(junk, Rcode.FORMERR);
    }
  });
});

describe('dns message: building answers', () => {
  it('buildError keeps ID, RD and the question', () => {
    const out = buildError(QUERY, Rcode.SERVFAIL)!;
    assert.equal(out.readUInt16BE(0), 0x1234);
    assert.equal(out.readUInt16BE(2), 0x8182); // QR RD RA, SERVFAIL
    assert.equal(out.readUInt16BE(4), 1);
    assert.deepEqual(out.subarray(12), QUERY.subarray(12));
    assert.equal(buildError(hex('0102'), Rcode.FORMERR), undefined, 'nothing to answer without a header');
  });

  it('buildQuery round-trips through the parser', () => {
    const q = buildQuery(7, 'a.b.example', 28, { ednsSize: 1232 });
    const c = checkQuery(q);
    assert.ok(c.ok);
    assert.equal(c.question.name, 'a.b.example');
    assert.equal(c.question.type, 28);
    assert.equal(c.message.edns?.udpSize, 1232);
  });

  it('personalize: client ID, the case it asked, TTLs aged; the cached copy untouched', () => {
    const parsed = parseMessage(ANSWER);
    const c = checkQuery(QUERY_MIXED_EDNS);
    assert.ok(c.ok);
    const before = Buffer.from(ANSWER);
    const out = personalize(ANSWER, parsed, QUERY_MIXED_EDNS, c.question, 100);
    assert.equal(out.readUInt16BE(0), 0xbeef);
    assert.equal(parseMessage(out).question!.name, 'WwW.example.test');
    assert.deepEqual(
      parseMessage(out).records.map((r) => r.ttl),
      [200, 20],
    );
    assert.deepEqual(
      parseMessage(personalize(ANSWER, parsed, QUERY_MIXED_EDNS, c.question, 500)).records.map((r) => r.ttl),
      [0, 0],
      'never below 0',
    );
    assert.deepEqual(ANSWER, before);
  });

  it('truncate: over the limit -> header + question (+ OPT), TC set, counts fixed', () => {
    const parsed = parseMessage(ANSWER);
    assert.equal(truncate(ANSWER, parsed, 512), ANSWER, 'fits: unchanged');
    const t = truncate(ANSWER, parsed, 40);
    const h = parseMessage(t).header;
    assert.equal(h.tc, true);
    assert.equal(h.ancount, 0);
    assert.equal(h.qdcount, 1);
    assert.equal(t.length, 12 + 22);
    assert.equal(t.readUInt16BE(0), 0x1234);
  });

  it('truncate fits the limit when the OPT record alone is larger (EDNS padding made the truncated answer 924 bytes for a 512-byte client)', () => {
    // ANSWER with an OPT record (payload size 1232, DO set) holding 600 bytes of padding (RFC 7830), as DoH servers send.
    const padded = Buffer.concat([ANSWER, hex('00 0029 04d0 00008000 025c 000c 0258'), Buffer.alloc(600)]);
    padded.writeUInt16BE(1, 10);
    const parsed = parseMessage(padded);
    assert.ok(parsed.edns);
    const t = truncate(padded, parsed, 512);
    assert.ok(t.length <= 512, `${t.length} bytes`);
    const m = parseMessage(t);
    assert.equal(m.header.tc, true);
    assert.equal(m.question!.name, 'www.example.test');
    assert.deepEqual(m.edns, { udpSize: 1232, dnssecOk: true }, 'the OPT stays, without its options');
    assert.equal(m.opt!.end - m.opt!.start, 11);
    // When header, question and the whole OPT fit (681 bytes cut to 649), the OPT is kept as it was.
    const kept = parseMessage(truncate(padded, parsed, 660));
    assert.equal(kept.header.tc, true);
    assert.equal(kept.opt!.end - kept.opt!.start, 11 + 604);
  });

  it('truncate writes the OPT with a root owner (a compressed owner pointed into the dropped records: the answer did not parse)', () => {
    // The OPT's owner is a pointer to offset 47, the 00 inside the first A record's address (203.0.113.2).
    const odd = Buffer.concat([ANSWER, hex('c02f 0029 04d0 00008000 0000')]);
    odd.writeUInt16BE(1, 10);
    const parsed = parseMessage(odd);
    assert.deepEqual(parsed.edns, { udpSize: 1232, dnssecOk: true });
    const m = parseMessage(truncate(odd, parsed, 60));
    assert.equal(m.header.tc, true);
    assert.equal(m.records.length, 0);
    assert.deepEqual(m.edns, { udpSize: 1232, dnssecOk: true });
  });

  it('cacheTtl: positive by the smallest TTL, negative by the SOA (RFC 2308), SERVFAIL and TC never', () => {
    assert.equal(cacheTtl(ANSWER, parseMessage(ANSWER)), 120);
    assert.equal(cacheTtl(NXDOMAIN, parseMessage(NXDOMAIN)), 60);
    const noSoa = hex('1234 8183 0001 0000 0000 0000 03 777777 07 6578616d706c65 04 74657374 00 0001 0001');
    assert.equal(cacheTtl(noSoa, parseMessage(noSoa)), undefined, 'negative without SOA: not cached');
    const servfail = buildError(QUERY, Rcode.SERVFAIL)!;
    assert.equal(cacheTtl(servfail, parseMessage(servfail)), undefined);
    const tc = Buffer.from(ANSWER);
    tc.writeUInt16BE(0x8380, 2);
    assert.equal(cacheTtl(tc, parseMessage(tc)), undefined);
  });

  it('answerAddresses formats AAAA the RFC 5952 way', () => {
    const aaaa = hex(`
      0001 8180 0001 0001 0000 0000
      01 61 00 001c 0001
      c00c 001c 0001 0000003c 0010 20010db8000300000000000000000002`);
    assert.deepEqual(answerAddresses(aaaa, parseMessage(aaaa)), [{ address: '2001:db8:3::2', ttl: 60 }]);
  });
});

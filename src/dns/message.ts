/**
 * DNS wire format (RFC 1035), only as much as a forwarding gateway needs:
 * the header, the question, and where each record's TTL sits so that
 * cached answers can be aged in place. Pure: no I/O. Every reader checks
 * bounds; malformed input throws DnsFormatError, never reads out of range.
 */
import { formatIPv4, formatIPv6 } from '../core/ip';

export const HEADER_LEN = 12;
export const MAX_UDP_PLAIN = 512;
/** No DNS message can be longer: TCP's length prefix is 16 bits. */
const MAX_MESSAGE = 65535;

export const Rcode = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const RRType = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, OPT: 41 } as const;

const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];
const TYPE_NAMES = new Map<number, string>(Object.entries(RRType).map(([k, v]) => [v, k]));

export function rcodeName(rcode: number): string {
  return RCODE_NAMES[rcode] ?? `RCODE${rcode}`;
}

export function typeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `TYPE${type}`;
}

export class DnsFormatError extends Error {
  override readonly name = 'DnsFormatError';
}

export interface Header {
  id: number;
  qr: boolean;
  opcode: number;
  tc: boolean;
  rd: boolean;
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
}

export interface Question {
  /** As asked (case kept), without the trailing dot, as master-file text (see labelText); '' for the root. */
  name: string;
  type: number;
  class: number;
  /** Byte range of the whole question entry (name, type, class) in the message. */
  start: number;
  end: number;
}

export interface Edns {
  /** The requestor's UDP payload size (at least 512). */
  udpSize: number;
  /** DNSSEC OK bit. */
  dnssecOk: boolean;
}

export interface ResourceRecord {
  name: string;
  type: number;
  class: number;
  ttl: number;
  /** Offset of the 32-bit TTL in the message, to age it in place. */
  ttlOffset: number;
  rdataStart: number;
  rdataEnd: number;
  section: 'answer' | 'authority' | 'additional';
}

export interface Message {
  header: Header;
  question: Question | undefined;
  records: ResourceRecord[];
  edns: Edns | undefined;
  /** Where the OPT record starts and ends, if there is one. */
  opt: { start: number; end: number } | undefined;
}

export function readHeader(buf: Buffer): Header {
  if (buf.length < HEADER_LEN) throw new DnsFormatError(`message of ${buf.length} bytes is shorter than a DNS header`);
  const flags = buf.readUInt16BE(2);
  return {
    id: buf.readUInt16BE(0),
    qr: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0xf,
    tc: (flags & 0x0200) !== 0,
    rd: (flags & 0x0100) !== 0,
    rcode: flags & 0xf,
    qdcount: buf.readUInt16BE(4),
    ancount: buf.readUInt16BE(6),
    nscount: buf.readUInt16BE(8),
    arcount: buf.readUInt16BE(10),
  };
}

/**
 * Reads a possibly compressed name at `off` of a message. Pointers must
 * point backwards (RFC 1035 allows only earlier offsets in practice), which
 * also rules out loops, and past the header; labels are limited to 63
 * bytes and names to 255.
 */
export function readName(buf: Buffer, off: number): { name: string; end: number } {
  const labels: string[] = [];
  let pos = off;
  let end = -1;
  let total = 0;
  let lowest = off;
  for (;;) {
    if (pos >= buf.length) throw new DnsFormatError('name runs past the end of the message');
    const len = buf[pos]!;
    if (len === 0) {
      if (end < 0) end = pos + 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsFormatError('compression pointer runs past the end');
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      if (end < 0) end = pos + 2;
      if (target >= lowest) throw new DnsFormatError('compression pointer does not point backwards');
      // The header holds no name (RFC 1035 4.1.4: a pointer names a prior occurrence of one). A name read out
      // of the ID and flags changed with them: the error answer to such a question did not parse.
      if (target < HEADER_LEN) throw new DnsFormatError('compression pointer into the header');
      lowest = target;
      pos = target;
      continue;
    }
    if (kind !== 0) throw new DnsFormatError(`unsupported label type 0x${kind.toString(16)}`);
    if (pos + 1 + len > buf.length) throw new DnsFormatError('label runs past the end of the message');
    total += len + 1;
    if (total > 254) throw new DnsFormatError('name longer than 255 bytes');
    labels.push(labelText(buf, pos + 1, pos + 1 + len));
    pos += 1 + len;
  }
  return { name: labels.join('.'), end };
}

/**
 * A label as master-file text (RFC 1035 5.1): '.' and '\' escaped with a
 * backslash, bytes outside printable ASCII as \DDD. A label may hold any
 * byte; read raw, the one label "www.example.test" was the same text as
 * the three labels of www.example.test, so a client asking the odd name
 * filled the cache entry (and answer) every client got for the real one.
 * Escaped, a name's text says which labels it has, and case folding
 * (sameName, cache keys) only ever touches ASCII letters (RFC 4343).
 */
function labelText(buf: Buffer, start: number, end: number): string {
  for (let i = start; i < end; i++) {
    const b = buf[i]!;
    if (b <= 0x20 || b >= 0x7f || b === 0x2e || b === 0x5c) return escapeLabel(buf, start, end);
  }
  return buf.toString('latin1', start, end);
}

function escapeLabel(buf: Buffer, start: number, end: number): string {
  let out = '';
  for (let i = start; i < end; i++) {
    const b = buf[i]!;
    if (b === 0x2e || b === 0x5c) out += `\\${String.fromCharCode(b)}`;
    else if (b <= 0x20 || b >= 0x7f) out += `\\${b.toString().padStart(3, '0')}`;
    else out += String.fromCharCode(b);
  }
  return out;
}

function readQuestion(buf: Buffer, off: number): Question {
  const { name, end } = readName(buf, off);
  if (end + 4 > buf.length) throw new DnsFormatError('question runs past the end of the message');
  return { name, type: buf.readUInt16BE(end), class: buf.readUInt16BE(end + 2), start: off, end: end + 4 };
}

/** Parses a whole message. Throws DnsFormatError on anything malformed. */
export function parseMessage(buf: Buffer): Message {
  if (buf.length > MAX_MESSAGE) throw new DnsFormatError(`message of ${buf.length} bytes is longer than ${MAX_MESSAGE}`);
  const header = readHeader(buf);
  if (header.qdcount > 1) throw new DnsFormatError(`${header.qdcount} questions: only one per message is supported`);
  let off = HEADER_LEN;
  let question: Question | undefined;
  if (header.qdcount === 1) {
    question = readQuestion(buf, off);
    off = question.end;
  }
  const records: ResourceRecord[] = [];
  let edns: Edns | undefined;
  let opt: Message['opt'];
  const sections: Array<[ResourceRecord['section'], number]> = [
    ['answer', header.ancount],
    ['authority', header.nscount],
    ['additional', header.arcount],
  ];
  for (const [section, count] of sections) {
    for (let i = 0; i < count; i++) {
      const start = off;
      const { name, end } = readName(buf, off);
      if (end + 10 > buf.length) throw new DnsFormatError('record header runs past the end of the message');
      const type = buf.readUInt16BE(end);
      const klass = buf.readUInt16BE(end + 2);
      const ttl = buf.readUInt32BE(end + 4);
      const rdlen = buf.readUInt16BE(end + 8);
      const rdataStart = end + 10;
      const rdataEnd = rdataStart + rdlen;
      if (rdataEnd > buf.length) throw new DnsFormatError('record data runs past the end of the message');
      off = rdataEnd;
      if (type === RRType.OPT) {
        if (section !== 'additional' || name !== '' || edns) throw new DnsFormatError('misplaced or repeated OPT record');
        // The OPT record's class is the UDP payload size, its TTL field holds the extended flags.
        edns = { udpSize: Math.max(MAX_UDP_PLAIN, klass), dnssecOk: (ttl & 0x8000) !== 0 };
        opt = { start, end: rdataEnd };
        continue;
      }
      records.push({ name, type, class: klass, ttl, ttlOffset: end + 4, rdataStart, rdataEnd, section });
    }
  }
  if (off !== buf.length) throw new DnsFormatError(`${buf.length - off} bytes after the last record`);
  return { header, question, records, edns, opt };
}

/** A query the gateway can answer: parsed, or the reason it cannot be. */
export type QueryCheck = { ok: true; message: Message; question: Question } | { ok: false; rcode: number | undefined; reason: string };

/**
 * Checks a client's query. rcode undefined means drop silently (not even a
 * header to answer to, or it is itself a response: answering those would
 * let anyone bounce packets off the gateway).
 */
export function checkQuery(buf: Buffer): QueryCheck {
  let header: Header;
  try {
    header = readHeader(buf);
  } catch (err) {
    return { ok: false, rcode: undefined, reason: (err as Error).message };
  }
  if (header.qr) return { ok: false, rcode: undefined, reason: 'a response, not a query' };
  if (header.opcode !== 0) return { ok: false, rcode: Rcode.NOTIMP, reason: `opcode ${header.opcode} is not supported` };
  let message: Message;
  try {
    message = parseMessage(buf);
  } catch (err) {
    return { ok: false, rcode: Rcode.FORMERR, reason: (err as Error).message };
  }
  if (!message.question || header.ancount !== 0 || header.nscount !== 0) {
    return { ok: false, rcode: Rcode.FORMERR, reason: 'a query needs exactly one question and no answers' };
  }
  return { ok: true, message, question: message.question };
}

/** The largest answer a client can take over UDP: 512, or its EDNS payload size (RFC 6891). */
export function clientUdpLimit(query: Message): number {
  return query.edns ? Math.min(query.edns.udpSize, MAX_MESSAGE) : MAX_UDP_PLAIN;
}

/**
 * An answer with no records and the given rcode, for a query that could be
 * read at least as far as its header: same ID, opcode and RD, the question
 * echoed when it parsed.
 */
export function buildError(query: Buffer, rcode: number): Buffer | undefined {
  let header: Header;
  try {
    header = readHeader(query);
  } catch {
    return undefined;
  }
  let question: Buffer = Buffer.alloc(0);
  if (header.qdcount === 1) {
    try {
      const q = readQuestion(query, HEADER_LEN);
      question = query.subarray(q.start, q.end);
    } catch {
      /* answer without the question */
    }
  }
  const out = Buffer.alloc(HEADER_LEN + question.length);
  out.writeUInt16BE(header.id, 0);
  // QR, the query's opcode and RD, RA (the gateway recurses for its clients), rcode.
  out.writeUInt16BE(0x8000 | (header.opcode << 11) | (header.rd ? 0x0100 : 0) | 0x0080 | (rcode & 0xf), 2);
  out.writeUInt16BE(question.length > 0 ? 1 : 0, 4);
  question.copy(out, HEADER_LEN);
  return out;
}

/** Builds a query for `name` (no compression), with an optional EDNS OPT record. */
export function buildQuery(id: number, name: string, type: number, opts: { rd?: boolean; ednsSize?: number } = {}): Buffer {
  const labels = name === '' ? [] : name.replace(/\.$/, '').split('.');
  const nameLen = labels.reduce((n, l) => n + 1 + Buffer.byteLength(l, 'latin1'), 1);
  const optLen = opts.ednsSize ? 11 : 0;
  const out = Buffer.alloc(HEADER_LEN + nameLen + 4 + optLen);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(opts.rd === false ? 0 : 0x0100, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(opts.ednsSize ? 1 : 0, 10);
  let off = HEADER_LEN;
  for (const l of labels) {
    const len = Buffer.byteLength(l, 'latin1');
    if (len === 0 || len > 63) throw new DnsFormatError(`label '${l}' must be 1..63 bytes`);
    out[off++] = len;
    off += out.write(l, off, 'latin1');
  }
  out[off++] = 0;
  out.writeUInt16BE(type, off);
  out.writeUInt16BE(1, off + 2);
  off += 4;
  if (opts.ednsSize) {
    out[off] = 0;
    out.writeUInt16BE(RRType.OPT, off + 1);
    out.writeUInt16BE(opts.ednsSize, off + 3);
  }
  return out;
}

/** Case-insensitive DNS name comparison (ASCII only, as RFC 4343 says). */
export function sameName(a: string, b: string): boolean {
  return a.length === b.length && a.toLowerCase() === b.toLowerCase();
}

/**
 * The client's copy of an answer: its ID, its question bytes (so the case it
 * asked in comes back, RFC 4343 / 0x20), TTLs reduced by `ageSeconds`.
 * `answer` is not modified.
 */
export function personalize(answer: Buffer, parsed: Message, query: Buffer, queryQuestion: Question, ageSeconds: number): Buffer {
  const out = Buffer.from(answer);
  out.writeUInt16BE(query.readUInt16BE(0), 0);
  // RD echoes the client's; the rest of the flags are the server's.
  const rd = query.readUInt16BE(2) & 0x0100;
  out.writeUInt16BE((out.readUInt16BE(2) & ~0x0100) | rd, 2);
  const q = parsed.question;
  if (q && q.end - q.start === queryQuestion.end - queryQuestion.start) {
    query.copy(out, q.start, queryQuestion.start, queryQuestion.end);
  }
  if (ageSeconds > 0) {
    for (const r of parsed.records) out.writeUInt32BE(Math.max(0, r.ttl - ageSeconds), r.ttlOffset);
  }
  return out;
}

/**
 * Cuts an answer that does not fit the client's UDP limit down to header,
 * question and OPT, with TC set: the client retries over TCP (RFC 2181 9,
 * RFC 7766). Returns the answer unchanged when it fits.
 */
export function truncate(answer: Buffer, parsed: Message, limit: number): Buffer {
  if (answer.length <= limit) return answer;
  const q = parsed.question;
  const question = q ? answer.subarray(q.start, q.end) : Buffer.alloc(0);
  let opt = Buffer.alloc(0);
  if (parsed.opt) {
    // Owned by a literal root: a compressed owner (legal, if odd) pointed into the records dropped here.
    opt = Buffer.concat([Buffer.from([0]), answer.subarray(readName(answer, parsed.opt.start).end, parsed.opt.end)]);
    if (HEADER_LEN + question.length + opt.length > limit) {
      // Its options alone can pass the limit (EDNS padding, RFC 7830, fills DoH answers to blocks of 468 bytes):
      // keep the OPT's payload size and flags (root, type, class, TTL: 9 bytes), drop its options.
      opt = Buffer.concat([opt.subarray(0, 9), Buffer.from([0, 0])]);
    }
  }
  const out = Buffer.alloc(HEADER_LEN + question.length + opt.length);
  answer.copy(out, 0, 0, 4);
  out.writeUInt16BE(out.readUInt16BE(2) | 0x0200, 2);
  out.writeUInt16BE(q ? 1 : 0, 4);
  out.writeUInt16BE(opt.length > 0 ? 1 : 0, 10);
  question.copy(out, HEADER_LEN);
  opt.copy(out, HEADER_LEN + question.length);
  return out;
}

/**
 * How long an answer may be cached, in seconds, or undefined when it must
 * not be: positive answers by their smallest TTL; NXDOMAIN and NODATA by the
 * SOA in the authority section, min(SOA TTL, SOA MINIMUM) (RFC 2308 5);
 * without an SOA a negative answer is not cached (RFC 2308 5, "SHOULD NOT").
 */
export function cacheTtl(answer: Buffer, parsed: Message): number | undefined {
  const { rcode, tc } = parsed.header;
  if (tc) return undefined;
  if (rcode === Rcode.NOERROR) {
    const answers = parsed.records.filter((r) => r.section === 'answer');
    if (answers.length > 0) return Math.min(...answers.map((r) => r.ttl));
  } else if (rcode !== Rcode.NXDOMAIN) {
    return undefined;
  }
  const soa = parsed.records.find((r) => r.section === 'authority' && r.type === RRType.SOA);
  if (!soa) return undefined;
  // MINIMUM is the last 32 bits of the SOA's RDATA.
  if (soa.rdataEnd - soa.rdataStart < 22) return undefined;
  return Math.min(soa.ttl, answer.readUInt32BE(soa.rdataEnd - 4));
}

/** The A and AAAA addresses an answer gives, as text. */
export function answerAddresses(answer: Buffer, parsed: Message): Array<{ address: string; ttl: number }> {
  const out: Array<{ address: string; ttl: number }> = [];
  for (const r of parsed.records) {
    if (r.section !== 'answer') continue;
    const len = r.rdataEnd - r.rdataStart;
    if (r.type === RRType.A && len === 4) {
      out.push({ address: formatIPv4(answer, r.rdataStart), ttl: r.ttl });
    } else if (r.type === RRType.AAAA && len === 16) {
      out.push({ address: formatIPv6(answer, r.rdataStart), ttl: r.ttl });
    }
  }
  return out;
}

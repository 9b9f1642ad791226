import { normalizeHostname } from './http';

/**
 * Reads the server name (SNI) and ALPN offer out of a TLS ClientHello
 * without terminating TLS. Pure: `buf` is everything read from the client
 * so far; the caller keeps reading while the answer is 'need-more'.
 *
 * The ClientHello is a handshake message that may be split over several
 * TLS records (record fragmentation) and those over several TCP segments,
 * so handshake bytes are reassembled from the records before parsing.
 */

/**
 * A ClientHello is allowed to fill one maximum-size record (2^14 bytes)
 * plus its 5-byte header. Post-quantum key shares already make hellos of
 * ~1.8 KB, so this leaves ample room while bounding what we buffer.
 */
export const TLS_SNIFF_MAX_BYTES = 16 * 1024 + 5;

export type TlsSniffResult =
  | { status: 'need-more' }
  | { status: 'no-match' }
  | {
      status: 'match';
      /** Lowercased DNS name, or undefined when absent or not a valid DNS name. */
      sni: string | undefined;
      /** Protocols offered by ALPN, in client order; absent when the extension is. */
      alpn?: string[];
    };

const NEED_MORE = { status: 'need-more' } as const;
const NO_MATCH = { status: 'no-match' } as const;

const CONTENT_TYPE_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const RECORD_HEADER_LENGTH = 5;
const HANDSHAKE_HEADER_LENGTH = 4;
const MAX_RECORD_PAYLOAD = 16 * 1024;
const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;
const SNI_HOST_NAME = 0x00;

type Reassembly = { status: 'need-more' } | { status: 'no-match' } | { status: 'ok'; hello: Buffer };

/**
 * Finds the first handshake message (which must be a ClientHello) in the
 * handshake records and returns it once complete. Any non-handshake record
 * or non-TLS framing before that point means this is not a TLS client start.
 *
 * The scan only does integer work per record and copies once at the end:
 * it reruns on every read, and a client may send many tiny records.
 */
function reassembleClientHello(buf: Buffer): Reassembly {
  const header: number[] = []; // first HANDSHAKE_HEADER_LENGTH handshake bytes
  let collected = 0;
  let total: number | undefined; // handshake header + body, once the header has arrived
  let off = 0;
  while (off < buf.length) {
    // Validate a partial header as far as it goes so non-TLS fails on byte 1 or 2.
    if (buf[off] !== CONTENT_TYPE_HANDSHAKE) return NO_MATCH;
    if (off + 1 < buf.length && buf[off + 1] !== 3) return NO_MATCH;
    if (off + RECORD_HEADER_LENGTH > buf.length) break;

    const recordLength = buf.readUInt16BE(off + 3);
    // Empty handshake records are forbidden (RFC 8446 5.1) and oversize ones are not TLS.
    if (recordLength === 0 || recordLength > MAX_RECORD_PAYLOAD) return NO_MATCH;

    const payloadStart = off + RECORD_HEADER_LENGTH;
    const payloadEnd = Math.min(payloadStart + recordLength, buf.length);
    for (let i = payloadStart; i < payloadEnd && header.length < HANDSHAKE_HEADER_LENGTH; i++) header.push(buf[i]!);
    collected += payloadEnd - payloadStart;
    off = payloadStart + recordLength;

    // The very first handshake byte already tells a ClientHello from anything else.
    if (header.length > 0 && header[0] !== HANDSHAKE_CLIENT_HELLO) return NO_MATCH;
    if (total === undefined && header.length === HANDSHAKE_HEADER_LENGTH) {
      total = HANDSHAKE_HEADER_LENGTH + ((header[1]! << 16) | (header[2]! << 8) | header[3]!);
      // Even unfragmented it would not fit in what we are willing to buffer.
      if (RECORD_HEADER_LENGTH + total > TLS_SNIFF_MAX_BYTES) return NO_MATCH;
    }
    if (total !== undefined && collected >= total) {
      // A hello that ends past the limit is refused however it arrived: a caller reading in pieces
      // stops at the limit (no-match), so one that got it all in one read must not match it.
      if (payloadEnd - (collected - total) > TLS_SNIFF_MAX_BYTES) return NO_MATCH;
      return { status: 'ok', hello: handshakeBody(buf, off, total) };
    }
  }
  return buf.length >= TLS_SNIFF_MAX_BYTES ? NO_MATCH : NEED_MORE;
}

/**
 * The handshake message out of the (already validated) records in buf[0, end):
 * a view when one record holds all of it (the usual case), else a copy.
 */
function handshakeBody(buf: Buffer, end: number, total: number): Buffer {
  if (RECORD_HEADER_LENGTH + buf.readUInt16BE(3) >= end)
    return buf.subarray(RECORD_HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH, RECORD_HEADER_LENGTH + total);
  const fragments: Buffer[] = [];
  for (let off = 0; off < end;) {
    const payloadStart = off + RECORD_HEADER_LENGTH;
    off = payloadStart + buf.readUInt16BE(off + 3);
    fragments.push(buf.subarray(payloadStart, Math.min(off, buf.length)));
  }
  return Buffer.concat(fragments, total).subarray(HANDSHAKE_HEADER_LENGTH);
}

/** Bounds-checked big-endian reader; returns undefined instead of throwing on overrun. */
class Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  u8(): number | undefined {
    if (this.remaining < 1) return undefined;
    return this.buf[this.pos++];
  }

  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  bytes(n: number): Buffer | undefined {
    if (n < 0 || this.remaining < n) return undefined;
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** Steps over n bytes; false on overrun. */
  skip(n: number): boolean {
    if (n < 0 || this.remaining < n) return false;
    this.pos += n;
    return true;
  }

  /** A vector with a 1- or 2-byte length prefix. */
  vector(lengthBytes: 1 | 2): Buffer | undefined {
    const n = lengthBytes === 1 ? this.u8() : this.u16();
    return n === undefined ? undefined : this.bytes(n);
  }

  /** Steps over a vector with a 1- or 2-byte length prefix; its length, or undefined on overrun. */
  skipVector(lengthBytes: 1 | 2): number | undefined {
    const n = lengthBytes === 1 ? this.u8() : this.u16();
    return n !== undefined && this.skip(n) ? n : undefined;
  }
}

type HelloFields = { sni: string | undefined; alpn?: string[] };

/** Parses a ClientHello body; undefined on any malformation. */
function parseClientHello(hello: Buffer): HelloFields | undefined {
  const r = new Reader(hello);
  const versionMajor = r.u8();
  if (versionMajor !== 3 || r.u8() === undefined) return undefined;
  // Only lengths are checked up to the extensions: no view per field (this runs once per connection).
  if (!r.skip(32)) return undefined; // random

  const sessionId = r.skipVector(1);
  if (sessionId === undefined || sessionId > 32) return undefined;
  const cipherSuites = r.skipVector(2);
  if (cipherSuites === undefined || cipherSuites < 2 || cipherSuites % 2 !== 0) return undefined;
  const compression = r.skipVector(1);
  if (compression === undefined || compression < 1) return undefined;

  // Pre-TLS-1.2 clients may omit the extensions block entirely.
  if (r.remaining === 0) return { sni: undefined };
  const extensions = r.vector(2);
  if (extensions === undefined || r.remaining !== 0) return undefined;
  return parseExtensions(extensions);
}

function parseExtensions(block: Buffer): HelloFields | undefined {
  const r = new Reader(block);
  const fields: HelloFields = { sni: undefined };
  let sawServerName = false;
  while (r.remaining > 0) {
    const type = r.u16();
    if (type === undefined) return undefined;
    if (type !== EXT_SERVER_NAME && type !== EXT_ALPN) {
      if (r.skipVector(2) === undefined) return undefined;
      continue;
    }
    const data = r.vector(2);
    if (data === undefined) return undefined;
    if (type === EXT_SERVER_NAME) {
      // A second server_name would let the sniffer and the real server disagree.
      if (sawServerName) return undefined;
      sawServerName = true;
      const parsed = parseServerName(data);
      if (parsed === false) return undefined;
      fields.sni = parsed;
    } else if (type === EXT_ALPN) {
      if (fields.alpn !== undefined) return undefined;
      const alpn = parseAlpn(data);
      if (alpn === undefined) return undefined;
      fields.alpn = alpn;
    }
  }
  return fields;
}

/**
 * server_name extension (RFC 6066 3). Returns false when malformed, the
 * normalised host_name otherwise, or undefined when the name is not a DNS
 * name (control bytes, IP literal, ...): the hello is still TLS, we just
 * cannot route by it.
 */
function parseServerName(data: Buffer): string | undefined | false {
  const outer = new Reader(data);
  const list = outer.vector(2);
  if (list === undefined || outer.remaining !== 0 || list.length === 0) return false;
  const r = new Reader(list);
  let hostName: Buffer | undefined;
  while (r.remaining > 0) {
    const nameType = r.u8();
    const name = r.vector(2);
    if (nameType === undefined || name === undefined) return false;
    if (nameType === SNI_HOST_NAME) {
      if (hostName !== undefined) return false; // at most one per type
      hostName = name;
    }
  }
  if (hostName === undefined) return undefined;
  // latin1 keeps every byte distinct, so non-ASCII bytes fail validation rather than being replaced.
  return normalizeHostname(hostName.toString('latin1'));
}

/** ALPN extension (RFC 7301): a non-empty list of non-empty protocol names. */
function parseAlpn(data: Buffer): string[] | undefined {
  const outer = new Reader(data);
  const list = outer.vector(2);
  if (list === undefined || outer.remaining !== 0 || list.length === 0) return undefined;
  const r = new Reader(list);
  const protocols: string[] = [];
  while (r.remaining > 0) {
    const proto = r.vector(1);
    if (proto === undefined || proto.length === 0) return undefined;
    protocols.push(proto.toString('latin1'));
  }
  return protocols;
}

export function sniffTls(buf: Buffer): TlsSniffResult {
  try {
    return sniffTlsUnguarded(buf);
  } catch {
    // The parser is written not to throw; this only keeps a bug from killing the connection handler.
    return NO_MATCH;
  }
}

/** @internal sniffTls without its safety net, exported so the fuzz test can see a throw. */
export function sniffTlsUnguarded(buf: Buffer): TlsSniffResult {
  if (buf.length === 0) return NEED_MORE;
  const reassembled = reassembleClientHello(buf);
  if (reassembled.status !== 'ok') return reassembled;
  const fields = parseClientHello(reassembled.hello);
  if (fields === undefined) return NO_MATCH;
  return fields.alpn === undefined ? { status: 'match', sni: fields.sni } : { status: 'match', sni: fields.sni, alpn: fields.alpn };
}

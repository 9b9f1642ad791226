/**
 * IPv4 and IPv6 addresses and CIDR ranges: parsing, RFC 5952 text, range
 * matching. The one place in the code that reads or writes an address.
 *
 * Hand-written rather than taken from ipaddr.js (or node:net's BlockList and
 * SocketAddress) because two hot paths run through it: CidrSet.has for every
 * accepted connection (client admission, internal addresses) and the
 * formatting of every A/AAAA record a DNS answer carries. Both work on char
 * codes and bytes here, without the regular expressions, splits and
 * intermediate arrays of the general libraries (bench/ip-micro.ts measures
 * them). And IPv4-mapped IPv6 (::ffff:1.2.3.4, also in hex form) must match
 * IPv4 ranges: a dual-stack socket reports v4 clients that way, and users
 * write their ranges in v4; BlockList does not do that.
 *
 * Accepted text is exactly what inet_pton accepts (node:net's isIPv4 and
 * isIPv6, without zone ids): dotted quads without leading zeros; IPv6 with
 * at most one '::', groups of one to four hex digits in either case, an
 * optional dotted-quad tail. The other IPv4 spellings (inet_aton's `127.1`,
 * `0x7f000001`) are read only by parseInetAton, for names that clients send.
 */

export type IpFamily = 4 | 6;

export interface ParsedIp {
  family: IpFamily;
  /** 4 or 16 bytes, network order. */
  bytes: Uint8Array;
}

export interface Cidr extends ParsedIp {
  /** Prefix length in bits: 0..32 for IPv4, 0..128 for IPv6. */
  prefix: number;
}

const DOT = 0x2e;
const COLON = 0x3a;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x57 : -1;
}

/** A dotted quad in s[start, end) into out[off, off + 4); false when it is not one (out may be half written). */
function readIPv4(s: string, start: number, end: number, out: Uint8Array, off: number): boolean {
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = start; i <= end; i++) {
    const c = i < end ? s.charCodeAt(i) : DOT;
    if (c === DOT) {
      if (digits === 0 || part > 3) return false;
      out[off + part++] = value;
      value = 0;
      digits = 0;
    } else if (c >= 0x30 && c <= 0x39) {
      // A leading zero is refused, as inet_pton does: 010 is 8 to inet_aton, and the two must not disagree.
      if (digits > 0 && value === 0) return false;
      value = value * 10 + (c - 0x30);
      if (value > 255) return false;
      digits++;
    } else {
      return false;
    }
  }
  return part === 4;
}

/** IPv6 text s[0, end) into out (16 bytes); false when it is not one (out may be half written). */
function readIPv6(s: string, end: number, out: Uint8Array): boolean {
  if (end < 2 || end > 45) return false; // 45: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
  let i = 0;
  let groups = 0;
  let gap = -1; // the group index where '::' stands
  if (s.charCodeAt(0) === COLON) {
    if (s.charCodeAt(1) !== COLON) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (groups === 8) return false;
    const start = i;
    let value = 0;
    while (i < end && i - start < 5) {
      const h = hexValue(s.charCodeAt(i));
      if (h < 0) break;
      value = (value << 4) | h;
      i++;
    }
    const digits = i - start;
    if (digits === 0 || digits > 4) return false;
    if (i < end && s.charCodeAt(i) === DOT) {
      // A dotted-quad tail: the last 32 bits.
      if (groups > 6 || !readIPv4(s, start, end, out, groups * 2)) return false;
      groups += 2;
      break;
    }
    out[groups * 2] = value >> 8;
    out[groups * 2 + 1] = value & 0xff;
    groups++;
    if (i === end) break;
    if (s.charCodeAt(i++) !== COLON || i === end) return false;
    if (s.charCodeAt(i) === COLON) {
      if (gap !== -1) return false;
      gap = groups;
      i++;
    }
  }
  if (gap === -1) return groups === 8;
  if (groups === 8) return false; // '::' stands for at least one group
  const tail = (groups - gap) * 2;
  out.copyWithin(16 - tail, gap * 2, groups * 2);
  out.fill(0, gap * 2, 16 - tail);
  return true;
}

/** A dotted quad (inet_pton's IPv4: no leading zeros, no short forms) as 4 bytes, or undefined. */
export function parseIPv4Bytes(text: string): Uint8Array | undefined {
  const out = new Uint8Array(4);
  return readIPv4(text, 0, text.length, out, 0) ? out : undefined;
}

/** An IPv6 literal (no brackets, no zone id) as 16 bytes, or undefined. */
export function parseIPv6Bytes(text: string): Uint8Array | undefined {
  const out = new Uint8Array(16);
  return readIPv6(text, text.length, out) ? out : undefined;
}

/** Whether 16 bytes lie in ::ffff:0:0/96, where IPv4 addresses stand on a dual-stack socket. */
function isV4Mapped(bytes: Uint8Array, off = 0): boolean {
  for (let i = 0; i < 10; i++) if (bytes[off + i] !== 0) return false;
  return bytes[off + 10] === 0xff && bytes[off + 11] === 0xff;
}

/**
 * An IPv4 or IPv6 address (no brackets; a zone id is ignored), IPv4-mapped
 * IPv6 coming back as family 4: what a socket's remote address means.
 */
export function parseIp(text: string): ParsedIp | undefined {
  const v4 = parseIPv4Bytes(text);
  if (v4) return { family: 4, bytes: v4 };
  const zone = text.indexOf('%');
  const bytes = new Uint8Array(16);
  if (!readIPv6(text, zone === -1 ? text.length : zone, bytes)) return undefined;
  return isV4Mapped(bytes) ? { family: 4, bytes: bytes.slice(12) } : { family: 6, bytes };
}

/** 4 bytes from `off` as a dotted quad. */
export function formatIPv4(bytes: Uint8Array, off = 0): string {
  return `${bytes[off]!}.${bytes[off + 1]!}.${bytes[off + 2]!}.${bytes[off + 3]!}`;
}

/** A 32-bit number as a dotted quad. */
export function formatIPv4Number(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

/**
 * 16 bytes from `off` as RFC 5952 text: lower case, no leading zeros, the
 * longest run of two or more zero groups (the first of equal runs) as '::',
 * a single zero group never; IPv4-mapped addresses in the mixed form
 * ::ffff:192.0.2.1 (RFC 5952 5), as inet_ntop and so Node's sockets write
 * them. The deprecated IPv4-compatible ::a.b.c.d stays hex (::102:304),
 * where inet_ntop would write ::1.2.3.4.
 */
export function formatIPv6(bytes: Uint8Array, off = 0): string {
  return isV4Mapped(bytes, off) ? `::ffff:${formatIPv4(bytes, off + 12)}` : hexIPv6(bytes, off);
}

/** RFC 5952 text, all in hex groups. */
function hexIPv6(bytes: Uint8Array, off: number): string {
  let bestStart = -1;
  let bestLen = 1;
  let runStart = -1;
  for (let g = 0; g < 8; g++) {
    if (bytes[off + 2 * g] === 0 && bytes[off + 2 * g + 1] === 0) {
      if (runStart < 0) runStart = g;
      if (g - runStart + 1 > bestLen) {
        bestStart = runStart;
        bestLen = g - runStart + 1;
      }
    } else {
      runStart = -1;
    }
  }
  let out = '';
  let sep = '';
  for (let g = 0; g < 8; g++) {
    if (g === bestStart) {
      out += '::';
      sep = '';
      g += bestLen - 1;
      continue;
    }
    out += sep + ((bytes[off + 2 * g]! << 8) | bytes[off + 2 * g + 1]!).toString(16);
    sep = ':';
  }
  return out;
}

function formatIp(ip: ParsedIp): string {
  return ip.family === 4 ? formatIPv4(ip.bytes) : formatIPv6(ip.bytes);
}

/**
 * An address written strictly (inet_pton, no zone id) in its canonical text:
 * a dotted quad or RFC 5952 IPv6 (a v4-mapped address stays IPv6). Undefined
 * for anything else.
 */
export function normalizeIp(text: string): { family: IpFamily; text: string } | undefined {
  const v4 = parseIPv4Bytes(text);
  if (v4) return { family: 4, text: formatIPv4(v4) };
  const v6 = parseIPv6Bytes(text);
  return v6 && { family: 6, text: formatIPv6(v6) };
}

function inetAtonPart(part: string): number | undefined {
  if (part === '') return undefined;
  let digits = part;
  let radix = 10;
  if (/^0x/i.test(part)) {
    digits = part.slice(2);
    radix = 16;
    if (digits === '') return 0;
    if (!/^[0-9a-f]+$/i.test(digits)) return undefined;
  } else if (part.length > 1 && part[0] === '0') {
    digits = part.slice(1);
    radix = 8;
    if (!/^[0-7]+$/.test(digits)) return undefined;
  } else if (!/^[0-9]+$/.test(digits)) {
    return undefined;
  }
  // Leading zeros are only zeros (WHATWG URL and inet_aton read 0x0000000001 as 1); dropped before the
  // length check, which is there because long digit strings would lose precision (past 2^32 is refused below).
  digits = digits.replace(/^0+(?=.)/, '');
  if (digits.length > 12) return undefined;
  return parseInt(digits, radix);
}

/**
 * An IPv4 address in any spelling inet_aton (and so a proxy's resolver)
 * accepts, as a 32-bit number: `127.1`, `0x7f000001`, `0177.0.0.1`, one
 * trailing dot. The WHATWG URL IPv4 parser, without its validation
 * warnings. Undefined when it is not one.
 */
export function parseInetAton(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length > 1 && parts[parts.length - 1] === '') parts.pop();
  if (parts.length === 0 || parts.length > 4) return undefined;
  const nums: number[] = [];
  for (const p of parts) {
    const n = inetAtonPart(p);
    if (n === undefined) return undefined;
    nums.push(n);
  }
  const last = nums.pop()!;
  if (nums.some((n) => n > 255)) return undefined;
  if (last >= 256 ** (4 - nums.length)) return undefined;
  let value = last;
  for (let i = 0; i < nums.length; i++) value += nums[i]! * 256 ** (3 - i);
  return value;
}

/** Clears the host bits of `bytes` past `prefix`. */
export function maskBytes(bytes: Uint8Array, prefix: number): Uint8Array {
  for (let i = 0; i < bytes.length; i++) {
    const keep = prefix - i * 8;
    if (keep >= 8) continue;
    bytes[i] = bytes[i]! & (keep <= 0 ? 0 : (0xff << (8 - keep)) & 0xff);
  }
  return bytes;
}

/** `addr[/len]` split; `prefix` is -1 when the length is not 1..3 digits, undefined when there is none. */
function splitCidr(text: string): { address: string; prefix: number | undefined } {
  const slash = text.indexOf('/');
  if (slash === -1) return { address: text, prefix: undefined };
  const p = text.slice(slash + 1);
  let prefix = p.length >= 1 && p.length <= 3 ? 0 : -1;
  for (let i = 0; i < p.length && prefix >= 0; i++) {
    const c = p.charCodeAt(i);
    prefix = c >= 0x30 && c <= 0x39 ? prefix * 10 + (c - 0x30) : -1;
  }
  return { address: text.slice(0, slash), prefix };
}

/**
 * `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a host route), for
 * matching: host bits are cleared, as Go's ParseCIDR does, rather than
 * rejected, and a range inside ::ffff:0:0/96 becomes the equivalent IPv4
 * range. Surrounding whitespace is ignored; undefined when malformed.
 */
export function parseCidr(value: string): Cidr | undefined {
  const { address, prefix } = splitCidr(value.trim());
  if (prefix === -1) return undefined;
  const v4 = parseIPv4Bytes(address);
  const v6 = v4 ? undefined : parseIPv6Bytes(address);
  const bytes = v4 ?? v6;
  if (!bytes) return undefined;
  const max = v4 ? 32 : 128;
  const bits = prefix ?? max;
  if (bits > max) return undefined;
  if (v6 && bits >= 96 && isV4Mapped(v6)) return { family: 4, bytes: maskBytes(v6.slice(12), bits - 96), prefix: bits - 96 };
  return { family: v4 ? 4 : 6, bytes: maskBytes(bytes, bits), prefix: bits };
}

/**
 * `addr[/len]` of one family, host bits cleared, as written: a v4-mapped
 * range stays IPv6 (the form an ip6 rule matches). Says which part is wrong
 * when it does not parse: 'prefix' (not 0..32 or 0..128) or 'address'.
 */
export function parseCidrOf(value: string, family: IpFamily): Cidr | 'prefix' | 'address' {
  const { address, prefix } = splitCidr(value.trim());
  const max = family === 4 ? 32 : 128;
  if (prefix !== undefined && (prefix < 0 || prefix > max)) return 'prefix';
  const bytes = family === 4 ? parseIPv4Bytes(address) : parseIPv6Bytes(address);
  if (!bytes) return 'address';
  const bits = prefix ?? max;
  return { family, bytes: maskBytes(bytes, bits), prefix: bits };
}

export function cidrContains(cidr: Cidr, ip: ParsedIp): boolean {
  if (cidr.family !== ip.family) return false;
  const whole = cidr.prefix >> 3;
  for (let i = 0; i < whole; i++) if (cidr.bytes[i] !== ip.bytes[i]) return false;
  const bits = cidr.prefix & 7;
  if (bits === 0) return true;
  const mask = (0xff << (8 - bits)) & 0xff;
  return (ip.bytes[whole]! & mask) === cidr.bytes[whole];
}

/**
 * `address/prefix`. An IPv6 range of /96 or shorter is written in hex even
 * inside ::ffff:0:0/96 (`::ffff:0:0/96`, as RFC 4291 writes it): its last 32
 * bits are host bits, which a dotted quad would present as an address.
 */
export function formatCidr(cidr: Cidr): string {
  const text = cidr.family === 6 && cidr.prefix <= 96 ? hexIPv6(cidr.bytes, 0) : formatIp(cidr);
  return `${text}/${cidr.prefix}`;
}

/** Reused by CidrSet.has, which is synchronous: no allocation per connection. */
const scratch = new Uint8Array(16);

/**
 * A set of ranges, linear scan (fine for the handful a user configures).
 * IPv4 ranges are kept as (network, mask) numbers, so an IPv4 client (or a
 * v4-mapped one) is matched with one parse into a reused buffer and integer
 * compares.
 */
export class CidrSet {
  private readonly ranges: Cidr[] = [];
  private readonly v4: number[] = []; // network, mask, network, mask, ...
  private readonly v6: Cidr[] = [];

  /** Adds a range (string or parsed); returns false when a string does not parse. */
  add(range: string | Cidr): boolean {
    const cidr = typeof range === 'string' ? parseCidr(range) : range;
    if (!cidr) return false;
    this.ranges.push(cidr);
    if (cidr.family === 4) {
      const b = cidr.bytes;
      const mask = cidr.prefix === 0 ? 0 : (0xffffffff << (32 - cidr.prefix)) >>> 0;
      this.v4.push((((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) & mask) >>> 0, mask);
    } else {
      this.v6.push(cidr);
    }
    return true;
  }

  /** Whether `ip` (v4, v6, or v4-mapped v6; a zone id is ignored) lies in any range; false for non-addresses. */
  has(ip: string): boolean {
    let off: number;
    if (readIPv4(ip, 0, ip.length, scratch, 12)) {
      off = 12;
    } else {
      const zone = ip.indexOf('%');
      if (!readIPv6(ip, zone === -1 ? ip.length : zone, scratch)) return false;
      if (!isV4Mapped(scratch)) {
        const parsed: ParsedIp = { family: 6, bytes: scratch };
        for (const r of this.v6) if (cidrContains(r, parsed)) return true;
        return false;
      }
      off = 12;
    }
    const n = ((scratch[off]! << 24) | (scratch[off + 1]! << 16) | (scratch[off + 2]! << 8) | scratch[off + 3]!) >>> 0;
    const v4 = this.v4;
    for (let i = 0; i < v4.length; i += 2) if ((n & v4[i + 1]!) >>> 0 === v4[i]) return true;
    return false;
  }

  get size(): number {
    return this.ranges.length;
  }

  toJSON(): string[] {
    return this.ranges.map(formatCidr);
  }
}

import { isIPv4, isIPv6 } from 'node:net';

/**
 * A tiny CIDR matcher. Written instead of using node:net's BlockList so
 * that IPv4-mapped IPv6 addresses (::ffff:1.2.3.4, also in hex form)
 * reliably match IPv4 ranges: a dual-stack socket reports v4 clients that
 * way, and users write their ranges in v4.
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

function parseIpv4Bytes(s: string): Uint8Array | undefined {
  if (!isIPv4(s)) return undefined;
  return Uint8Array.from(s.split('.').map(Number));
}

function parseIpv6Bytes(input: string): Uint8Array | undefined {
  if (!isIPv6(input)) return undefined;
  let s = input;
  const zone = s.indexOf('%');
  if (zone !== -1) s = s.slice(0, zone);

  // Rewrite a dotted-quad tail as two hex groups so one path handles both spellings.
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseIpv4Bytes(tail);
    if (!v4) return undefined;
    const hi = ((v4[0]! << 8) | v4[1]!).toString(16);
    const lo = ((v4[2]! << 8) | v4[3]!).toString(16);
    s = `${s.slice(0, lastColon + 1)}${hi}:${lo}`;
  }

  const halves = s.split('::');
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
  const missing = 8 - head.length - rest.length;
  const groups = [...head, ...Array<string>(halves.length > 1 ? missing : 0).fill('0'), ...rest];
  if (groups.length !== 8) return undefined;

  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    bytes[i * 2] = v >> 8;
    bytes[i * 2 + 1] = v & 0xff;
  });
  return bytes;
}

function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/**
 * Parses an IPv4 or IPv6 address (no brackets; a zone id is ignored).
 * IPv4-mapped IPv6 comes back as family 4.
 */
export function parseIp(value: string): ParsedIp | undefined {
  const v4 = parseIpv4Bytes(value);
  if (v4) return { family: 4, bytes: v4 };
  const v6 = parseIpv6Bytes(value);
  if (!v6) return undefined;
  if (isV4Mapped(v6)) return { family: 4, bytes: v6.slice(12) };
  return { family: 6, bytes: v6 };
}

function maskInPlace(bytes: Uint8Array, prefix: number): void {
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefix - i * 8));
    bytes[i]! &= keep === 0 ? 0 : (0xff << (8 - keep)) & 0xff;
  }
}

/**
 * Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a host route).
 * Host bits are cleared, as Go's ParseCIDR does, rather than rejected.
 * A range inside ::ffff:0:0/96 becomes the equivalent IPv4 range.
 * Returns undefined when malformed.
 */
export function parseCidr(value: string): Cidr | undefined {
  const v = value.trim();
  const slash = v.indexOf('/');
  const addressPart = slash === -1 ? v : v.slice(0, slash);
  const prefixPart = slash === -1 ? undefined : v.slice(slash + 1);
  if (addressPart.includes('%')) return undefined;

  const v4 = parseIpv4Bytes(addressPart);
  const v6 = v4 ? undefined : parseIpv6Bytes(addressPart);
  if (!v4 && !v6) return undefined;
  const maxBits = v4 ? 32 : 128;

  let prefix = maxBits;
  if (prefixPart !== undefined) {
    if (!/^[0-9]{1,3}$/.test(prefixPart)) return undefined;
    prefix = Number(prefixPart);
    if (prefix > maxBits) return undefined;
  }

  if (v6 && isV4Mapped(v6) && prefix >= 96) {
    const bytes = v6.slice(12);
    maskInPlace(bytes, prefix - 96);
    return { family: 4, bytes, prefix: prefix - 96 };
  }
  const bytes = (v4 ?? v6)!.slice();
  maskInPlace(bytes, prefix);
  return { family: v4 ? 4 : 6, bytes, prefix };
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

export function formatCidr(cidr: Cidr): string {
  if (cidr.family === 4) return `${Array.from(cidr.bytes).join('.')}/${cidr.prefix}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((cidr.bytes[i]! << 8) | cidr.bytes[i + 1]!).toString(16));
  return `${groups.join(':')}/${cidr.prefix}`;
}

/** A set of ranges; linear scan, which is fine for the handful a user configures. */
export class CidrSet {
  private readonly ranges: Cidr[] = [];

  /** Adds a range (string or parsed); returns false when a string does not parse. */
  add(range: string | Cidr): boolean {
    const cidr = typeof range === 'string' ? parseCidr(range) : range;
    if (!cidr) return false;
    this.ranges.push(cidr);
    return true;
  }

  /** Whether `ip` (v4, v6, or v4-mapped v6) lies in any range; false for non-addresses. */
  has(ip: string): boolean {
    const parsed = parseIp(ip);
    if (!parsed) return false;
    return this.ranges.some((r) => cidrContains(r, parsed));
  }

  get size(): number {
    return this.ranges.length;
  }

  toJSON(): string[] {
    return this.ranges.map(formatCidr);
  }
}

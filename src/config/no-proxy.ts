import { type Cidr, cidrContains, parseCidr, parseIPv6Bytes, parseIp } from '../core/ip';
import { parsePort } from '../core/validate';
import { normalizeHostname } from '../core/names';

/**
 * The no_proxy / NO_PROXY language, as curl, Go and Python users write it.
 *
 * Entries are separated by commas and/or whitespace. Each may be:
 *   *                     everything (anywhere in the list, as in Go)
 *   example.com           example.com and every subdomain
 *   .example.com          the same: the leading dot is ignored, like curl
 *                         (Go would not match the apex here; matching it is
 *                         what users mean far more often than not)
 *   *.example.com         the same again
 *   10.1.2.3, ::1, [::1]  one address
 *   10.0.0.0/8, 2001:db8::/32, [2001:db8::]/32   a range
 * and any of them may end in :port to apply only to that port
 * (example.com:8080, [::1]:443, 10.0.0.0/8:80). A bare IPv6 address is
 * never split at a colon: write [::1]:443 for a port.
 *
 * Matching is by suffix on label boundaries, so example.com never matches
 * notexample.com (an old Python pitfall). Addresses are matched only by
 * address entries, never by resolving names, because this runs per
 * connection and must stay pure.
 */

interface DomainRule {
  /** Lowercase, no leading or trailing dot. */
  suffix: string;
  port?: number;
}

interface AddressRule {
  cidr: Cidr;
  port?: number;
}

export interface NoProxy {
  /** True when the list has no usable entry (invalid ones do not count). */
  readonly isEmpty: boolean;
  /** True when the list contains `*`. */
  readonly matchesAll: boolean;
  /** Entries that could not be understood, verbatim, for the caller to warn about. */
  readonly invalid: string[];
  /** Whether a connection to host `name` on `port` bypasses the proxy; IP literals are matched as addresses. */
  matchName(name: string, port: number): boolean;
  /** Whether a connection to `ip` on `port` bypasses the proxy. */
  matchAddress(ip: string, port: number): boolean;
  /** The domain entries (no leading dot), whatever their port restriction; for the DNS code. */
  domainSuffixes(): string[];
}

type Entry = { kind: 'all' } | { kind: 'domain'; rule: DomainRule } | { kind: 'address'; rule: AddressRule };

function withPort<T extends object>(rule: T, portText: string | undefined): (T & { port?: number }) | undefined {
  if (portText === undefined) return rule;
  const port = parsePort(portText);
  return port === undefined ? undefined : { ...rule, port };
}

function addressEntry(range: string, portText: string | undefined): Entry | undefined {
  const cidr = parseCidr(range);
  if (!cidr) return undefined;
  const rule = withPort({ cidr }, portText);
  return rule && { kind: 'address', rule };
}

function parseEntry(raw: string): Entry | undefined {
  if (raw === '*') return { kind: 'all' };

  // [v6], [v6]:port, [v6]/len, [v6]/len:port
  const bracketed = /^\[([^\]]+)\](\/[0-9]{1,3})?(?::([0-9]+))?$/.exec(raw);
  if (bracketed) {
    if (!parseIPv6Bytes(bracketed[1]!)) return undefined;
    return addressEntry(bracketed[1]! + (bracketed[2] ?? ''), bracketed[3]);
  }

  // Whole entry an address: a bare IPv6 address has colons that are not a port.
  if (parseIp(raw)) return addressEntry(raw, undefined);

  // addr/len or addr/len:port; the prefix length has no colon, so the port is unambiguous.
  const range = /^([^/]+)\/([0-9]{1,3})(?::([0-9]+))?$/.exec(raw);
  if (range) return addressEntry(`${range[1]}/${range[2]}`, range[3]);

  const colon = raw.lastIndexOf(':');
  const host = colon === -1 ? raw : raw.slice(0, colon);
  const portText = colon === -1 ? undefined : raw.slice(colon + 1);
  if (host.includes(':')) return undefined;
  if (parseIp(host)) return addressEntry(host, portText);

  let name = host;
  if (name.startsWith('*.')) name = name.slice(1);
  if (name.startsWith('.')) name = name.slice(1);
  const suffix = normalizeHostname(name);
  if (suffix === undefined) return undefined;
  const rule = withPort({ suffix }, portText);
  return rule && { kind: 'domain', rule };
}

const portAllows = (rulePort: number | undefined, port: number): boolean => rulePort === undefined || rulePort === port;

function stripBrackets(s: string): string {
  return s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
}

export function parseNoProxy(value: string): NoProxy {
  const domains: DomainRule[] = [];
  const addresses: AddressRule[] = [];
  const invalid: string[] = [];
  let matchesAll = false;

  for (const raw of value.split(/[\s,]+/)) {
    if (raw === '') continue;
    const entry = parseEntry(raw);
    if (!entry) invalid.push(raw);
    else if (entry.kind === 'all') matchesAll = true;
    else if (entry.kind === 'domain') domains.push(entry.rule);
    else addresses.push(entry.rule);
  }

  const matchAddress = (ip: string, port: number): boolean => {
    if (matchesAll) return true;
    // Asked for every connection: without address rules, skip parsing the address.
    if (addresses.length === 0) return false;
    const parsed = parseIp(stripBrackets(ip.trim()));
    if (!parsed) return false;
    return addresses.some((r) => portAllows(r.port, port) && cidrContains(r.cidr, parsed));
  };

  const matchName = (name: string, port: number): boolean => {
    if (matchesAll) return true;
    const bare = stripBrackets(name.trim());
    if (parseIp(bare)) return matchAddress(bare, port);
    let n = bare.toLowerCase();
    if (n.endsWith('.')) n = n.slice(0, -1);
    if (n === '') return false;
    return domains.some((r) => portAllows(r.port, port) && (n === r.suffix || n.endsWith(`.${r.suffix}`)));
  };

  const suffixes = [...new Set(domains.map((d) => d.suffix))];

  return {
    isEmpty: !matchesAll && domains.length === 0 && addresses.length === 0,
    matchesAll,
    invalid,
    matchName,
    matchAddress,
    domainSuffixes: () => [...suffixes],
  };
}

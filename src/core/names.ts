import { formatIPv4Number, formatIPv6, parseIPv6Bytes, parseInetAton } from './ip';
import { parsePort } from './validate';

/**
 * Names are validated once, where they enter (Host, absolute-form
 * authority, SNI, DNS question names): only what passes here may reach a
 * log line, the name map or an upstream request line. Hand-written rather
 * than taken from URL parsing because it is security-critical and small:
 * WHATWG URL accepts hosts (percent-encoding, IDNA mapping, forbidden code
 * points it silently drops) that must not reach a proxy's request line.
 */

/** A validated destination: a host name (lowercase, no trailing dot) or a normalized IP literal. */
export type HostTarget = { kind: 'name'; host: string } | { kind: 'ip'; host: string; family: 4 | 6 };

const MAX_NAME = 253;
const MAX_LABEL = 63;

function isLabelByte(c: number): boolean {
  // a-z 0-9 - _ (upper case is lowered before this check)
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
}

/**
 * Whether the last label "ends in a number" (WHATWG URL): all digits, or
 * 0x followed by hex digits. Such a string is an IPv4 address in one of
 * inet_aton's spellings (`127.1`, `0x7f000001`, `017700000001`), which a
 * proxy's resolver turns into an address: it is never a name.
 */
function endsInNumber(labels: readonly string[]): boolean {
  const last = labels[labels.length - 1]!;
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

/**
 * RFC 1123 host name: letters, digits, '-', '_' (it occurs in names that
 * resolve), dots; labels 1..63, at most 253 in all; one trailing dot
 * dropped; lowercased. Undefined for anything else, and for strings whose
 * last label is numeric (IPv4 spellings: see parseIPv4).
 */
export function normalizeHostname(name: string): string | undefined {
  let n = name.length > 0 && name.charCodeAt(name.length - 1) === 0x2e ? name.slice(0, -1) : name;
  if (n.length === 0 || n.length > MAX_NAME) return undefined;
  // ASCII only: String#toLowerCase maps some non-ASCII letters into ASCII (the Kelvin sign U+212A to 'k'),
  // which accepted a name the client never spelled.
  if (/[^\x00-\x7f]/.test(n)) return undefined;
  n = n.toLowerCase();
  let labelStart = 0;
  for (let i = 0; i <= n.length; i++) {
    const c = i < n.length ? n.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const len = i - labelStart;
      if (len === 0 || len > MAX_LABEL) return undefined;
      labelStart = i + 1;
    } else if (!isLabelByte(c)) {
      return undefined;
    }
  }
  if (endsInNumber(n.split('.'))) return undefined;
  return n;
}

/** True when `name` is exactly what normalizeHostname makes of it (the invariant every stored name keeps). */
export function isValidHostname(name: string): boolean {
  return normalizeHostname(name) === name;
}

/**
 * An IPv4 address in any spelling inet_aton (and so a proxy's resolver)
 * accepts, as dotted quad: `127.1` -> 127.0.0.1, `0x7f000001`,
 * `0177.0.0.1`. The WHATWG URL IPv4 parser, without its validation
 * warnings. Undefined when it is not one.
 */
export function parseIPv4(text: string): string | undefined {
  const n = parseInetAton(text);
  return n === undefined ? undefined : formatIPv4Number(n);
}

/** An IPv6 literal (no brackets, no zone) in its canonical text form (RFC 5952), or undefined. */
export function parseIPv6(text: string): string | undefined {
  const bytes = parseIPv6Bytes(text);
  return bytes && formatIPv6(bytes);
}

/**
 * A host as a client names it (Host without port, SNI, a URI's host, a DNS
 * name): a validated name, or an IP literal normalized. A bracketed IPv6
 * literal is accepted with its brackets. Undefined for anything else: the
 * connection then goes by its address, or the request gets a 400.
 */
export function parseHost(text: string): HostTarget | undefined {
  if (text.length === 0 || text.length > MAX_NAME + 1) {
    // An IPv6 literal in brackets is at most 47 bytes, well within.
    return undefined;
  }
  if (text.charCodeAt(0) === 0x5b) {
    if (text.charCodeAt(text.length - 1) !== 0x5d) return undefined;
    const v6 = parseIPv6(text.slice(1, -1));
    return v6 === undefined ? undefined : { kind: 'ip', host: v6, family: 6 };
  }
  if (text.includes(':')) {
    const v6 = parseIPv6(text);
    return v6 === undefined ? undefined : { kind: 'ip', host: v6, family: 6 };
  }
  const name = normalizeHostname(text);
  if (name !== undefined) return { kind: 'name', host: name };
  // Only strings made of IPv4-ish characters are worth the IPv4 parser.
  if (!/^[0-9a-fx.]+$/i.test(text)) return undefined;
  const v4 = parseIPv4(text);
  return v4 === undefined ? undefined : { kind: 'ip', host: v4, family: 4 };
}

/**
 * A Host header or URI authority (without userinfo): `name`, `name:8080`,
 * `1.2.3.4`, `[2001:db8::1]:80`; an empty port (`name:`) means the default,
 * as RFC 3986 allows. Undefined for anything else (bare IPv6, zone ids,
 * bad ports, whitespace or control bytes inside).
 */
export function parseAuthority(value: string, defaultPort: number): { target: HostTarget; port: number } | undefined {
  // Only optional whitespace around the value (RFC 9110 5.5); nothing inside.
  const v = value.replace(/^[ \t]+|[ \t]+$/g, '');
  let hostText: string;
  let portText: string;
  if (v.startsWith('[')) {
    const close = v.indexOf(']');
    if (close === -1) return undefined;
    hostText = v.slice(0, close + 1);
    const rest = v.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) return undefined;
    portText = rest.slice(1);
    if (rest === ':') portText = '';
  } else {
    const colon = v.indexOf(':');
    if (colon !== -1 && v.indexOf(':', colon + 1) !== -1) return undefined; // unbracketed IPv6
    hostText = colon === -1 ? v : v.slice(0, colon);
    portText = colon === -1 ? '' : v.slice(colon + 1);
  }
  const port = portText === '' ? defaultPort : parsePort(portText);
  if (port === undefined) return undefined;
  const target = parseHost(hostText);
  return target === undefined ? undefined : { target, port };
}

/** Host names that always mean the asker itself (RFC 6761 6.3): never asked of a proxy. */
export function isLocalhostName(name: string): boolean {
  return name === 'localhost' || name.endsWith('.localhost') || name === 'localhost.localdomain';
}

/**
 * `host` as it may stand in an upstream request line (CONNECT authority,
 * absolute URI): a validated name or a canonical IP literal. Names are
 * validated where they enter; this is the last line behind that, so that
 * no path that forgot can write a client's bytes into a request to the
 * proxy. Throws: reaching it is a bug (the connection ends, the gateway
 * does not).
 */
export function requestLineHost(host: string): string {
  if (isValidHostname(host) || parseIPv4(host) === host || parseIPv6(host) === host) return host;
  throw new Error(`refusing an unvalidated host in an upstream request line: ${JSON.stringify(host.slice(0, 80))}`);
}

/**
 * --doctor-target as the CONNECT it becomes: a validated host and a port
 * that must be written (no default). The host goes into a request line, so
 * it is parsed as any authority is (core/names): `[v6]:port`, canonical.
 */
export function splitTarget(target: string): { host: string; port: number } | undefined {
  // Port 0 stands for "none given" (`host`, `host:`): parseAuthority never returns it for a written port.
  const a = parseAuthority(target, 0);
  return a === undefined || a.port === 0 ? undefined : { host: a.target.host, port: a.port };
}

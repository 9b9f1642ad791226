import type { Rng } from './harness';

/**
 * Host-ish strings as clients send them (Host, SNI, authorities): names,
 * every IPv4 spelling inet_aton reads, IPv6 literals, and the near misses
 * that validators get wrong (bad labels, zones, stray bytes, look-alike
 * Unicode whose case mapping lands in ASCII).
 */

const LABEL_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789';
const ODD_CHARS = [
  '-',
  '_',
  'A',
  'Z',
  '.',
  ':',
  '@',
  '%',
  '/',
  '\\',
  ' ',
  '\t',
  '\0',
  '\r',
  '\n',
  '\x7f',
  '\x80',
  '\xff',
  '[',
  ']',
  '*',
  '#',
  '?',
];
// Kelvin sign (lowercases to 'k'), dotted capital I, long s, fullwidth full stop, fullwidth 'a'.
const UNICODE = ['\u212a', '\u0130', '\u017f', '\uff0e', '\uff41', '\u00df', '\u0131'];

function label(r: Rng): string {
  const len = r.chance(0.05) ? r.range(60, 66) : r.range(1, 12);
  let s = '';
  for (let i = 0; i < len; i++) {
    if (r.chance(0.03)) s += r.pick(ODD_CHARS);
    else if (r.chance(0.005)) s += r.pick(UNICODE);
    else if (r.chance(0.05)) s += LABEL_CHARS[r.int(LABEL_CHARS.length)]!.toUpperCase();
    // eslint-disable-next-line no-dupe-else-if -- each r.chance() is a new draw, not the same condition
    else if (i > 0 && i < len - 1 && r.chance(0.05)) s += r.pick(['-', '_']);
    else s += LABEL_CHARS[r.int(LABEL_CHARS.length)]!;
  }
  return s;
}

export function hostName(r: Rng): string {
  const labels: string[] = [];
  const n = r.chance(0.02) ? r.range(20, 70) : r.range(1, 5);
  for (let i = 0; i < n; i++) labels.push(label(r));
  // A numeric last label makes it an IPv4 spelling, not a name.
  if (r.chance(0.1)) labels[labels.length - 1] = r.pick(['1', '0x1f', '0x', '08', String(r.int(1000))]);
  let name = labels.join('.');
  if (r.chance(0.1)) name += '.';
  if (r.chance(0.02)) name += '.';
  return name;
}

function v4Part(r: Rng, max: number): string {
  const n = r.chance(0.1) ? r.int(2 ** 32) : r.int(max + 1);
  switch (r.int(5)) {
    case 0:
      return `0x${'0'.repeat(r.chance(0.2) ? r.range(1, 14) : 0)}${n.toString(16)}`;
    case 1:
      return `0${'0'.repeat(r.chance(0.2) ? r.range(1, 14) : 0)}${n.toString(8)}`;
    case 2:
      return r.chance(0.5) ? '0x' : `0X${n.toString(16).toUpperCase()}`;
    default:
      return String(n);
  }
}

export function ipv4Spelling(r: Rng): string {
  const parts = r.range(1, r.chance(0.05) ? 6 : 4);
  const out: string[] = [];
  for (let i = 0; i < parts; i++) out.push(v4Part(r, i === parts - 1 ? 2 ** (8 * (5 - parts)) - 1 : 255));
  let s = out.join('.');
  if (r.chance(0.1)) s += '.';
  if (r.chance(0.03)) s = s.replace('.', '..');
  return s;
}

export function ipv6Literal(r: Rng): string {
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(r.chance(0.4) ? '0' : r.int(0x10000).toString(16));
  if (r.chance(0.2)) for (let i = 0; i < 8; i++) groups[i] = groups[i]!.padStart(4, '0');
  let s = groups.join(':');
  if (r.chance(0.5)) {
    // compress some run
    const at = r.int(8);
    const len = r.range(1, 8 - at);
    s = `${groups.slice(0, at).join(':')}::${groups.slice(at + len).join(':')}`;
  }
  if (r.chance(0.1)) s = `::ffff:${r.int(256)}.${r.int(256)}.${r.int(256)}.${r.int(256)}`;
  if (r.chance(0.1)) s = s.toUpperCase();
  if (r.chance(0.05)) s += `%${r.pick(['eth0', '1', '25'])}`;
  return s;
}

/** A host as it may appear in a Host header or URL authority, with or without a port. */
export function hostText(r: Rng): string {
  const kind = r.int(10);
  let host: string;
  if (kind < 5) host = hostName(r);
  else if (kind < 8) host = ipv4Spelling(r);
  else host = r.chance(0.8) ? `[${ipv6Literal(r)}]` : ipv6Literal(r);
  if (r.chance(0.02)) host = r.pick(['localhost', 'LOCALHOST.', 'a.localhost', '', '.', '[]', '[::]', '0', '0x', 'x']);
  return host;
}

export function authorityText(r: Rng): string {
  let s = hostText(r);
  if (r.chance(0.4)) s += `:${r.pick(['80', '443', '8080', '', '0', '65535', '65536', '099999', String(r.int(100000)), 'x'])}`;
  if (r.chance(0.05)) s = `${r.pick([' ', '\t', '  '])}${s}${r.pick(['', ' ', '\t'])}`;
  return s;
}

/**
 * The small validators that more than one part of transgate needs: ports
 * (from text and as numbers) and network interface names. Pure, no I/O.
 * Names that clients send (Host, SNI, DNS questions) are core/names.ts.
 */

/**
 * A TCP/UDP port written in decimal: 1..65535, digits only (no sign, no
 * '+', no spaces, no 0x), at most 5 of them, so `08080` is 8080 but
 * `000080` and `65536` are not ports. Undefined for anything else.
 */
export function parsePort(text: string): number | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return isPort(port) ? port : undefined;
}

/** Whether `p` is a port number (an integer in 1..65535); for values that arrive as numbers (flags, rule configs). */
export function isPort(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/**
 * The bytes an interface name may have here: what the kernel accepts AND
 * what may stand unescaped in both rule languages.
 *
 * - The kernel (dev_valid_name): 1..15 bytes (IFNAMSIZ 16 with the NUL),
 *   no '/', no ':' (alias labels like eth0:1 are not interfaces: a rule on
 *   one never matches), no whitespace, not '.' or '..'.
 * - nft: the name stands in double quotes; '"' and '\' would end or escape
 *   the string and a '*' inside is a wildcard.
 * - iptables: a trailing '+' is its wildcard (`-i wan+` means every name
 *   starting with wan), so a name with '+' cannot be said exactly; the
 *   restore input is split at whitespace and quotes.
 * - A leading '-' would read as an option wherever a name becomes an
 *   argument word.
 *
 * So: ASCII letters, digits, '_', '.', '@', '-' (eth0, eth0.100, br-lan,
 * wlp2s0, veth_a@b), not starting with '-'. Anything else is refused where
 * it enters (the flags), not when the rules are written at start.
 */
const NAME_RE = /^(?!-)[A-Za-z0-9_.@-]{1,15}$/;

/** What an interface name may be, for error messages. */
export const INTERFACE_NAME_RULE = "1 to 15 of A-Z a-z 0-9 _ . @ - (not starting with '-')";

/** Whether `name` is an interface name transgate can write into nft and iptables rules (see NAME_RE). */
export function isInterfaceName(name: unknown): name is string {
  return typeof name === 'string' && NAME_RE.test(name) && name !== '.' && name !== '..';
}

/**
 * An interface name or a prefix with a trailing '*' (`br-*`, nft's
 * wildcard; iptables writes it `br-+`). The prefix follows the name rule,
 * except that '.' and '..' are fine as prefixes; a bare '*' is not a pattern.
 */
export function isInterfacePattern(pattern: unknown): pattern is string {
  if (typeof pattern !== 'string') return false;
  if (!pattern.endsWith('*')) return isInterfaceName(pattern);
  return NAME_RE.test(pattern.slice(0, -1));
}

/** Whether interface `name` is what `pattern` (a name, or a prefix with '*') names. */
export function interfaceMatches(pattern: string, name: string): boolean {
  return pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : name === pattern;
}

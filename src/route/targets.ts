import type { HostTarget } from '../core/names';
import { isLocalhostName } from '../core/names';

/**
 * Targets no client could reach without the gateway, and so never asked
 * of the proxy on a client's behalf: the proxy would fetch from its own
 * loopback, its link-local neighbours or this gateway (the gateway's
 * listeners and the proxy's admin ports are not for clients). A client
 * that names one in Host, SNI or an absolute URI gets 403 (HTTP) or a
 * reset. Pure: `isLocal` says whether an address is this host's (or the
 * proxy's own).
 */
export function forbiddenTarget(target: HostTarget, isLocal: (address: string) => boolean): string | undefined {
  if (target.kind === 'name') return isLocalhostName(target.host) ? `${target.host} is the proxy's own host` : undefined;
  const why = target.family === 4 ? forbiddenV4(target.host) : forbiddenV6(target.host);
  if (why) return `${target.host} is ${why}`;
  if (isLocal(target.host)) return `${target.host} is this gateway (or its proxy)`;
  return undefined;
}

function forbiddenV4(ip: string): string | undefined {
  const [a, b] = ip.split('.').map(Number) as [number, number];
  if (a === 127) return 'a loopback address';
  if (a === 0) return 'an unspecified address';
  if (a === 169 && b === 254) return 'a link-local address';
  if (a >= 224) return 'a multicast or reserved address';
  return undefined;
}

/** `ip` is canonical (parseIPv6): lower case, compressed. */
function forbiddenV6(ip: string): string | undefined {
  if (ip === '::1') return 'a loopback address';
  if (ip === '::') return 'an unspecified address';
  if (/^fe[89ab][0-9a-f]?:/.test(ip)) return 'a link-local address';
  if (ip.startsWith('ff')) return 'a multicast address';
  // IPv4-mapped (::ffff:127.0.0.1) and IPv4-compatible spellings reach the IPv4 address.
  const mapped = /^::(?:ffff:)?(\d+\.\d+\.\d+\.\d+)$/.exec(ip);
  if (mapped) return forbiddenV4(mapped[1]!);
  return undefined;
}

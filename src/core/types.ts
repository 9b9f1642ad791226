export type Family = 4 | 6;

export interface Address {
  /** Plain address without brackets; IPv4-mapped IPv6 is unmapped (::ffff:1.2.3.4 -> 1.2.3.4). */
  address: string;
  port: number;
  family: Family;
}

/** host:port with IPv6 literals in brackets, as used in CONNECT and URLs. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function formatAddress(a: Address): string {
  return hostPort(a.address, a.port);
}

export function unmapAddress(address: string): { address: string; family: Family } {
  if (address.startsWith('::ffff:') && address.includes('.')) {
    return { address: address.slice(7), family: 4 };
  }
  return { address, family: address.includes(':') ? 6 : 4 };
}

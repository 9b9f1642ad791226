import os from 'node:os';
import { unmapAddress } from '../core/types';

/**
 * The gateway's own addresses. A connection whose original destination is
 * one of them was not intercepted but made straight to a listener port:
 * relaying it would make the gateway an open proxy (or a loop).
 */
export class LocalAddresses {
  private addrs = new Set<string>();
  private refreshedAt = 0;

  constructor(private readonly maxAgeMs = 5_000) {
    this.refresh();
  }

  refresh(): void {
    const next = new Set<string>(['127.0.0.1', '::1', '::', '0.0.0.0']);
    for (const list of Object.values(os.networkInterfaces())) {
      for (const a of list ?? []) next.add(a.address.split('%')[0]!.toLowerCase());
    }
    this.addrs = next;
    this.refreshedAt = Date.now();
  }

  has(address: string): boolean {
    const a = unmapAddress(address).address.toLowerCase();
    if (a.startsWith('127.')) return true;
    // Addresses come and go (DHCP, SLAAC): re-read at most every few seconds, and only when asked.
    if (Date.now() - this.refreshedAt > this.maxAgeMs) this.refresh();
    return this.addrs.has(a);
  }
}

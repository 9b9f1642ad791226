import { Lru } from '../core/lru';
import { normalizeHostname } from '../core/names';

/**
 * Which name each client resolved to which address, so that a later
 * connection to that address without Host or SNI (SSH, SMTP, a database)
 * can still be sent to the proxy as `CONNECT name:port`. Entries live for
 * the answer's TTL (at least minTtlSeconds, because clients keep using an
 * address a little past it); where several names share an address, the one
 * the client resolved last wins. Bounded: the oldest entries go first. Only
 * host names (core/names.ts) are kept: other question names are answered
 * but never remembered, so a connection to their addresses goes by address.
 */
export interface NameLookup {
  /** The name `client` last resolved to `address`, if still valid. */
  lookup(client: string, address: string): string | undefined;
}

interface Entry {
  name: string;
  expires: number;
}

export class NameMap implements NameLookup {
  private readonly map: Lru<string, Entry>;

  constructor(
    readonly capacity: number,
    private readonly minTtlSeconds = 60,
    private readonly now: () => number = Date.now,
  ) {
    this.map = new Lru(capacity);
  }

  get size(): number {
    return this.map.size;
  }

  /**
   * Remembers `name` for `address`, if it is a host name (normalizeHostname);
   * false when it is not. The resolver checks too: this check is the last
   * one, because whatever is stored here becomes a proxy's request line
   * (`CONNECT name:port`), where a question name with CR LF in it once
   * wrote headers of its own.
   */
  remember(client: string, address: string, name: string, ttlSeconds: number): boolean {
    const host = normalizeHostname(name);
    if (host === undefined) return false;
    if (this.capacity <= 0) return true;
    const key = `${client}|${address.toLowerCase()}`;
    // A new answer replaces the entry and makes it the youngest; lookups do not (peek): the order is that of answers.
    this.map.set(key, { name: host, expires: this.now() + Math.max(ttlSeconds, this.minTtlSeconds) * 1000 });
    return true;
  }

  lookup(client: string, address: string): string | undefined {
    const key = `${client}|${address.toLowerCase()}`;
    const e = this.map.peek(key);
    if (!e) return undefined;
    if (this.now() >= e.expires) {
      this.map.delete(key);
      return undefined;
    }
    return e.name;
  }
}

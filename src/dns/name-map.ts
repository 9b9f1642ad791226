/**
 * Which name each client resolved to which address, so that a later
 * connection to that address without Host or SNI (SSH, SMTP, a database)
 * can still be sent to the proxy as `CONNECT name:port`. Entries live for
 * the answer's TTL (at least minTtlSeconds, because clients keep using an
 * address a little past it); where several names share an address, the one
 * the client resolved last wins. Bounded: the oldest entries go first.
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
  private readonly map = new Map<string, Entry>();

  constructor(
    readonly capacity: number,
    private readonly minTtlSeconds = 60,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.map.size;
  }

  remember(client: string, address: string, name: string, ttlSeconds: number): void {
    if (this.capacity <= 0 || name === '') return;
    const key = `${client}|${address.toLowerCase()}`;
    this.map.delete(key);
    while (this.map.size >= this.capacity) this.map.delete(this.map.keys().next().value as string);
    this.map.set(key, { name: name.toLowerCase(), expires: this.now() + Math.max(ttlSeconds, this.minTtlSeconds) * 1000 });
  }

  lookup(client: string, address: string): string | undefined {
    const key = `${client}|${address.toLowerCase()}`;
    const e = this.map.get(key);
    if (!e) return undefined;
    if (this.now() >= e.expires) {
      this.map.delete(key);
      return undefined;
    }
    return e.name;
  }
}

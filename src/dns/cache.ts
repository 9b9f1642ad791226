import { Lru } from '../core/lru';
import type { Message } from './message';

export interface CacheEntry {
  /** The upstream's answer as received (ID and question case of whoever asked first). */
  answer: Buffer;
  parsed: Message;
  storedAt: number;
  /** Seconds the answer may be served, from cacheTtl(). */
  ttl: number;
}

/**
 * A bounded answer cache: least recently used entries go first when it is
 * full, and an entry is never served after its TTL. `now` is injectable so
 * that tests need not wait.
 */
export class DnsCache {
  private readonly map: Lru<string, CacheEntry>;
  hits = 0;
  misses = 0;

  constructor(
    readonly capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.map = new Lru(capacity);
  }

  get size(): number {
    return this.map.size;
  }

  /** The entry and how many whole seconds it has aged, or undefined (expired entries are dropped). */
  get(key: string): { entry: CacheEntry; age: number } | undefined {
    const entry = this.map.get(key);
    if (!entry) {
      this.misses++;
      return undefined;
    }
    const age = Math.floor((this.now() - entry.storedAt) / 1000);
    if (age >= entry.ttl) {
      this.map.delete(key);
      this.misses++;
      return undefined;
    }
    this.hits++;
    return { entry, age };
  }

  set(key: string, answer: Buffer, parsed: Message, ttl: number): void {
    if (ttl <= 0) return;
    this.map.set(key, { answer, parsed, storedAt: this.now(), ttl });
  }

  clear(): void {
    this.map.clear();
  }
}

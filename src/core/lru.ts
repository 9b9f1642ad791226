/**
 * A bounded map that forgets the least recently used entry first: the one
 * LRU under the DNS cache, the name map, the host verifier's cache, the
 * per-client DNS buckets and the TPROXY reply sockets. A thin wrapper over
 * Map, whose insertion order is the recency order (a refresh is a delete
 * and a set), with no per-entry objects of its own: it sits under 50k DNS
 * cache hits a second.
 *
 * Capacity 0 (or less) keeps nothing: set() stores nothing and calls no
 * onEvict (the value was never held; the caller still owns it). onEvict
 * runs for entries the cache drops by itself (capacity) and for a value
 * replaced by set(); not for delete() or clear(), where the caller chose.
 * Values may not be undefined (get() could not tell them from a miss).
 */
export class Lru<K, V> {
  private readonly map = new Map<K, V>();
  /**
   * Where the oldest entry is. Map.keys().next() walks from the start of
   * V8's table over every deleted slot, and an LRU deletes at the front:
   * with 10,000 entries one eviction cost 6-9 us (bench/cache-micro.ts).
   * A live iterator that is kept skips each deleted slot once. Everything
   * before it was yielded and evicted at once, so its next key is the
   * oldest live one.
   */
  private cursor: Iterator<K> | undefined;

  constructor(
    readonly capacity: number,
    private readonly onEvict?: (key: K, value: V) => void,
  ) {}

  get size(): number {
    return this.map.size;
  }

  /** The value, made the most recently used. */
  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  /** The value, its place in the order left as it is. */
  peek(key: K): V | undefined {
    return this.map.get(key);
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  /** Stores `value` as the most recently used, evicting the least recently used beyond capacity. */
  set(key: K, value: V): void {
    if (this.capacity <= 0) return;
    const old = this.map.get(key);
    if (old !== undefined) {
      this.map.delete(key);
      this.map.set(key, value);
      if (old !== value) this.onEvict?.(key, old);
      return;
    }
    while (this.map.size >= this.capacity) this.evictOldest();
    this.map.set(key, value);
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
    this.cursor = undefined;
  }

  /** Oldest first. */
  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }

  values(): IterableIterator<V> {
    return this.map.values();
  }

  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.map.entries();
  }

  private evictOldest(): void {
    this.cursor ??= this.map.keys();
    let next = this.cursor.next();
    if (next.done) {
      // A finished Map iterator stays finished, even after new entries; only an emptied map gets here.
      this.cursor = this.map.keys();
      next = this.cursor.next();
      if (next.done) return;
    }
    const key = next.value;
    const value = this.map.get(key) as V;
    this.map.delete(key);
    this.onEvict?.(key, value);
  }
}

/**
 * Per-client DNS admission: a token bucket per client address (queries per
 * second, bursts of twice that) and a count of queries in flight per client
 * and in all. Cheap on purpose: this runs for every query, 50k a second on
 * cache hits, so there are no timers per client, the bucket is refilled
 * from the clock when the client next asks, and the map of buckets is
 * bounded (least recently seen clients go first; one that comes back
 * starts with a full bucket, which only ever errs on its side).
 */
import { Lru } from '../core/lru';

interface Bucket {
  tokens: number;
  /** When tokens was last brought up to date (ms). */
  at: number;
  /** When the entry last moved to the young end of the map (ms). */
  touched: number;
}

/** Client addresses whose buckets are kept: a LAN's worth, a few MB at most. */
const DEFAULT_BUCKETS = 16384;
/** A client's place in the eviction order is refreshed at most this often: a Map delete and set per query would cost more than the bucket. */
const TOUCH_MS = 1000;

export class ClientRateLimiter {
  private readonly buckets: Lru<string, Bucket>;
  readonly burst: number;

  /** `rate` queries per second per client; 0 or less: no limit. */
  constructor(
    readonly rate: number,
    readonly capacity = DEFAULT_BUCKETS,
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    this.burst = 2 * rate;
    // At least one: the bucket just taken from must outlive the call (a capacity of 0 kept one before, too).
    this.buckets = new Lru(Math.max(1, capacity));
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Takes a token for one query from `client`; false when its bucket is empty (the query is to be dropped). */
  take(client: string): boolean {
    if (this.rate <= 0) return true;
    const now = this.now();
    // peek: the order is refreshed at most every TOUCH_MS, below.
    let b = this.buckets.peek(client);
    if (b === undefined) {
      b = { tokens: this.burst, at: now, touched: now };
      this.buckets.set(client, b);
    } else {
      const tokens = b.tokens + ((now - b.at) * this.rate) / 1000;
      b.tokens = tokens > this.burst ? this.burst : tokens;
      b.at = now;
      if (now - b.touched >= TOUCH_MS) {
        b.touched = now;
        this.buckets.get(client);
      }
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  clear(): void {
    this.buckets.clear();
  }
}

/** Why a query was not admitted: the DNS_STATS counter it goes to. */
export type Refusal = 'refused' | 'rateLimited' | 'clientBusy' | 'overloaded';

/**
 * Queries in flight, per client and in all. A client's entry exists only
 * while it has queries in flight, so the map is bounded by `max`.
 */
export class InflightLimit {
  private total = 0;
  private readonly byClient = new Map<string, number>();

  constructor(
    readonly maxPerClient: number,
    readonly max: number,
  ) {}

  get size(): number {
    return this.total;
  }

  /** Counts a query in; the reason when it may not start (then nothing was counted). */
  enter(client: string): 'clientBusy' | 'overloaded' | undefined {
    const n = this.byClient.get(client) ?? 0;
    if (n >= this.maxPerClient) return 'clientBusy';
    if (this.total >= this.max) return 'overloaded';
    this.byClient.set(client, n + 1);
    this.total++;
    return undefined;
  }

  /** A query that entered has been answered (or given up on). */
  leave(client: string): void {
    const n = this.byClient.get(client);
    if (n === undefined) return;
    if (n <= 1) this.byClient.delete(client);
    else this.byClient.set(client, n - 1);
    this.total--;
  }
}

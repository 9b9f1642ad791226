import type { NameLookup } from '../dns/name-map';
import { Lru } from '../core/lru';
import { parseIPv4, parseIPv6 } from '../core/names';
import { unmapAddress } from '../core/types';

/** Resolves a name to its addresses (the gateway's resolver); rejects or returns [] when it has none. */
export type Resolve = (name: string) => Promise<string[]>;

export interface HostVerifierOptions {
  /** Names this client resolved through the DNS gateway, per address. */
  names?: NameLookup;
  resolve: Resolve;
  /** How long an answer of `resolve` is used. */
  ttlMs?: number;
  /** Names kept (least recently used go first). */
  capacity?: number;
  /** A resolver that has not answered by then verifies nothing (the request goes to the proxy). */
  timeoutMs?: number;
  now?: () => number;
}

interface Entry {
  addresses: Set<string>;
  expires: number;
}

const DEFAULT_TTL_MS = 30_000;
const NEGATIVE_TTL_MS = 5_000;
/** getaddrinfo waits out every nameserver in resolv.conf (5 s each by default); a request must not. */
const DEFAULT_TIMEOUT_MS = 1_500;
const DEFAULT_CAPACITY = 4096;

function canonical(address: string): string {
  const a = unmapAddress(address).address;
  return a.includes(':') ? (parseIPv6(a) ?? a) : (parseIPv4(a) ?? a);
}

/**
 * Whether a name a client sent (Host, SNI) belongs to the address it
 * connected to. A no_proxy match by name routes direct only when it does
 * (Router's nameVerified): the gateway connects to the original
 * destination, so trusting the name alone would let a client reach any
 * address past the proxy by naming a no_proxy host. Squid's
 * host_verify_strict is the precedent. Verified: the client's own recent
 * DNS answer for that address (the name map), an IP literal equal to the
 * destination, or the gateway's resolver returning the destination.
 */
export class HostVerifier {
  private readonly cache: Lru<string, Entry>;
  private readonly pending = new Map<string, Promise<Entry>>();
  private readonly ttlMs: number;
  private readonly capacity: number;
  private readonly now: () => number;

  constructor(private readonly opts: HostVerifierOptions) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
    this.capacity = opts.capacity ?? DEFAULT_CAPACITY;
    this.now = opts.now ?? Date.now;
    this.cache = new Lru(this.capacity);
  }

  /** true or false when known now; undefined when the resolver must be asked (see verify). */
  check(client: string, name: string, address: string): boolean | undefined {
    const dst = canonical(address);
    const literal = name.includes(':') ? parseIPv6(name) : parseIPv4(name);
    if (literal !== undefined && /^[0-9.:a-f]+$/.test(name)) return canonical(literal) === dst;
    if (this.opts.names?.lookup(client, dst) === name) return true;
    // peek: entries age by when they were resolved, not by use.
    const e = this.cache.peek(name);
    if (e === undefined || e.expires <= this.now()) return undefined;
    return e.addresses.has(dst);
  }

  async verify(client: string, name: string, address: string): Promise<boolean> {
    const known = this.check(client, name, address);
    if (known !== undefined) return known;
    const e = await this.lookUp(name);
    return e.addresses.has(canonical(address));
  }

  private lookUp(name: string): Promise<Entry> {
    const running = this.pending.get(name);
    if (running) return running;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<string[]>((resolve) => {
      timer = setTimeout(() => resolve([]), this.opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    });
    const p = Promise.race([this.opts.resolve(name).catch(() => [] as string[]), timeout])
      .finally(() => clearTimeout(timer))
      .then((list) => {
        // No answer (a resolver down or slow) is asked again sooner than an answer.
        const ttl = list.length > 0 ? this.ttlMs : Math.min(this.ttlMs, NEGATIVE_TTL_MS);
        const entry: Entry = { addresses: new Set(list.map(canonical)), expires: this.now() + ttl };
        this.cache.set(name, entry);
        return entry;
      })
      .finally(() => this.pending.delete(name));
    this.pending.set(name, p);
    return p;
  }
}

import type { ProxyEndpoint } from '../config/proxy-url';

/** What is known of one upstream: every real connection and every probe reports here. */
export interface UpstreamState {
  up: boolean;
  /** Failures in a row (0 while up). */
  failures: number;
  /** When a down upstream is tried again (by the prober, or by a connection once every other is down too). */
  retryAt: number;
  /** The last failure's message, kept after recovery for doctor and the log. */
  lastError: string | undefined;
  /** The last connect-and-answer time that succeeded, in ms. */
  latencyMs: number | undefined;
  /** When the last success or failure was reported. */
  checkedAt: number | undefined;
}

/** The first retry comes a second after a failure, then 2, 4, … up to a minute. */
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 60_000;

/**
 * Up/down per upstream, shared by every route and executor, no I/O: which
 * order the upstreams of a route are tried in. Up ones keep the preference
 * order the configuration gave them; down ones come after, soonest retry
 * first, so that a connection still has somewhere to go when every upstream
 * is marked down (a cold start, or a network that came back before the
 * prober noticed). A down upstream is retried with backoff: 1 s doubling to
 * 60 s.
 */
export class UpstreamHealth {
  private readonly states = new Map<string, UpstreamState>();
  /** How many are down: order() returns the configured list itself while none is (the common case, no allocation). */
  private down = 0;

  constructor(
    private readonly onChange: (proxy: ProxyEndpoint, state: UpstreamState) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  order(list: readonly ProxyEndpoint[]): readonly ProxyEndpoint[] {
    if (this.down === 0 || list.length < 2) return list;
    const up: ProxyEndpoint[] = [];
    const down: ProxyEndpoint[] = [];
    for (const p of list) (this.isUp(p) ? up : down).push(p);
    if (down.length === 0) return list;
    down.sort((a, b) => this.stateOf(a).retryAt - this.stateOf(b).retryAt);
    return up.concat(down);
  }

  isUp(proxy: ProxyEndpoint): boolean {
    return this.states.get(proxy.display)?.up ?? true;
  }

  /** A connection or probe reached the proxy and it answered as a proxy does. */
  succeeded(proxy: ProxyEndpoint, latencyMs?: number): void {
    const s = this.stateOf(proxy);
    const was = s.up;
    s.up = true;
    s.failures = 0;
    s.retryAt = 0;
    s.checkedAt = this.now();
    if (latencyMs !== undefined) s.latencyMs = latencyMs;
    if (!was) {
      this.down--;
      this.onChange(proxy, s);
    }
  }

  /** The proxy could not be reached or did not answer as a proxy (outbound/failures.ts PROXY_DOWN). */
  failed(proxy: ProxyEndpoint, error: string): void {
    const s = this.stateOf(proxy);
    const was = s.up;
    const now = this.now();
    s.up = false;
    s.failures++;
    s.lastError = error;
    s.checkedAt = now;
    s.retryAt = now + Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(s.failures - 1, 16));
    if (was) {
      this.down++;
      this.onChange(proxy, s);
    }
  }

  /** A copy of what is known (a fresh upstream is up, unchecked). */
  state(proxy: ProxyEndpoint): UpstreamState {
    return { ...this.stateOf(proxy) };
  }

  /** The down upstreams whose retry time has come. */
  due(list: readonly ProxyEndpoint[]): ProxyEndpoint[] {
    const now = this.now();
    return list.filter((p) => !this.isUp(p) && this.stateOf(p).retryAt <= now);
  }

  private stateOf(proxy: ProxyEndpoint): UpstreamState {
    let s = this.states.get(proxy.display);
    if (s === undefined) {
      s = { up: true, failures: 0, retryAt: 0, lastError: undefined, latencyMs: undefined, checkedAt: undefined };
      this.states.set(proxy.display, s);
    }
    return s;
  }
}

import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { GatewayError } from '../core/errors';
import type { UpstreamHealth } from '../route/upstream-health';

export interface ProbeOptions {
  proxies: readonly ProxyEndpoint[];
  health: UpstreamHealth;
  /** How often an upstream that is up is probed; a down one is probed when its backoff says (UpstreamHealth.due). */
  intervalMs: number;
  /** One probe: a CONNECT through the proxy (Outbounds.tunnel with one proxy), aborted by the signal at close. */
  probe: (proxy: ProxyEndpoint, signal: AbortSignal) => Promise<net.Socket>;
}

/** How often the prober looks at whom to probe: the backoff's first step. */
const TICK_MS = 1000;

/**
 * Probes each upstream with a CONNECT (to --doctor-target) on an interval,
 * and a down one whenever its backoff allows, so that a dead upstream is
 * found before clients meet it and a recovered one is used again without a
 * client paying for the try. Any HTTP answer means the proxy is alive (a 403
 * to the target is its policy); only a failure to reach it or an answer that
 * is not HTTP marks it down (GatewayError.upstreamDown). The timer is unref'd
 * and close() aborts the probes under way, so the prober never holds the
 * process open.
 */
export class UpstreamProber {
  private readonly lastProbe = new Map<ProxyEndpoint, number>();
  private readonly inFlight = new Set<ProxyEndpoint>();
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ProbeOptions) {}

  start(): void {
    if (this.timer !== undefined || this.opts.intervalMs <= 0 || this.opts.proxies.length === 0) return;
    this.timer = setInterval(() => void this.tick(), Math.min(TICK_MS, this.opts.intervalMs));
    this.timer.unref();
  }

  /** Probes what is due now; resolves when those probes have ended (tests wait on it). */
  tick(now = Date.now()): Promise<void> {
    const { health, intervalMs } = this.opts;
    const due = new Set(health.due(this.opts.proxies));
    const runs: Promise<void>[] = [];
    for (const p of this.opts.proxies) {
      if (this.inFlight.has(p) || this.abort.signal.aborted) continue;
      const last = this.lastProbe.get(p);
      if (health.isUp(p) ? last !== undefined && now - last < intervalMs : !due.has(p)) continue;
      runs.push(this.probeOne(p, now));
    }
    return Promise.all(runs).then(() => undefined);
  }

  private async probeOne(proxy: ProxyEndpoint, now: number): Promise<void> {
    this.inFlight.add(proxy);
    this.lastProbe.set(proxy, now);
    const started = performance.now();
    try {
      const sock = await this.opts.probe(proxy, this.abort.signal);
      sock.destroy();
      this.opts.health.succeeded(proxy, Math.round(performance.now() - started));
    } catch (err) {
      if (this.abort.signal.aborted) return;
      if (err instanceof GatewayError && err.upstreamDown) this.opts.health.failed(proxy, err.message);
      // It answered, whatever it said (a 403 to the target, its own 503): it is alive.
      else if (err instanceof GatewayError && err.status !== undefined)
        this.opts.health.succeeded(proxy, Math.round(performance.now() - started));
    } finally {
      this.inFlight.delete(proxy);
    }
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.abort.abort();
  }
}

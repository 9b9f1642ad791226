import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import type { ConnContext } from '../core/context';
import { hostPort } from '../core/types';
import type { RouteDecision } from '../route/router';
import { GatewayError } from '../core/errors';
import type { UpstreamHealth } from '../route/upstream-health';
import { DIRECT_CODES, UPSTREAM_CODES, dialTcp } from './dial';
import { openTunnel } from './http-connect';

/**
 * Opens the upstream side of a stream: a CONNECT tunnel through the proxy
 * (to the sniffed name when there is one, so the proxy's name-based policy
 * applies), or a direct connection to the original destination address.
 * With several upstreams, one that cannot be reached or does not answer as a
 * proxy is marked down (route/upstream-health.ts) and the next is tried, each
 * within the connect timeout; a proxy's answer (403, 407) ends the attempt.
 */
export class Outbounds {
  /**
   * `mark`: SO_MARK on every outgoing socket (--local), so our own traffic is not intercepted again.
   * `fromClient`: direct connections leave from the client's address (--direct-source client).
   */
  constructor(
    private readonly connectTimeoutMs: number,
    private readonly mark?: number,
    private readonly fromClient = false,
    private readonly health?: UpstreamHealth,
  ) {}

  open(decision: RouteDecision, ctx: ConnContext, signal?: AbortSignal): Promise<net.Socket> {
    const port = ctx.destination.port;
    if (decision.kind === 'proxy' && decision.proxy) {
      const host = ctx.name ?? ctx.destination.address;
      return this.tunnel(decision.proxies ?? [decision.proxy], host, port, signal, (p) => (ctx.via = hostPort(p.host, p.port)));
    }
    return this.direct(ctx, signal);
  }

  /** A CONNECT tunnel to host:port through the first of `proxies` that carries it. */
  tunnel(
    proxies: readonly ProxyEndpoint[],
    host: string,
    port: number,
    signal?: AbortSignal,
    onTry?: (proxy: ProxyEndpoint) => void,
  ): Promise<net.Socket> {
    return this.failOver(proxies, signal, onTry, (proxy) => this.probe(proxy, host, port, signal));
  }

  /**
   * A plain TCP connection for framed HTTP (relay/http-framed.ts): to the
   * proxy itself, which gets each request in absolute form (no CONNECT), or
   * direct as open() dials it (mark, --direct-source client). `onTry` hears
   * of each proxy tried, so that the caller can rebuild the request head for
   * it (its credentials).
   */
  openPlain(
    route: { kind: 'proxy'; proxies: readonly ProxyEndpoint[] } | { kind: 'direct' },
    ctx: ConnContext,
    signal?: AbortSignal,
    onTry?: (proxy: ProxyEndpoint) => void,
  ): Promise<net.Socket> {
    if (route.kind === 'direct') return this.direct(ctx, signal);
    return this.failOver(route.proxies, signal, onTry, (p) => {
      ctx.via = hostPort(p.host, p.port);
      return dialTcp(
        { host: p.host, port: p.port, timeoutMs: this.connectTimeoutMs, signal, mark: this.mark },
        UPSTREAM_CODES,
        `proxy ${p.display}`,
      );
    });
  }

  /** One CONNECT through `proxy` alone, the health left to the caller (outbound/upstream-probe.ts). */
  probe(proxy: ProxyEndpoint, host: string, port: number, signal?: AbortSignal): Promise<net.Socket> {
    return openTunnel({ proxy, host, port, timeoutMs: this.connectTimeoutMs, signal, mark: this.mark });
  }

  /** A proxy that another path (the Node HTTP session's agent) could not reach: marked down for every path. */
  proxyFailed(proxy: ProxyEndpoint, error: string): void {
    this.health?.failed(proxy, error);
  }

  /** A proxy another path reached. */
  proxyUp(proxy: ProxyEndpoint, latencyMs: number): void {
    this.health?.succeeded(proxy, latencyMs);
  }

  /** Tries each proxy in turn while the last one failed as a proxy (GatewayError.upstreamDown); the health hears of each. */
  private async failOver(
    proxies: readonly ProxyEndpoint[],
    signal: AbortSignal | undefined,
    onTry: ((proxy: ProxyEndpoint) => void) | undefined,
    attempt: (proxy: ProxyEndpoint) => Promise<net.Socket>,
  ): Promise<net.Socket> {
    const failed: string[] = [];
    for (let i = 0; ; i++) {
      const proxy = proxies[i]!;
      onTry?.(proxy);
      const started = performance.now();
      try {
        const sock = await attempt(proxy);
        this.health?.succeeded(proxy, Math.round(performance.now() - started));
        return sock;
      } catch (err) {
        if (!(err instanceof GatewayError) || !err.upstreamDown || signal?.aborted) throw err;
        this.health?.failed(proxy, err.message);
        failed.push(err.message);
        if (i + 1 >= proxies.length) throw failed.length === 1 ? err : allFailed(err, failed);
      }
    }
  }

  private direct(ctx: ConnContext, signal?: AbortSignal): Promise<net.Socket> {
    const port = ctx.destination.port;
    // Direct: the client already chose the address; the gateway need not resolve anything.
    ctx.via = hostPort(ctx.destination.address, port);
    return dialTcp(
      {
        host: ctx.destination.address,
        port,
        timeoutMs: this.connectTimeoutMs,
        signal,
        mark: this.mark,
        source: this.fromClient ? ctx.client.address : undefined,
      },
      DIRECT_CODES,
      `direct ${ctx.via}`,
    );
  }
}

/** Every upstream failed: the last one's code, each one's reason. */
function allFailed(last: GatewayError, messages: string[]): GatewayError {
  return new GatewayError(last.code, `all ${messages.length} upstreams failed: ${messages.join('; ')}`, {
    cause: last,
    upstreamDown: true,
  });
}

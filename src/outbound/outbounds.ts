import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import type { ConnContext } from '../core/context';
import { hostPort } from '../core/types';
import type { RouteDecision } from '../route/router';
import { DIRECT_CODES, UPSTREAM_CODES, dialTcp } from './dial';
import { openTunnel } from './http-connect';

/**
 * Opens the upstream side of a stream: a CONNECT tunnel through the proxy
 * (to the sniffed name when there is one, so the proxy's name-based policy
 * applies), or a direct connection to the original destination address.
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
  ) {}

  open(decision: RouteDecision, ctx: ConnContext, signal?: AbortSignal): Promise<net.Socket> {
    const port = ctx.destination.port;
    if (decision.kind === 'proxy' && decision.proxy) {
      const host = ctx.name ?? ctx.destination.address;
      ctx.via = hostPort(decision.proxy.host, decision.proxy.port);
      return openTunnel({ proxy: decision.proxy, host, port, timeoutMs: this.connectTimeoutMs, signal, mark: this.mark });
    }
    return this.direct(ctx, signal);
  }

  /**
   * A plain TCP connection for framed HTTP (relay/http-framed.ts): to the
   * proxy itself, which gets each request in absolute form (no CONNECT), or
   * direct as open() dials it (mark, --direct-source client).
   */
  openPlain(
    route: { kind: 'proxy'; proxy: ProxyEndpoint } | { kind: 'direct' },
    ctx: ConnContext,
    signal?: AbortSignal,
  ): Promise<net.Socket> {
    if (route.kind === 'direct') return this.direct(ctx, signal);
    const p = route.proxy;
    ctx.via = hostPort(p.host, p.port);
    return dialTcp(
      { host: p.host, port: p.port, timeoutMs: this.connectTimeoutMs, signal, mark: this.mark },
      UPSTREAM_CODES,
      `proxy ${p.display}`,
    );
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

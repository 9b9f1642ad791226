import type { ProxyEndpoint } from '../config/proxy-url';
import type { ListenerKind, RouteKind } from '../core/context';
import type { NoProxy } from '../config/no-proxy';
import type { UpstreamHealth } from './upstream-health';

export interface RouteDecision {
  kind: Exclude<RouteKind, 'reject'>;
  /** Set when kind is 'proxy': the first of `proxies`. */
  proxy?: ProxyEndpoint;
  /** Set when kind is 'proxy': every upstream to try, in order (up ones first; the executors fail over along it). */
  proxies?: readonly ProxyEndpoint[];
  /** Why: the no_proxy entry class that matched, or which proxy variable applies. */
  reason: string;
}

export interface RouteInput {
  kind: ListenerKind;
  /** Sniffed name (Host/SNI), if any. */
  name: string | undefined;
  /**
   * The name resolves to the original destination (HostVerifier). A
   * no_proxy match by name sends the connection direct only then: the
   * gateway connects to the destination address, so an unverified name
   * would let any client reach any address past the proxy's policy by
   * sending a no_proxy name in Host or SNI (squid's host_verify_strict,
   * CVE-2009-0801).
   */
  nameVerified?: boolean;
  /** Original destination. */
  address: string;
  port: number;
}

/**
 * Policy only, no I/O: which way a connection leaves. HTTP ports use the
 * HTTP upstreams (http_proxy); TLS and other TCP the others (https_proxy,
 * which already falls back to http_proxy). no_proxy matches the name and the
 * original destination. With several upstreams, the health (route/upstream-
 * health.ts) puts the ones up first.
 */
export class Router {
  constructor(
    private readonly upstream: { http: readonly ProxyEndpoint[]; https: readonly ProxyEndpoint[] },
    private readonly noProxy: NoProxy,
    private readonly health?: UpstreamHealth,
  ) {}

  select(input: RouteInput): RouteDecision {
    if (input.name !== undefined && input.nameVerified === true && this.noProxy.matchName(input.name, input.port)) {
      return { kind: 'direct', reason: 'no_proxy name' };
    }
    if (this.noProxy.matchAddress(input.address, input.port)) {
      return { kind: 'direct', reason: 'no_proxy address' };
    }
    const list = input.kind === 'http' ? this.upstream.http : this.upstream.https;
    if (list.length === 0) return { kind: 'direct', reason: 'no proxy configured' };
    const proxies = this.health ? this.health.order(list) : list;
    return { kind: 'proxy', proxy: proxies[0]!, proxies, reason: input.kind === 'http' ? 'http_proxy' : 'https_proxy' };
  }

  /**
   * Whether `name` would send a connection direct by a no_proxy name
   * (rather than by its address, or for want of a proxy): only then does
   * the name need verifying against the destination.
   */
  needsVerification(input: RouteInput): boolean {
    if (input.name === undefined || !this.noProxy.matchName(input.name, input.port)) return false;
    if (this.noProxy.matchAddress(input.address, input.port)) return false;
    return (input.kind === 'http' ? this.upstream.http : this.upstream.https).length > 0;
  }
}

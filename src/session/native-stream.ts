import dns from 'node:dns';
import net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ConnContext } from '../core/context';
import type { GatewayError } from '../core/errors';
import { hostPort, type Address } from '../core/types';
import { addressOf, noOriginalDst } from '../inbound/tcp-listener';
import type { NameLookup } from '../dns/name-map';
import { DIRECT_CODES, UPSTREAM_CODES, dialFailure } from '../outbound/dial';
import { connectRefusal, connectRequest, tunnelFailure } from '../outbound/http-connect';
import { spliceAbortAll, tunnelAbortAll, tunnelClose, tunnelListen, type TunnelAction } from '../native';
import type { Router } from '../route/router';
import { TLS_SNIFF_MAX_BYTES, sniffTls } from '../sniff/tls';
import { routeStream } from './stream';

export interface NativeStreamDeps {
  router: Router;
  names?: NameLookup;
  sniffTimeoutMs: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** SO_MARK for upstream sockets (--local). */
  mark?: number;
  redirect: boolean;
  /** The destination is one of this host's addresses (a direct connection to a listener). */
  isLocal(address: string): boolean;
  /** The gateway is shutting down: new connections are closed. */
  closing(): boolean;
  /** The connection ended: its log line. */
  onDone(ctx: ConnContext): void;
  /** A connection the addon cannot carry (the proxy is a name not yet resolved): the Node path takes it, with the bytes read so far. */
  takeOver(sock: net.Socket, ctx: ConnContext, head: Buffer): void;
  onUnusable(client: Address, err: GatewayError): void;
  /** Accept errors (EMFILE), for the log. */
  warn(message: string): void;
}

interface Live {
  ctx: ConnContext;
  /** The proxy CONNECTed through; undefined for a direct connection. */
  proxy: ProxyEndpoint | undefined;
}

const CLOSE: TunnelAction = [0];
const TAKEN: TunnelAction = [2];
/** How long a looked-up proxy address is used before it is looked up again (in the background). */
const PROXY_ADDRESS_TTL_MS = 60_000;
/** Accept errors (EMFILE) are logged at most this often. */
const ACCEPT_WARN_MS = 10_000;

/**
 * TLS and other TCP connections carried by the addon from accept to the
 * splice relay (native/tunnel.c): no Node socket per connection. This class
 * keeps what a user sees in TypeScript: the sniffed name, no_proxy and the
 * route (decide), and the log line with the same result codes and texts as
 * the Node path (done). Connections it cannot carry in C go to the Node path.
 */
export class NativeStreams {
  private readonly live = new Map<number, Live>();
  private readonly proxyAddresses = new Map<string, { address: string; expires: number }>();
  private readonly lookups = new Set<string>();
  private drained: (() => void) | undefined;
  private acceptErrors = 0;
  private acceptWarnedAt = -Infinity;

  constructor(private readonly deps: NativeStreamDeps) {}

  /** Takes a listening fd (listenTcp): the addon accepts on it until close() (TcpListener.close). */
  listen(kind: 'tls' | 'tcp', fd: number): { close(): void } {
    const d = this.deps;
    const handle = tunnelListen(
      {
        fd,
        sniff: kind === 'tls',
        redirect: d.redirect,
        mark: d.mark,
        sniffMaxBytes: TLS_SNIFF_MAX_BYTES,
        speculate: kind === 'tls',
        sniffTimeoutMs: d.sniffTimeoutMs,
        connectTimeoutMs: d.connectTimeoutMs,
        idleTimeoutMs: d.idleTimeoutMs,
      },
      (id, cfd, cip, cport, dip, dport, head, final, eof) => this.decide(kind, id, cfd, cip, cport, dip, dport, head, final, eof),
      (id, up, down, outcome, status, reason) => this.done(id, up, down, outcome, status, reason),
      (cip, cport, errno) => this.unusable(cip, cport, errno),
    );
    // Closing twice is harmless (the addon keeps the state).
    return { close: () => tunnelClose(handle) };
  }

  get active(): number {
    return this.live.size;
  }

  private decide(
    kind: 'tls' | 'tcp', id: number, fd: number, cip: string, cport: number, dip: string, dport: number,
    head: Buffer | undefined, final: boolean, eof: boolean,
  ): TunnelAction | null {
    if (!final && head?.length === 0) return this.speculate(cip, dip, dport);
    const sniffed = head && head.length > 0 ? sniffTls(head) : undefined;
    if (!final && (sniffed === undefined || sniffed.status === 'need-more')) return null;
    if (this.deps.closing()) return CLOSE;
    const ctx = new ConnContext(kind, addressOf(cip, cport), addressOf(dip, dport));
    if (this.deps.isLocal(dip)) {
      ctx.refuseLoop();
      this.deps.onDone(ctx);
      return CLOSE;
    }
    if (kind === 'tls' && eof && head?.length === 0) {
      ctx.result = 'client-closed';
      this.deps.onDone(ctx);
      return CLOSE;
    }
    if (sniffed?.status === 'match') ctx.name = sniffed.sni;
    const decision = routeStream(ctx, this.deps.router, this.deps.names);
    if (decision.kind === 'proxy' && decision.proxy) {
      const proxy = decision.proxy;
      const ip = this.proxyAddress(proxy.host);
      if (ip === undefined) {
        // The proxy's name is being looked up: this one connection goes the Node way.
        const sock = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
        sock.on('error', noop);
        this.deps.takeOver(sock, ctx, head ?? Buffer.alloc(0));
        return TAKEN;
      }
      ctx.via = hostPort(proxy.host, proxy.port);
      this.live.set(id, { ctx, proxy });
      return [1, ip, proxy.port, connectRequest(proxy, ctx.name ?? dip, dport)];
    }
    // Direct: the client already chose the address.
    ctx.via = hostPort(dip, dport);
    this.live.set(id, { ctx, proxy: undefined });
    return [1, dip, dport, undefined];
  }

  /**
   * Before the ClientHello: where the connection will most likely go. The
   * proxy connection is then opened while the client's first bytes travel
   * (what redsocks gains by never waiting for them); the SNI can still
   * send it elsewhere (no_proxy by name), and that connection is closed.
   */
  private speculate(cip: string, dip: string, dport: number): TunnelAction | null {
    if (this.deps.closing() || this.deps.isLocal(dip)) return null;
    const name = this.deps.names?.lookup(cip, dip);
    const decision = this.deps.router.select({ kind: 'tls', name, address: dip, port: dport });
    if (decision.kind !== 'proxy' || !decision.proxy) return null;
    const ip = this.proxyAddress(decision.proxy.host);
    return ip === undefined ? null : [3, ip, decision.proxy.port];
  }

  private done(id: number, up: number, down: number, outcome: string, status: number, reason: string): void {
    const entry = this.live.get(id);
    if (entry === undefined) return;
    this.live.delete(id);
    const { ctx } = entry;
    ctx.bytesUp = up;
    ctx.bytesDown = down;
    if (outcome !== 'ok') {
      const err = this.failure(entry, outcome, status, reason);
      if (err) {
        ctx.result = err.code;
        ctx.error = err.message;
      } else {
        ctx.result = outcome;
      }
    }
    this.deps.onDone(ctx);
    if (this.live.size === 0 && this.drained) {
      this.drained();
      this.drained = undefined;
    }
  }

  /** The addon's pre-relay outcomes as the Node path reports them; undefined for relay outcomes. */
  private failure({ ctx, proxy }: Live, outcome: string, status: number, reason: string): GatewayError | undefined {
    const ms = this.deps.connectTimeoutMs;
    const sp = outcome.indexOf(' ');
    const [what, detail] = sp < 0 ? [outcome, ''] : [outcome.slice(0, sp), outcome.slice(sp + 1)];
    const authority = hostPort(ctx.name ?? ctx.destination.address, ctx.destination.port);
    const dialWhat = proxy ? `proxy ${proxy.display}` : `direct ${ctx.via}`;
    const codes = proxy ? UPSTREAM_CODES : DIRECT_CODES;
    switch (what) {
      case 'connect':
      case 'socket':
        return dialFailure.error(codes, dialWhat, detail);
      case 'connect-timeout':
        return dialFailure.timeout(codes, dialWhat, ms);
    }
    if (!proxy) return undefined;
    switch (what) {
      case 'answer':
        return tunnelFailure.error(proxy, detail);
      case 'answer-timeout':
        return tunnelFailure.timeout(proxy, authority, ms);
      case 'answer-closed':
        return tunnelFailure.closed(proxy, authority);
      case 'answer-protocol':
        return tunnelFailure.notHttp(proxy);
      case 'answer-oversized':
        return tunnelFailure.oversized(proxy);
      case 'answer-status':
        return connectRefusal(proxy, authority, ctx.destination.port, status, reason);
      default:
        return undefined;
    }
  }

  private unusable(cip: string | null, cport: number, errno: string): void {
    if (cip === null) {
      // The addon retries every 100 ms while it lasts: one line per ACCEPT_WARN_MS, with how often it happened.
      const now = Date.now();
      this.acceptErrors++;
      if (now - this.acceptWarnedAt < ACCEPT_WARN_MS) return;
      const times = this.acceptErrors > 1 ? ` (${this.acceptErrors} times since the last such line)` : '';
      this.acceptWarnedAt = now;
      this.acceptErrors = 0;
      this.deps.warn(`accept: ${errno}${errno === 'EMFILE' || errno === 'ENFILE' ? ': out of file descriptors; raise the limit (ulimit -n, LimitNOFILE=)' : ''}; accepting again shortly${times}`);
      return;
    }
    const client = addressOf(cip, cport);
    this.deps.onUnusable(client, noOriginalDst(client, errno));
  }

  /** An IP literal for the proxy's host, or undefined while its name is looked up. */
  private proxyAddress(host: string): string | undefined {
    const known = this.proxyAddresses.get(host);
    if (known !== undefined && known.expires >= Date.now()) return known.address;
    if (net.isIP(host)) {
      this.proxyAddresses.set(host, { address: host, expires: Infinity });
      return host;
    }
    this.lookUp(host);
    // A stale address is used while the new lookup runs.
    return known?.address;
  }

  private lookUp(host: string): void {
    if (this.lookups.has(host)) return;
    this.lookups.add(host);
    dns.lookup(host, (err, addr) => {
      this.lookups.delete(host);
      if (!err) this.proxyAddresses.set(host, { address: addr, expires: Date.now() + PROXY_ADDRESS_TTL_MS });
    });
  }

  /** Ends every connection (the listeners are closed first) and resolves once each has been logged. */
  close(): Promise<void> {
    tunnelAbortAll();
    spliceAbortAll();
    if (this.live.size === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drained = resolve));
  }
}

function noop(): void {}

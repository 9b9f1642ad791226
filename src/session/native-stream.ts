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
import { TunnelActions, spliceAbortAll, tunnelAbortAll, tunnelClose, tunnelListen, type TunnelAction } from '../native';
import type { Router } from '../route/router';
import { TLS_SNIFF_MAX_BYTES, sniffTls } from '../sniff/tls';
import { refusedName, routeStream } from './stream';
import { ErrorCodes, type ErrorCode } from '../core/errors';
import type { Admission } from '../inbound/admission';
import type { HostVerifier } from '../route/host-verify';

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
  /** An address of this gateway or of its proxy: never asked of the proxy (route/targets.ts). */
  isForbiddenAddress: (address: string) => boolean;
  admission: Admission;
  /** A connection refused at accept (limits, --clients), for a rate-limited log line. */
  onRefused(client: Address, code: ErrorCode): void;
  verifier: HostVerifier;
  /** The gateway is shutting down: new connections are closed. */
  closing(): boolean;
  /** The connection ended: its log line. */
  onDone(ctx: ConnContext): void;
  /** A connection the addon cannot carry (the proxy is a name not yet resolved): the Node path takes it, with the bytes read so far. */
  takeOver(sock: net.Socket, ctx: ConnContext, head: Buffer): void;
  onUnusable(client: Address, err: GatewayError): void;
  /** A bug met by one connection: logged and counted; the connection is closed. */
  onInternalError(ctx: ConnContext, err: unknown): void;
  /** Accept errors (EMFILE), for a rate-limited log line. */
  onAcceptError(errno: string): void;
  warn(message: string): void;
}

interface Live {
  ctx: ConnContext;
  /** The proxy CONNECTed through; undefined for a direct connection. */
  proxy: ProxyEndpoint | undefined;
}

const CLOSE: TunnelAction = [TunnelActions.CLOSE];
/** A refusal: the client gets a reset (and whatever it sends after, another). */
const RESET: TunnelAction = [TunnelActions.RESET];
const TAKEN: TunnelAction = [TunnelActions.TAKEN];
/** How long a looked-up proxy address is used before it is looked up again (in the background). */
const PROXY_ADDRESS_TTL_MS = 60_000;

/**
 * TLS and other TCP connections carried by the addon from accept to the
 * splice relay (native/tunnel.c): no Node socket per connection. This class
 * keeps what a user sees in TypeScript: the sniffed name, no_proxy and the
 * route (decide), and the log line with the same result codes and texts as
 * the Node path (done). Connections it cannot carry in C go to the Node path.
 */
export class NativeStreams {
  private readonly live = new Map<number, Live>();
  /** Connections counted by the admission, by id: their client address, released at their end. */
  private readonly admitted = new Map<number, string>();
  private readonly proxyAddresses = new Map<string, { address: string; expires: number }>();
  private readonly lookups = new Set<string>();
  private drained: (() => void) | undefined;

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
      // A throw in a callback from the addon would reach process 'uncaughtException' (napi_fatal_exception) and stop
      // the gateway: each one catches, and a bug ends only the connection it met.
      (id, cfd, cip, cport, dip, dport, head, final, eof) => {
        try {
          return this.decide(kind, id, cfd, cip, cport, dip, dport, head, final, eof);
        } catch (err) {
          this.release(id);
          this.deps.onInternalError(new ConnContext(kind, addressOf(cip, cport), addressOf(dip, dport)), err);
          return RESET;
        }
      },
      (id, up, down, outcome, status, reason) => {
        try {
          this.done(id, up, down, outcome, status, reason);
        } catch (err) {
          const ctx = this.live.get(id)?.ctx;
          this.live.delete(id);
          if (ctx) this.deps.onInternalError(ctx, err);
        }
      },
      (cip, cport, errno) => {
        try {
          this.unusable(cip, cport, errno);
        } catch (err) {
          this.deps.warn(`internal error on an unusable connection: ${err instanceof Error ? err.message : String(err)}`);
        }
      },
    );
    // Closing twice is harmless (the addon keeps the state).
    return { close: () => tunnelClose(handle) };
  }

  get active(): number {
    return this.live.size;
  }

  private decide(
    kind: 'tls' | 'tcp',
    id: number,
    fd: number,
    cip: string,
    cport: number,
    dip: string,
    dport: number,
    head: Buffer | undefined,
    final: boolean,
    eof: boolean,
  ): TunnelAction | null {
    if (!this.admitted.has(id)) {
      // The first word about a connection comes at accept: admit it there, before any byte is read.
      const client = addressOf(cip, cport);
      const refused = this.deps.admission.admit(client.address);
      if (refused) {
        this.deps.onRefused(client, refused);
        return RESET;
      }
      this.admitted.set(id, client.address);
    }
    const action = this.decideAdmitted(kind, id, fd, cip, cport, dip, dport, head, final, eof);
    // Closed or handed over: the addon says no more about it (a handed-over one is counted on the Node path).
    if (action === CLOSE || action === RESET || action === TAKEN) this.release(id);
    return action;
  }

  private release(id: number): void {
    const client = this.admitted.get(id);
    if (client === undefined) return;
    this.admitted.delete(id);
    this.deps.admission.release(client);
  }

  private decideAdmitted(
    kind: 'tls' | 'tcp',
    id: number,
    fd: number,
    cip: string,
    cport: number,
    dip: string,
    dport: number,
    head: Buffer | undefined,
    final: boolean,
    eof: boolean,
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
    if (kind === 'tls' && sniffed?.status === 'need-more' && !eof && head!.length < TLS_SNIFF_MAX_BYTES) {
      // A ClientHello begun but not finished by the deadline (counted from accept): a trickle, not a client.
      return this.refuse(ctx, ErrorCodes.SNIFF_TIMEOUT, `no whole ClientHello within ${this.deps.sniffTimeoutMs} ms of accept`);
    }
    if (sniffed?.status === 'match') ctx.name = sniffed.sni;
    ctx.name ??= this.deps.names?.lookup(ctx.client.address, dip);
    const refused = refusedName(ctx, this.deps.isForbiddenAddress);
    if (refused) return this.refuse(ctx, ErrorCodes.FORBIDDEN_TARGET, refused);
    let verified: boolean | undefined;
    if (ctx.name !== undefined && this.deps.router.needsVerification({ kind, name: ctx.name, address: dip, port: dport })) {
      verified = this.deps.verifier.check(ctx.client.address, ctx.name, dip);
      // The resolver must be asked: the Node path waits for it.
      if (verified === undefined) return this.handOver(fd, ctx, head);
    }
    const decision = routeStream(ctx, this.deps.router, this.deps.names, verified);
    if (decision.kind === 'proxy' && decision.proxy) {
      const proxy = decision.proxy;
      const ip = this.proxyAddress(proxy.host);
      // The proxy's name is being looked up: this one connection goes the Node way.
      if (ip === undefined) return this.handOver(fd, ctx, head);
      ctx.via = hostPort(proxy.host, proxy.port);
      this.live.set(id, { ctx, proxy });
      return [TunnelActions.CONNECT, ip, proxy.port, connectRequest(proxy, ctx.name ?? dip, dport)];
    }
    // Direct: the client already chose the address.
    ctx.via = hostPort(dip, dport);
    this.live.set(id, { ctx, proxy: undefined });
    return [TunnelActions.CONNECT, dip, dport, undefined];
  }

  private refuse(ctx: ConnContext, code: ErrorCode, why: string): TunnelAction {
    ctx.refuse(code, why);
    this.deps.onDone(ctx);
    return RESET;
  }

  private handOver(fd: number, ctx: ConnContext, head: Buffer | undefined): TunnelAction {
    const sock = new net.Socket({
      fd,
      readable: true,
      writable: true,
      allowHalfOpen: true,
      pauseOnCreate: true,
    } as net.SocketConstructorOpts);
    sock.on('error', noop);
    this.deps.takeOver(sock, ctx, head ?? Buffer.alloc(0));
    return TAKEN;
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
    return ip === undefined ? null : [TunnelActions.SPECULATE, ip, decision.proxy.port];
  }

  private done(id: number, up: number, down: number, outcome: string, status: number, reason: string): void {
    this.release(id);
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
      // The addon pauses accepting for 100 ms and tries again, as long as it lasts.
      this.deps.onAcceptError(errno);
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

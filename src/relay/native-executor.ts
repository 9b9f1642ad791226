import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ConnContext } from '../core/context';
import { hostPort, type Address } from '../core/types';
import { field } from '../core/log';
import { addressOf, noOriginalDst } from '../inbound/tcp-listener';
import type { NameLookup } from '../dns/name-map';
import { connectRequest } from '../outbound/http-connect';
import { outcomeError, responseFields } from '../outbound/failures';
import {
  NextActions,
  Outcomes,
  TunnelActions,
  UpActions,
  outcomeText,
  spliceAbortAll,
  tunnelAbortAll,
  tunnelClose,
  tunnelListen,
  type NextAction,
  type Outcome,
  type TunnelAction,
  type TunnelDone,
  type UpAction,
} from '../native';
import type { RequestFramer } from '../pipeline/http-framer';
import { decide } from '../pipeline/decide';
import { HTTP_SNIFF_MAX_BYTES, sniffHttp } from '../sniff/http';
import { HEADERS_TIMEOUT_MS, answerAndClose, errorStatus, gatewayResponse } from './http-session';
import type { Router } from '../route/router';
import { TLS_SNIFF_MAX_BYTES, sniffTls } from '../sniff/tls';
import { ErrorCodes, GatewayError, type ErrorCode } from '../core/errors';
import type { Admission } from '../inbound/admission';
import type { HostVerifier } from '../route/host-verify';
import type { UpstreamHealth } from '../route/upstream-health';
import { ProxyAuthenticator, readAnswerHead } from '../outbound/auth/proxy-auth';

export interface NativeStreamDeps {
  router: Router;
  /** Up/down per upstream: failures before the relay mark a proxy down, and the next one is dialled. */
  health?: UpstreamHealth;
  /**
   * There is something to fail over to or to authenticate with (several
   * upstreams, or credentials): only then is the addon given upstream().
   * Measured: with it, a new TLS connection cost about 100 µs more CPU in
   * bench.ts (353 vs 252 µs, cause not profiled yet), which one plain proxy
   * would pay for nothing (upstream() could only say null).
   */
  handshakes?: boolean;
  names?: NameLookup;
  sniffTimeoutMs: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** SO_MARK for upstream sockets (--local). */
  mark?: number;
  /** --direct-source client. */
  directFromClient?: boolean;
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
  /** The same for a plain HTTP connection: the Node HTTP path carries it from `head` on. */
  takeOverHttp(sock: net.Socket, ctx: ConnContext, head: Buffer): void;
  onUnusable(client: Address, err: GatewayError): void;
  /** A bug met by one connection: logged and counted; the connection is closed. */
  onInternalError(ctx: ConnContext, err: unknown): void;
  /** Accept errors (EMFILE), for a rate-limited log line. */
  onAcceptError(errno: string): void;
  warn(message: string): void;
  /** One line per request forwarded on the fast path, when debug logging is on (undefined: off). */
  debug?: (message: string) => void;
}

interface Live {
  ctx: ConnContext;
  /** The proxy CONNECTed through; undefined for a direct connection. */
  proxy: ProxyEndpoint | undefined;
  /** The upstreams of the route, in order, and which of them `proxy` is: a failover takes the next. */
  proxies?: readonly ProxyEndpoint[];
  index?: number;
  /** A 407 is being answered (NTLM, Digest): the handshake's state. */
  auth?: ProxyAuthenticator;
  /** Bytes of a 407's body still to come before the next answer (the addon shows them with it). */
  skip?: number;
  /** Plain HTTP on the fast path: the client's requests, framed. */
  framer?: RequestFramer;
}

const CLOSE: TunnelAction = [TunnelActions.CLOSE];
/** A refusal: the client gets a reset (and whatever it sends after, another). */
const RESET: TunnelAction = [TunnelActions.RESET];
const TAKEN: TunnelAction = [TunnelActions.TAKEN];
/** How long a looked-up proxy address is used before it is looked up again (in the background). */
const PROXY_ADDRESS_TTL_MS = 60_000;

/** One call of the addon's decide(): the connection, and its first bytes so far. */
interface DecideCall {
  id: number;
  /** The client socket, for a hand-over to the Node path. */
  fd: number;
  cip: string;
  cport: number;
  dip: string;
  dport: number;
  head: Buffer | undefined;
  /** No more bytes will come before the decision (the sniff deadline, EOF, the size limit). */
  final: boolean;
  eof: boolean;
}

/**
 * The addon's executor of the pipeline: every intercepted TCP connection is
 * carried by the addon from accept to the splice relay (native/tunnel.c,
 * native/splice.c), with no Node socket per connection. This class is the
 * TypeScript side: it admits the client, runs decide() (pipeline/) on the
 * first bytes and turns the Decision into the addon's action, frames plain
 * HTTP at each request boundary (next), and writes the log line with the
 * same result codes and texts as the Node path (done). What the addon cannot
 * carry (a name to verify, a hand-over) goes to the Node executor.
 */
export class NativeExecutor {
  private readonly live = new Map<number, Live>();
  /** Connections counted by the admission, by id: their client address, released at their end. */
  private readonly admitted = new Map<number, string>();
  /** HTTP connections whose first head is still partial: how much of it was searched. */
  private readonly scanned = new Map<number, number>();
  private readonly proxyAddresses = new Map<string, { address: string; expires: number }>();
  private readonly lookups = new Set<string>();
  private drained: (() => void) | undefined;

  constructor(private readonly deps: NativeStreamDeps) {}

  /** Takes a listening fd (listenTcp): the addon accepts on it until close() (TcpListener.close). */
  listen(kind: 'http' | 'tls' | 'tcp', fd: number): { close(): void } {
    const d = this.deps;
    const handle = tunnelListen(
      {
        fd,
        sniff: kind !== 'tcp',
        redirect: d.redirect,
        mark: d.mark,
        sniffMaxBytes: kind === 'http' ? HTTP_SNIFF_MAX_BYTES : TLS_SNIFF_MAX_BYTES,
        speculate: kind === 'tls',
        next: kind === 'http' ? (id, bytes, eof) => this.next(id, bytes, eof) : undefined,
        sniffTimeoutMs: d.sniffTimeoutMs,
        // Later request heads: the Node HTTP session's headersTimeout, on the fast path too.
        headTimeoutMs: kind === 'http' ? HEADERS_TIMEOUT_MS : 0,
        connectTimeoutMs: d.connectTimeoutMs,
        idleTimeoutMs: d.idleTimeoutMs,
        directFromClient: d.directFromClient,
        upstream: !d.handshakes
          ? undefined
          : (id, outcome, detail, bytes, eof) => {
              try {
                return this.upstream(id, outcome, detail, bytes, eof);
              } catch (err) {
                const ctx = this.live.get(id)?.ctx;
                if (ctx) this.deps.onInternalError(ctx, err);
                return null;
              }
            },
      },
      // A throw in a callback from the addon would reach process 'uncaughtException' (napi_fatal_exception) and stop
      // the gateway: each one catches, and a bug ends only the connection it met.
      (id, cfd, cip, cport, dip, dport, head, final, eof) => {
        try {
          return this.decide(kind, { id, fd: cfd, cip, cport, dip, dport, head, final, eof });
        } catch (err) {
          this.release(id);
          this.deps.onInternalError(new ConnContext(kind, addressOf(cip, cport), addressOf(dip, dport)), err);
          return RESET;
        }
      },
      (id, up, down, outcome, detail, status, reason, fd, rest) => {
        try {
          this.done(id, up, down, outcome, detail, status, reason, fd, rest);
        } catch (err) {
          const ctx = this.live.get(id)?.ctx;
          this.live.delete(id);
          if (fd >= 0) closeFd(fd);
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

  private decide(kind: 'http' | 'tls' | 'tcp', call: DecideCall): TunnelAction | null {
    const { id, cip, cport } = call;
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
    const action = this.decideAdmitted(kind, call);
    // Closed or handed over: the addon says no more about it (a handed-over one is counted on the Node path).
    if (action === CLOSE || action === RESET || action === TAKEN) this.release(id);
    return action;
  }

  private release(id: number): void {
    this.scanned.delete(id);
    const client = this.admitted.get(id);
    if (client === undefined) return;
    this.admitted.delete(id);
    this.deps.admission.release(client);
  }

  private decideAdmitted(kind: 'http' | 'tls' | 'tcp', call: DecideCall): TunnelAction | null {
    const { id, fd, cip, cport, dip, dport, head, final, eof } = call;
    if (kind === 'tls' && !final && head?.length === 0) return this.speculate(cip, dip, dport);
    // The sniffers are cheap on a partial head; the context is made only once there is something to decide. The
    // ClientHello's verdict goes on to decide(), which would otherwise parse it a second time.
    const tls = kind === 'tls' && head !== undefined && head.length > 0 ? sniffTls(head) : undefined;
    if (!final && head !== undefined && (tls ?? sniffHttp(head, this.scanned.get(id))).status === 'need-more') {
      // The addon asks again with these bytes and more: a head trickled in is searched once (sniff/http.ts).
      if (!tls) this.scanned.set(id, head.length);
      return null;
    }
    this.scanned.delete(id);
    if (this.deps.closing()) return CLOSE;
    const ctx = new ConnContext(kind, addressOf(cip, cport), addressOf(dip, dport));
    const bytes = head ?? EMPTY;
    const d = decide(ctx, { head: bytes, final, eof, framed: true, ...(tls ? { tls } : {}) }, this.deps);
    switch (d.kind) {
      case 'read-more':
        return null;
      case 'close':
        this.deps.onDone(ctx);
        return CLOSE;
      case 'refuse':
        if (d.status !== undefined) return this.answerHttp(fd, ctx, d.status, d.code, d.why);
        ctx.refuse(d.code, d.why);
        this.deps.onDone(ctx);
        return RESET;
      case 'verify':
      case 'http-session':
        // The resolver must be asked (the Node path waits for it), or the Node HTTP session carries this one.
        return kind === 'http' && d.kind === 'http-session' ? this.handOverHttp(fd, ctx, bytes) : this.handOver(fd, ctx, bytes);
      case 'tunnel': {
        const proxy = d.route.kind === 'proxy' ? d.route.proxy : undefined;
        if (proxy) {
          const ip = this.proxyAddress(proxy.host);
          // The proxy's name is being looked up: this one connection goes the Node way.
          if (ip === undefined) return this.handOver(fd, ctx, bytes);
          ctx.via = hostPort(proxy.host, proxy.port);
          // With credentials, the handshake starts as the proxy last accepted it (NTLM's first leg, or Basic).
          const auth = proxy.auth ? new ProxyAuthenticator(proxy, 'CONNECT', hostPort(ctx.name ?? dip, dport)) : undefined;
          this.live.set(id, { ctx, proxy, proxies: d.route.kind === 'proxy' ? d.route.proxies : undefined, index: 0, auth });
          return [TunnelActions.CONNECT, ip, proxy.port, connectRequest(proxy, ctx.name ?? dip, dport, auth ? auth.initial : undefined)];
        }
        // Direct: the client already chose the address.
        ctx.via = hostPort(dip, dport);
        this.live.set(id, { ctx, proxy: undefined });
        return [TunnelActions.CONNECT, dip, dport, undefined];
      }
      case 'http': {
        const proxy = d.route.kind === 'proxy' ? d.route.proxy : undefined;
        let ip = dip;
        let port = dport;
        if (proxy) {
          const known = this.proxyAddress(proxy.host);
          if (known === undefined) return this.handOverHttp(fd, ctx, bytes);
          ip = known;
          port = proxy.port;
        }
        ctx.via = hostPort(proxy ? proxy.host : dip, port);
        this.live.set(id, { ctx, proxy, framer: d.framer, proxies: d.route.kind === 'proxy' ? d.route.proxies : undefined, index: 0 });
        if (d.request) this.logRequest(ctx, d.request);
        return [TunnelActions.HTTP, ip, port, d.out, d.consumed, d.budget, d.framer.atHead];
      }
    }
  }

  /**
   * Before the relay, the proxy failed (native/tunnel.c asks before it ends
   * the connection): one that could not be reached or did not answer as a
   * proxy is marked down and the next upstream is dialled, with the request
   * rebuilt for it; a status it answered ends the connection as before
   * (null). Exchanges are not used yet: the bytes of one never come here.
   */
  private upstream(id: number, outcome: Outcome, detail: string, bytes: Buffer, eof: boolean): UpAction | null {
    const entry = this.live.get(id);
    if (entry?.proxy === undefined || entry.proxies === undefined || entry.index === undefined) return null;
    if (entry.framer === undefined && (outcome === Outcomes.ANSWER_STATUS || (outcome === Outcomes.OK && entry.auth))) {
      return this.authenticate(entry, outcome, bytes, eof);
    }
    const err = this.failure(entry, outcome, detail, 0, '');
    if (err?.upstreamDown !== true) return null;
    this.deps.health?.failed(entry.proxy, err.message);
    for (let i = entry.index + 1; i < entry.proxies.length; i++) {
      const next = entry.proxies[i]!;
      const ip = this.proxyAddress(next.host);
      // A name not looked up yet is skipped (the lookup starts): the connection's deadline is not spent waiting for it.
      if (ip === undefined) continue;
      entry.index = i;
      entry.proxy = next;
      entry.ctx.via = hostPort(next.host, next.port);
      const { ctx } = entry;
      const authority = hostPort(ctx.name ?? ctx.destination.address, ctx.destination.port);
      entry.auth = next.auth && !entry.framer ? new ProxyAuthenticator(next, 'CONNECT', authority) : undefined;
      const out = entry.framer
        ? entry.framer.reroute(next)
        : connectRequest(next, ctx.name ?? ctx.destination.address, ctx.destination.port, entry.auth?.initial);
      return [UpActions.REDIAL, ip, next.port, out, false];
    }
    return null;
  }

  /**
   * A CONNECT's 407 (ANSWER_STATUS, `bytes` its head) or the answers of the
   * legs after it (OK, `bytes` from the end of the last leg's answer):
   * answered as outbound/auth/proxy-auth.ts says, on the same connection
   * (its body skipped) when the proxy keeps it, else on a new one. Plain
   * HTTP connections on the fast path are not authenticated here: their
   * 407 gets the gateway's page.
   */
  private authenticate(entry: Live, outcome: Outcome, bytes: Buffer, eof: boolean): UpAction | null {
    const { ctx } = entry;
    const proxy = entry.proxy!;
    const host = ctx.name ?? ctx.destination.address;
    const port = ctx.destination.port;
    entry.auth ??= new ProxyAuthenticator(proxy, 'CONNECT', hostPort(host, port));
    // After a CONTINUE the first bytes may be the rest of the last 407's body (the addon peeks; nothing is lost).
    const skip = outcome === Outcomes.OK ? (entry.skip ?? 0) : 0;
    if (bytes.length < skip) return eof ? this.refusedAuth(Outcomes.ANSWER_CLOSED) : null;
    const head = readAnswerHead(bytes.subarray(skip));
    if (head === undefined) return eof ? this.refusedAuth(Outcomes.ANSWER_CLOSED) : null;
    if (head === 'invalid' || head === 'oversized') {
      return this.refusedAuth(head === 'oversized' ? Outcomes.ANSWER_OVERSIZED : Outcomes.ANSWER_PROTOCOL);
    }
    if (head.status >= 200 && head.status <= 299) {
      entry.auth.succeeded();
      return [UpActions.ESTABLISHED, skip + head.headLength];
    }
    const leg = head.status === 407 ? entry.auth.answer(head.fields) : undefined;
    const reuse = leg !== undefined && head.keepAlive;
    if (leg === undefined || (leg.sameConnection && !reuse)) {
      return [UpActions.FAIL, Outcomes.ANSWER_STATUS, '', head.status, head.reason];
    }
    const out = connectRequest(proxy, host, port, leg.authorization);
    if (!reuse) {
      entry.skip = 0;
      return [UpActions.REDIAL, this.proxyAddress(proxy.host) ?? proxy.host, proxy.port, out, false];
    }
    // The head is taken; the body (all of it, or what is still to come) before the next answer.
    const end = skip + head.headLength + head.bodyLength!;
    const consumed = Math.min(end, bytes.length);
    entry.skip = end - consumed;
    return [UpActions.CONTINUE, out, consumed];
  }

  private refusedAuth(outcome: Outcome): UpAction {
    return [UpActions.FAIL, outcome, '', 0, ''];
  }

  /** At a request boundary of a framed connection: the next step, as the addon reads it. */
  private next(id: number, bytes: Buffer, eof: boolean): NextAction | null {
    const entry = this.live.get(id);
    if (!entry?.framer) return NEXT_CLOSE;
    try {
      const step = entry.framer.next(bytes, eof);
      switch (step.kind) {
        case 'need-more':
          return eof ? NEXT_CLOSE : null;
        case 'forward':
          entry.ctx.requests = entry.framer.requests;
          if (step.request) this.logRequest(entry.ctx, step.request);
          // A chunked body's lines are not held like a head (native/splice.c reads nothing at a marked boundary until an
          // answer begins): its request is marked by the step that ends it.
          return [NextActions.FORWARD, step.out, step.consumed, step.budget, entry.framer.atHead];
        case 'not-http':
        case 'refuse':
        case 'handover':
          // Earlier responses may still be on their way: the Node path answers (or refuses) this request once they are out.
          return NEXT_HANDOVER;
      }
    } catch (err) {
      this.deps.onInternalError(entry.ctx, err);
      return NEXT_CLOSE;
    }
  }

  /** The Node path's debug line for a request, less what the fast path does not read (the response status). */
  private logRequest(ctx: ConnContext, request: { method: string; uri: string }): void {
    this.deps.debug?.(
      `req id=${ctx.id}.${ctx.requests} client=${field(hostPort(ctx.client.address, ctx.client.port))} method=${field(request.method)} ` +
        `url=${field(request.uri)} route=${ctx.route ?? '-'} via=${field(ctx.via)} status=-`,
    );
  }

  /** The gateway's own answer to a plain HTTP request (400, 403, 405, 408), on the client socket the addon gave up. */
  private answerHttp(fd: number, ctx: ConnContext, status: number, code: ErrorCode, why: string): TunnelAction {
    ctx.refuse(code, why);
    const sock = socketOf(fd);
    sock.once('close', () => this.deps.onDone(ctx));
    answerAndClose(sock, gatewayResponse(status, code, why));
    return TAKEN;
  }

  private handOverHttp(fd: number, ctx: ConnContext, head: Buffer): TunnelAction {
    this.deps.takeOverHttp(socketOf(fd), ctx, head);
    return TAKEN;
  }

  private handOver(fd: number, ctx: ConnContext, head: Buffer | undefined): TunnelAction {
    this.deps.takeOver(socketOf(fd), ctx, head ?? EMPTY);
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

  private done(...[id, up, down, outcome, detail, status, reason, fd, rest]: Parameters<TunnelDone>): void {
    this.release(id);
    const entry = this.live.get(id);
    if (entry === undefined) {
      if (fd >= 0) closeFd(fd);
      return;
    }
    this.live.delete(id);
    const { ctx } = entry;
    ctx.bytesUp = up;
    ctx.bytesDown = down;
    if (outcome === Outcomes.HANDED_OVER && fd >= 0) {
      // A later request the fast path does not carry (another route, Upgrade, a refusal): the Node path takes the
      // connection with what the client sent after the last request, and logs it at its end.
      this.deps.takeOverHttp(socketOf(fd), ctx, rest ?? Buffer.alloc(0));
    } else {
      const err = this.failure(entry, outcome, detail, status, reason);
      // The proxy carried the connection, or answered it (a status): it is alive. A failure was counted in upstream().
      if (entry.proxy && (err === undefined || (err.status !== undefined && err.upstreamDown !== true)))
        this.deps.health?.succeeded(entry.proxy);
      if (err) {
        ctx.result = err.code;
        ctx.error = err.message;
      } else if (outcome !== Outcomes.OK) {
        ctx.result = outcomeText(outcome, detail);
      }
      if (err && entry.framer) {
        // The Node path's line for a request that failed, with the same fields.
        this.deps.warn(
          `req id=${ctx.id}.${ctx.requests} host=${field(ctx.name ?? ctx.destination.address)} route=${ctx.route ?? '-'} error=${err.code} ${field(err.message)}`,
        );
      }
      if (fd >= 0) {
        // A plain HTTP request that got no response: the gateway's own answer says why (502, 504), as on the Node path.
        const sock = socketOf(fd);
        sock.once('close', () => this.deps.onDone(ctx));
        answerAndClose(
          sock,
          gatewayResponse(
            errorStatus(err),
            err?.code ?? ErrorCodes.INTERNAL,
            err?.message ?? `the request ended: ${outcomeText(outcome, detail)}`,
          ),
        );
      } else {
        this.deps.onDone(ctx);
      }
    }
    if (this.live.size === 0 && this.drained) {
      this.drained();
      this.drained = undefined;
    }
  }

  /** The addon's outcome as the Node path reports it (outbound/failures.ts); undefined for relay outcomes. */
  private failure(entry: Live, outcome: Outcome, detail: string, status: number, reason: string): GatewayError | undefined {
    const { ctx, proxy, framer } = entry;
    const authority = hostPort(ctx.name ?? ctx.destination.address, ctx.destination.port);
    // A framed connection's ANSWER_STATUS is its first response, which stopped the relay (native/splice.c
    // peek_status): `reason` is then that response's head.
    const first = framer ? (framer.first ?? { method: 'GET', uri: authority }) : undefined;
    return outcomeError(
      outcome,
      detail,
      { proxy, via: ctx.via ?? authority, authority, port: ctx.destination.port, timeoutMs: this.deps.connectTimeoutMs, request: first },
      first ? { status, headers: responseFields(reason) } : { status, reason, scheme: entry.auth?.current, offered: entry.auth?.offered },
    );
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

const EMPTY = Buffer.alloc(0);

const NEXT_CLOSE: NextAction = [NextActions.CLOSE];
const NEXT_HANDOVER: NextAction = [NextActions.HANDOVER];

/** A client socket the addon gave up, as a Node socket (paused until read). */
function socketOf(fd: number): net.Socket {
  const sock = new net.Socket({
    fd,
    readable: true,
    writable: true,
    allowHalfOpen: true,
    pauseOnCreate: true,
  } as net.SocketConstructorOpts);
  sock.on('error', noop);
  return sock;
}

function closeFd(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // already closed: nothing to release
  }
}

import http from 'node:http';
import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import type { ConnContext } from '../core/context';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { field, type Logger } from '../core/log';
import { hostPort } from '../core/types';
import type { Outbounds } from '../outbound/outbounds';
import type { Relay } from './relay';
import type { HostVerifier } from '../route/host-verify';
import type { RouteDecision, RouteInput, Router } from '../route/router';
import { markedConnector } from '../outbound/dial';
import { outcomeError, proxyOwnError } from '../outbound/failures';
import { Outcomes } from '../native';
import {
  HOP_BY_HOP,
  absoluteUri,
  forwardHead,
  headerPairs,
  serialize,
  upgradeHead,
  type ForwardRequest,
  type RequestParts,
} from '../outbound/request-head';
import { checkRequest, type RequestCheck } from '../pipeline/http-request';

export interface HttpDeps {
  router: Router;
  outbounds: Outbounds;
  relay: Relay;
  log: Logger;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** SO_MARK for upstream sockets (--local), so this host's interception skips them. */
  socketMark?: number;
  /** --direct-source client: direct requests leave from the client's address. */
  directFromClient?: boolean;
  verifier: HostVerifier;
  /** An address of this gateway or of its proxy. */
  isLocal: (address: string) => boolean;
  /** A bug met by one connection (it is ended; the gateway goes on). */
  onInternalError(ctx: ConnContext, err: unknown): void;
}

/** Copies a response's raw headers minus hop-by-hop ones and those the Connection header names. */
export function endToEndHeaders(raw: readonly string[], connection: string | string[] | undefined): string[] {
  const named = new Set<string>();
  for (const v of Array.isArray(connection) ? connection : connection ? [connection] : []) {
    for (const t of v.split(',')) named.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    // Node frames the body anew: the origin's Transfer-Encoding goes too.
    if (HOP_BY_HOP.has(k) || k === 'transfer-encoding' || named.has(k)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** What an HTTP client sees when the gateway cannot carry its request. */
export function errorStatus(err: unknown): number {
  if (err instanceof GatewayError) {
    if (err.code === ErrorCodes.UPSTREAM_TIMEOUT || err.code === ErrorCodes.DIRECT_TIMEOUT) return 504;
    if (err.code === ErrorCodes.SNIFF_TIMEOUT) return 408;
  }
  return 502;
}

/** A reason phrase Node will write (it throws on control bytes): what the origin sent, less those. */
function safeReason(reason: string | undefined): string | undefined {
  if (reason === undefined) return undefined;
  const clean = reason.replace(/[^\t\x20-\x7e\x80-\xff]/g, '');
  return clean === '' ? undefined : clean;
}

/** A response the gateway makes itself: one line of text, the code in X-Transgate-Error, connection closed. */
export function gatewayResponse(status: number, code: string, message: string): string {
  const body = `transgate: ${message}\n`;
  const text = STATUS_TEXT[status] ?? 'Error';
  return (
    `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `X-Transgate-Error: ${code}\r\nConnection: close\r\n\r\n${body}`
  );
}

/**
 * Writes the gateway's own answer and closes the connection once it is out.
 * Client sockets are half-open capable (allowHalfOpen), so end() alone would
 * leave the read side open for as long as the client goes on sending: a
 * refused trickle would hold its descriptor and its place in the limits.
 */
export function answerAndClose(sock: net.Socket, response: string): void {
  if (!sock.writable) {
    sock.destroy();
    return;
  }
  sock.end(response, () => sock.destroy());
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** How long a request head after the first may take to arrive whole (slowloris). */
export const HEADERS_TIMEOUT_MS = 20_000;

interface ConnState {
  ctx: ConnContext;
  /** Set once an Upgrade took the connection over: the relay reports its end. */
  upgraded: boolean;
  onDone: (ctx: ConnContext) => void;
}

/**
 * HTTP ports: Node's HTTP parser takes the client connection, so that
 * keep-alive, pipelining, chunked bodies and Upgrade are handled by a
 * well-tested implementation; each request is routed by its own Host and
 * sent to the proxy in absolute form (proxies that refuse CONNECT to port 80
 * still see and filter the URL).
 */
export class HttpSession {
  private readonly server: http.Server;
  private readonly states = new WeakMap<net.Socket, ConnState>();
  private readonly proxyAgent: http.Agent;
  private readonly directAgent: http.Agent;

  constructor(private readonly deps: HttpDeps) {
    this.proxyAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 256, scheduling: 'lifo' });
    this.directAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 256, scheduling: 'lifo' });
    if (deps.socketMark !== undefined) {
      // --local: without the mark, the OUTPUT rules would send our own requests back to us.
      const connect = markedConnector(deps.socketMark) as unknown as http.Agent['createConnection'];
      this.proxyAgent.createConnection = connect;
      this.directAgent.createConnection = connect;
    }
    if (deps.directFromClient) {
      // --direct-source client: each request names its client as localAddress (see onRequest).
      this.directAgent.createConnection = markedConnector(deps.socketMark, true) as unknown as http.Agent['createConnection'];
    }
    this.server = http.createServer({ requireHostHeader: false, joinDuplicateHeaders: false });
    this.server.keepAliveTimeout = 60_000;
    // From the first byte of each later request's head (the first head was read within --sniff-timeout of accept).
    this.server.headersTimeout = HEADERS_TIMEOUT_MS;
    this.server.requestTimeout = 0;
    // Every handler catches: whatever one client's request or its origin's answer does, only that connection ends.
    this.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.onRequest(req, res).catch((err: unknown) => this.internalError(req.socket, err));
    });
    this.server.on('upgrade', (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => {
      this.onUpgrade(req, sock, head).catch((err: unknown) => this.internalError(sock, err));
    });
    this.server.on('connect', (req: http.IncomingMessage, sock: net.Socket) => {
      const st = this.states.get(sock);
      if (st) st.ctx.requests++;
      this.answer(sock, st?.ctx, {
        status: 405,
        code: ErrorCodes.METHOD,
        reason: `${req.method ?? 'CONNECT'} is not carried on intercepted HTTP ports`,
      });
    });
    this.server.on('clientError', (err: Error & { code?: string }, sock: net.Socket) => {
      const st = this.states.get(sock);
      if (sock.writable && err.code !== 'ECONNRESET') {
        const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
        this.answer(
          sock,
          st?.ctx,
          timeout
            ? { status: 408, code: ErrorCodes.SNIFF_TIMEOUT, reason: 'the request head did not arrive in time' }
            : { status: 400, code: ErrorCodes.BAD_REQUEST, reason: 'malformed HTTP request head' },
        );
      } else {
        if (st && st.ctx.result === 'ok') st.ctx.result = ErrorCodes.BAD_REQUEST;
        sock.destroy();
      }
    });
  }

  /** Hands an accepted client connection, with the bytes already read, to the HTTP parser. */
  accept(sock: net.Socket, ctx: ConnContext, head: Buffer, onDone: (ctx: ConnContext) => void): void {
    const st: ConnState = { ctx, upgraded: false, onDone };
    this.states.set(sock, st);
    sock.once('close', () => {
      if (st.upgraded) return;
      ctx.bytesUp = sock.bytesRead;
      ctx.bytesDown = sock.bytesWritten;
      onDone(ctx);
    });
    if (head.length > 0) sock.unshift(head);
    this.server.emit('connection', sock);
    sock.resume();
  }

  close(): void {
    this.server.closeAllConnections();
    this.proxyAgent.destroy();
    this.directAgent.destroy();
  }

  /** A request the gateway answers itself (400, 403, 405, 408), then closes. */
  private answer(sock: net.Socket, ctx: ConnContext | undefined, refusal: { status: number; code: string; reason: string }): void {
    ctx?.refuse(refusal.code, refusal.reason);
    answerAndClose(sock, gatewayResponse(refusal.status, refusal.code, refusal.reason));
  }

  /** A bug met by one connection: it ends (logged once and counted by the gateway), the gateway goes on. */
  private internalError(sock: net.Socket, err: unknown): void {
    const st = this.states.get(sock);
    if (st) {
      st.ctx.result = ErrorCodes.INTERNAL;
      this.deps.onInternalError(st.ctx, err);
    }
    sock.destroy();
  }

  /** Where a checked request goes: a verified no_proxy name direct, otherwise the proxy (or direct without one). */
  private async route(ctx: ConnContext, check: Extract<RequestCheck, { ok: true }>): Promise<{ name: string; decision: RouteDecision }> {
    const name = check.target?.host ?? ctx.destination.address;
    if (check.target) ctx.name = check.target.host;
    const input: RouteInput = { kind: 'http', name: check.target?.host, address: ctx.destination.address, port: ctx.destination.port };
    if (input.name !== undefined && this.deps.router.needsVerification(input)) {
      const known = this.deps.verifier.check(ctx.client.address, input.name, input.address);
      input.nameVerified = known ?? (await this.deps.verifier.verify(ctx.client.address, input.name, input.address));
    }
    const decision = this.deps.router.select(input);
    ctx.route = decision.kind;
    return { name, decision };
  }

  private check(ctx: ConnContext, req: http.IncomingMessage): RequestCheck {
    return checkRequest({
      method: req.method ?? '',
      url: req.url ?? '',
      rawHeaders: req.rawHeaders,
      port: ctx.destination.port,
      isLocal: this.deps.isLocal,
    });
  }

  /** A checked request as the upstream head builder takes it. */
  private forwardRequest(
    req: http.IncomingMessage,
    host: string,
    port: number,
    check: Extract<RequestCheck, { ok: true }>,
  ): ForwardRequest {
    return {
      method: req.method ?? 'GET',
      version: `HTTP/${req.httpVersion}`,
      host,
      port,
      path: check.path,
      headers: headerPairs(req.rawHeaders),
    };
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const st = this.states.get(req.socket);
    if (!st) {
      res.destroy();
      return;
    }
    const { ctx } = st;
    ctx.requests++;
    // Taken before any await: a pipelined request behind this one counts itself while this one is routed.
    const reqId = `${ctx.id}.${ctx.requests}`;
    const started = performance.now();
    const check = this.check(ctx, req);
    if (!check.ok) {
      // Through res, not the socket: an earlier pipelined response may still be on its way.
      req.resume();
      ctx.refuse(check.code, check.reason);
      const body = `transgate: ${check.reason}\n`;
      res.sendDate = false;
      res.writeHead(check.status, {
        'Content-Type': 'text/plain; charset=utf-8',
        'Content-Length': Buffer.byteLength(body),
        'X-Transgate-Error': check.code,
        Connection: 'close',
      });
      res.end(body);
      return;
    }
    // A lookup may run meanwhile (host verification); a body waits in the stream until it is piped.
    const { name, decision } = await this.route(ctx, check);
    if (res.destroyed || req.socket.destroyed) return;
    const port = ctx.destination.port;
    const url = absoluteUri(name, port, check.path);
    const facts = this.forwardRequest(req, name, port, check);
    let options: http.RequestOptions;
    let parts: RequestParts;
    // The upstreams left to fail over to, after the one asked now.
    const proxies = decision.kind === 'proxy' ? (decision.proxies ?? (decision.proxy ? [decision.proxy] : [])) : [];
    let proxyIndex = 0;
    const toProxy = (p: ProxyEndpoint): void => {
      parts = forwardHead(facts, { kind: 'proxy', proxy: p });
      options = { host: p.host, port: p.port, agent: this.proxyAgent };
      ctx.via = hostPort(p.host, p.port);
    };
    if (proxies.length > 0) {
      toProxy(proxies[0]!);
    } else {
      // Direct: the destination the client connected to (a no_proxy name was verified to be it).
      parts = forwardHead(facts, { kind: 'direct' });
      options = { host: ctx.destination.address, port, agent: this.directAgent };
      if (this.deps.directFromClient) options.localAddress = ctx.client.address;
      ctx.via = hostPort(ctx.destination.address, port);
    }
    const finishOptions = (): void => {
      // The fast path's head for the same request (outbound/request-head.ts says what Node writes differently).
      // An array of headers is written as given, names and order kept; setHost: false, or Node would add a Host.
      options.method = parts.method;
      options.path = parts.target;
      options.headers = parts.headers.flat();
      options.setHost = false;
    };
    finishOptions();
    res.sendDate = false;
    // This request's upstream, taken now: with pipelining the next request has changed ctx.via by the time this one's
    // response ends, and its log line (and timeout texts) named the other request's number and upstream.
    let via = ctx.via!;

    const logReq = (status: number | string): void => {
      if (this.deps.log.enabled('debug')) {
        this.deps.log.debug(
          `req id=${reqId} client=${field(hostPort(ctx.client.address, ctx.client.port))} method=${field(req.method)} url=${field(url)} route=${decision.kind} via=${field(via)} status=${status} ms=${Math.round(performance.now() - started)}`,
        );
      }
    };
    const fail = (err: unknown): void => {
      const gerr = err instanceof GatewayError ? err : this.classify(err, decision, ctx);
      ctx.result = gerr.code;
      ctx.error = gerr.message;
      this.deps.log.warn(`req id=${reqId} host=${field(name)} route=${decision.kind} error=${gerr.code} ${field(gerr.message)}`);
      logReq(gerr.code);
      if (!res.headersSent) {
        const body = `transgate: ${gerr.message}\n`;
        res.writeHead(errorStatus(gerr), {
          'Content-Type': 'text/plain; charset=utf-8',
          'Content-Length': Buffer.byteLength(body),
          'X-Transgate-Error': gerr.code,
          Connection: 'close',
        });
        res.end(body);
      } else {
        res.destroy();
      }
    };
    const guard = (what: () => void): void => {
      try {
        what();
      } catch (err) {
        this.internalError(req.socket, err);
      }
    };

    // A request without a body can be sent again when a kept-alive upstream
    // connection turns out to have been closed under it (the classic
    // keep-alive race); one with a body cannot, its bytes are gone.
    const replayable = !req.headers['content-length'] && !req.headers['transfer-encoding'] && /^(GET|HEAD|OPTIONS)$/.test(req.method ?? '');
    const send = (mayRetry: boolean): void => {
      const preq = http.request(options);
      let connected = false;
      const connectTimer = setTimeout(() => {
        preq.destroy(
          new GatewayError(
            decision.kind === 'proxy' ? ErrorCodes.UPSTREAM_TIMEOUT : ErrorCodes.DIRECT_TIMEOUT,
            `${decision.kind === 'proxy' ? 'proxy' : 'destination'} ${via} did not answer within ${this.deps.connectTimeoutMs} ms`,
          ),
        );
      }, this.deps.connectTimeoutMs);
      const asked = performance.now();
      preq.on('socket', (s: net.Socket) => {
        const onConnected = (): void => {
          connected = true;
          clearTimeout(connectTimer);
          if (proxies.length > 0) this.deps.outbounds.proxyUp(proxies[proxyIndex]!, Math.round(performance.now() - asked));
        };
        if (s.connecting) s.once('connect', onConnected);
        else onConnected();
      });
      preq.setTimeout(this.deps.idleTimeoutMs, () => {
        preq.destroy(new GatewayError(ErrorCodes.UPSTREAM_TIMEOUT, `no response from ${via} within ${this.deps.idleTimeoutMs} ms`));
      });
      let answered = false;
      preq.on('error', (err) =>
        guard(() => {
          clearTimeout(connectTimer);
          if (answered) {
            res.destroy();
            return;
          }
          const errno = errnoOf(err);
          if (mayRetry && connected && preq.reusedSocket && (errno === 'ECONNRESET' || errno === 'EPIPE')) {
            send(false);
            return;
          }
          if (!connected && proxies.length > 0) {
            // The proxy could not be reached: it is marked down, and a request whose bytes are all still here goes to the next.
            const p = proxies[proxyIndex]!;
            const down = err instanceof GatewayError ? err : this.classify(err, decision, ctx);
            this.deps.outbounds.proxyFailed(p, down.message);
            if (replayable && proxyIndex + 1 < proxies.length) {
              toProxy(proxies[++proxyIndex]!);
              finishOptions();
              via = ctx.via!;
              send(mayRetry);
              return;
            }
          }
          fail(err);
        }),
      );
      preq.on('response', (pres) =>
        guard(() => {
          answered = true;
          clearTimeout(connectTimer);
          // 407, or an error the proxy made itself: the gateway's page, in the words of the fast path (outbound/failures.ts).
          if (decision.kind === 'proxy' && (pres.statusCode === 407 || proxyOwnError(pres))) {
            pres.resume();
            fail(
              outcomeError(
                Outcomes.ANSWER_STATUS,
                '',
                {
                  proxy: proxies[proxyIndex],
                  via,
                  authority: via,
                  port: ctx.destination.port,
                  timeoutMs: this.deps.connectTimeoutMs,
                  request: { method: req.method ?? 'GET', uri: url },
                },
                { status: pres.statusCode, reason: pres.statusMessage, headers: pres.headers },
              )!,
            );
            return;
          }
          const status = pres.statusCode ?? 0;
          const from = decision.kind === 'proxy' ? `proxy ${proxies[proxyIndex]!.display}` : `destination ${via}`;
          if (status < 100 || status > 999) {
            pres.resume();
            fail(
              new GatewayError(
                decision.kind === 'proxy' ? ErrorCodes.UPSTREAM_PROTOCOL : ErrorCodes.DIRECT_UNREACHABLE,
                `${from} answered with status ${status}, which is not HTTP`,
              ),
            );
            return;
          }
          try {
            res.writeHead(status, safeReason(pres.statusMessage), endToEndHeaders(pres.rawHeaders, pres.headers.connection));
          } catch (err) {
            // Node refuses to write what it parsed (a header value it reads but will not send): the origin's fault, not ours.
            pres.resume();
            fail(
              new GatewayError(
                decision.kind === 'proxy' ? ErrorCodes.UPSTREAM_PROTOCOL : ErrorCodes.DIRECT_UNREACHABLE,
                `${from} sent a response head that cannot be passed on (${(err as Error).message})`,
              ),
            );
            return;
          }
          logReq(status);
          pres.pipe(res);
          pres.on('error', () => res.destroy());
        }),
      );
      res.on('close', () => {
        if (!res.writableFinished) preq.destroy();
      });
      if (replayable) preq.end();
      else req.pipe(preq);
    };
    req.on('error', () => res.destroy());
    send(replayable);
  }

  private classify(err: unknown, decision: RouteDecision, ctx: ConnContext): GatewayError {
    const errno = errnoOf(err) ?? (err instanceof Error ? err.message : String(err));
    if (decision.kind === 'proxy') {
      return new GatewayError(
        ErrorCodes.UPSTREAM_UNREACHABLE,
        `proxy ${decision.proxy?.display ?? ctx.via} unreachable (${errno}): check http_proxy and that the proxy is up`,
        { cause: err },
      );
    }
    return new GatewayError(
      ErrorCodes.DIRECT_UNREACHABLE,
      `destination ${hostPort(ctx.destination.address, ctx.destination.port)} unreachable (${errno})`,
      { cause: err },
    );
  }

  /**
   * Upgrade (WebSocket): proxies rarely pass Upgrade on in absolute-form
   * requests, so the connection becomes a CONNECT tunnel and the client's
   * request is replayed in it unchanged.
   */
  private async onUpgrade(req: http.IncomingMessage, sock: net.Socket, head: Buffer): Promise<void> {
    const st = this.states.get(sock);
    if (!st) {
      sock.destroy();
      return;
    }
    const { ctx } = st;
    ctx.requests++;
    const check = this.check(ctx, req);
    if (!check.ok) {
      this.answer(sock, ctx, check);
      return;
    }
    const { decision } = await this.route(ctx, check);
    if (sock.destroyed) return;
    let upstream: net.Socket;
    try {
      upstream = await this.deps.outbounds.open(decision, ctx);
    } catch (err) {
      const gerr = err instanceof GatewayError ? err : this.classify(err, decision, ctx);
      ctx.result = gerr.code;
      ctx.error = gerr.message;
      answerAndClose(sock, gatewayResponse(errorStatus(gerr), gerr.code, gerr.message));
      return;
    }
    if (sock.destroyed) {
      upstream.destroy();
      return;
    }
    // Replayed in origin form: the tunnel already goes to the Host's authority.
    upstream.write(
      serialize(upgradeHead(this.forwardRequest(req, check.target?.host ?? ctx.destination.address, ctx.destination.port, check))),
    );
    if (head.length > 0) upstream.write(head);
    st.upgraded = true;
    const before = { up: sock.bytesRead, down: sock.bytesWritten };
    const r = await this.deps.relay.run(sock, upstream, { idleTimeoutMs: this.deps.idleTimeoutMs });
    // The relay may move bytes outside Node's counters (splice): add what it reports.
    ctx.bytesUp = before.up + r.up;
    ctx.bytesDown = before.down + r.down;
    if (r.outcome !== 'ok' && ctx.result === 'ok') ctx.result = r.outcome;
    st.onDone(ctx);
  }
}

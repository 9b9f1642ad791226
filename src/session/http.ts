import http from 'node:http';
import type net from 'node:net';
import type { ConnContext } from '../core/context';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { field, type Logger } from '../core/log';
import { hostPort } from '../core/types';
import type { Outbounds } from '../outbound/outbounds';
import type { Relay } from '../relay/relay';
import type { RouteDecision, Router } from '../route/router';
import { parseHostHeader } from '../sniff/http';
import { markedConnector } from '../outbound/dial';

export interface HttpDeps {
  router: Router;
  outbounds: Outbounds;
  relay: Relay;
  log: Logger;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** SO_MARK for upstream sockets (--local), so this host's interception skips them. */
  socketMark?: number;
}

/** Hop-by-hop headers (RFC 9110 7.6.1) and proxy headers a transparent client never meant for the proxy. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

/** Copies raw headers minus hop-by-hop ones and those the Connection header names. */
export function endToEndHeaders(raw: readonly string[], connection: string | string[] | undefined): string[] {
  const named = new Set<string>();
  for (const v of Array.isArray(connection) ? connection : connection ? [connection] : []) {
    for (const t of v.split(',')) named.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(k) || named.has(k)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** The absolute-form URI a proxy expects: `http://name[:port]/path`. */
export function absoluteUri(name: string, port: number, target: string): string {
  if (/^https?:\/\//i.test(target)) return target;
  const authority = port === 80 ? (name.includes(':') ? `[${name}]` : name) : hostPort(name, port);
  return `http://${authority}${target.startsWith('/') ? target : `/${target}`}`;
}

/** What an HTTP client sees when the gateway cannot carry its request. */
export function errorStatus(err: unknown): number {
  if (err instanceof GatewayError) {
    if (err.code === ErrorCodes.UPSTREAM_TIMEOUT || err.code === ErrorCodes.DIRECT_TIMEOUT) return 504;
  }
  return 502;
}

/**
 * A 5xx that the proxy made itself (it could not resolve or reach the
 * origin) rather than one it relayed from the origin. Proxies mark their own
 * errors: Proxy-Status (RFC 9209), squid's X-Squid-Error.
 */
export function proxyOwnError(res: { statusCode?: number; headers: http.IncomingHttpHeaders }): string | undefined {
  if ((res.statusCode ?? 0) < 500) return undefined;
  const ps = res.headers['proxy-status'];
  if (typeof ps === 'string' && /error=/.test(ps)) return `(Proxy-Status: ${ps})`;
  const squid = res.headers['x-squid-error'];
  if (typeof squid === 'string') {
    const what = /^ERR_DNS_FAIL/.test(squid) ? 'name not found by the proxy' : /^ERR_CONNECT_FAIL/.test(squid) ? 'origin unreachable from the proxy' : /^ERR_READ_TIMEOUT|^ERR_CONNECT_TIMEOUT/.test(squid) ? 'origin timed out at the proxy' : 'proxy error';
    return `${what} (${squid})`;
  }
  return undefined;
}

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
    this.server = http.createServer({ requireHostHeader: false, joinDuplicateHeaders: false });
    this.server.keepAliveTimeout = 60_000;
    this.server.headersTimeout = 60_000;
    this.server.requestTimeout = 0;
    this.server.on('request', (req, res) => this.onRequest(req, res));
    this.server.on('upgrade', (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => {
      void this.onUpgrade(req, sock, head);
    });
    this.server.on('connect', (_req: http.IncomingMessage, sock: net.Socket) => {
      sock.end('HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    this.server.on('clientError', (err: Error & { code?: string }, sock: net.Socket) => {
      const st = this.states.get(sock);
      if (st && st.ctx.result === 'ok') st.ctx.result = 'bad-request';
      if (sock.writable && err.code !== 'ECONNRESET') {
        sock.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 41\r\n\r\ntransgate: malformed HTTP request head.\r\n');
      } else {
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

  private route(ctx: ConnContext, req: http.IncomingMessage): { name: string; decision: RouteDecision } {
    const host = typeof req.headers.host === 'string' ? parseHostHeader(req.headers.host, ctx.destination.port) : undefined;
    const name = host?.host ?? ctx.destination.address;
    ctx.name = host?.host ?? ctx.name;
    const decision = this.deps.router.select({ kind: 'http', name: host?.host, address: ctx.destination.address, port: ctx.destination.port });
    ctx.route = decision.kind;
    return { name, decision };
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const st = this.states.get(req.socket);
    if (!st) {
      res.destroy();
      return;
    }
    const { ctx } = st;
    ctx.requests++;
    const started = performance.now();
    const { name, decision } = this.route(ctx, req);
    const port = ctx.destination.port;
    const headers = endToEndHeaders(req.rawHeaders, req.headers.connection);
    let options: http.RequestOptions;
    if (decision.kind === 'proxy' && decision.proxy) {
      const p = decision.proxy;
      if (p.authorization) headers.push('Proxy-Authorization', p.authorization);
      options = { host: p.host, port: p.port, path: absoluteUri(name, port, req.url ?? '/'), agent: this.proxyAgent };
      ctx.via = hostPort(p.host, p.port);
    } else {
      const target = req.url && /^https?:\/\//i.test(req.url) ? new URL(req.url).pathname + new URL(req.url).search : (req.url ?? '/');
      options = { host: ctx.destination.address, port, path: target, agent: this.directAgent };
      ctx.via = hostPort(ctx.destination.address, port);
    }
    options.method = req.method;
    options.headers = headers as unknown as http.OutgoingHttpHeaders;
    options.setHost = false;
    res.sendDate = false;

    const logReq = (status: number | string): void => {
      if (this.deps.log.enabled('debug')) {
        this.deps.log.debug(`req id=${ctx.id}.${ctx.requests} client=${field(hostPort(ctx.client.address, ctx.client.port))} method=${field(req.method)} url=${field(absoluteUri(name, port, req.url ?? '/'))} route=${decision.kind} via=${field(ctx.via)} status=${status} ms=${Math.round(performance.now() - started)}`);
      }
    };
    const fail = (err: unknown): void => {
      const gerr = err instanceof GatewayError ? err : this.classify(err, decision, ctx);
      ctx.result = gerr.code;
      ctx.error = gerr.message;
      this.deps.log.warn(`req id=${ctx.id}.${ctx.requests} host=${field(name)} route=${decision.kind} error=${gerr.code} ${field(gerr.message)}`);
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

    // A request without a body can be sent again when a kept-alive upstream
    // connection turns out to have been closed under it (the classic
    // keep-alive race); one with a body cannot, its bytes are gone.
    const replayable = !req.headers['content-length'] && !req.headers['transfer-encoding'] && /^(GET|HEAD|OPTIONS)$/.test(req.method ?? '');
    const send = (mayRetry: boolean): void => {
      const preq = http.request(options);
      let connected = false;
      const connectTimer = setTimeout(() => {
        preq.destroy(new GatewayError(
          decision.kind === 'proxy' ? ErrorCodes.UPSTREAM_TIMEOUT : ErrorCodes.DIRECT_TIMEOUT,
          `${decision.kind === 'proxy' ? 'proxy' : 'destination'} ${ctx.via} did not answer within ${this.deps.connectTimeoutMs} ms`,
        ));
      }, this.deps.connectTimeoutMs);
      preq.on('socket', (s: net.Socket) => {
        const onConnected = (): void => {
          connected = true;
          clearTimeout(connectTimer);
        };
        if (s.connecting) s.once('connect', onConnected);
        else onConnected();
      });
      preq.setTimeout(this.deps.idleTimeoutMs, () => {
        preq.destroy(new GatewayError(ErrorCodes.UPSTREAM_TIMEOUT, `no response from ${ctx.via} within ${this.deps.idleTimeoutMs} ms`));
      });
      let answered = false;
      preq.on('error', (err) => {
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
        fail(err);
      });
      preq.on('response', (pres) => {
        answered = true;
        clearTimeout(connectTimer);
        if (decision.kind === 'proxy' && pres.statusCode === 407) {
          pres.resume();
          const p = decision.proxy!;
          fail(new GatewayError(
            ErrorCodes.UPSTREAM_407,
            p.authorization
              ? `proxy ${p.display} rejected the credentials in http_proxy (407): check user and password`
              : `proxy ${p.display} requires authentication (407): put user:password in http_proxy`,
            { status: 407 },
          ));
          return;
        }
        const proxyError = decision.kind === 'proxy' ? proxyOwnError(pres) : undefined;
        if (proxyError) {
          pres.resume();
          fail(new GatewayError(
            pres.statusCode === 504 ? ErrorCodes.UPSTREAM_TIMEOUT : ErrorCodes.UPSTREAM_STATUS,
            `proxy ${decision.proxy!.display} could not fetch ${absoluteUri(name, port, req.url ?? '/')}: ${pres.statusCode} ${proxyError}`,
            { status: pres.statusCode },
          ));
          return;
        }
        logReq(pres.statusCode ?? 0);
        res.writeHead(pres.statusCode ?? 502, pres.statusMessage, endToEndHeaders(pres.rawHeaders, pres.headers.connection));
        pres.pipe(res);
        pres.on('error', () => res.destroy());
      });
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
      return new GatewayError(ErrorCodes.UPSTREAM_UNREACHABLE, `proxy ${decision.proxy?.display ?? ctx.via} unreachable (${errno}): check http_proxy and that the proxy is up`, { cause: err });
    }
    return new GatewayError(ErrorCodes.DIRECT_UNREACHABLE, `destination ${ctx.via} unreachable (${errno})`, { cause: err });
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
    const { decision } = this.route(ctx, req);
    let upstream: net.Socket;
    try {
      upstream = await this.deps.outbounds.open(decision, ctx);
    } catch (err) {
      const gerr = err instanceof GatewayError ? err : this.classify(err, decision, ctx);
      ctx.result = gerr.code;
      ctx.error = gerr.message;
      const body = `transgate: ${gerr.message}\n`;
      sock.end(`HTTP/1.1 ${errorStatus(gerr)} Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    let reqHead = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) reqHead += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    reqHead += '\r\n';
    upstream.write(reqHead);
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

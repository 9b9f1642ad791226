import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import type { ConnContext } from '../core/context';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { field } from '../core/log';
import { hostPort } from '../core/types';
import { Outcomes } from '../native';
import { outcomeError, responseFields, type FailureSite } from '../outbound/failures';
import type { Outbounds } from '../outbound/outbounds';
import type { Decision } from '../pipeline/decide';
import { openFor } from './relay';
import { answerAndClose, errorStatus, gatewayResponse } from './http-session';

/**
 * The framed executor of a plain HTTP decision on Node's sockets (--relay
 * js): what native/splice.c's framed relay does, with the same rules, so
 * that both relays carry port 80 alike. The client's bytes go through the
 * decision's RequestFramer at each request boundary (heads rebuilt, bodies
 * passed verbatim within the framer's budget); responses come back
 * unparsed. The first response's head is looked at before the client sees
 * a byte of it: a 407 or an error the proxy made itself gets the gateway's
 * own answer, as on the Node HTTP session. A later request the fast path
 * does not carry goes to the Node HTTP session with the bytes after the
 * last forwarded request, once upstream is quiet.
 */

export type HttpDecision = Extract<Decision, { kind: 'http' }>;

export interface FramedDeps {
  outbounds: Pick<Outbounds, 'openPlain'>;
  idleTimeoutMs: number;
  /** A request head after the first must come whole within this (the Node path's headersTimeout); 0 or absent: no limit. */
  headTimeoutMs?: number;
  /** The Node HTTP session takes the connection from `rest` on, and logs it at its end. */
  http: (sock: net.Socket, ctx: ConnContext, rest: Buffer) => void;
  /** The connection's one log line (not called for a handed-over one). */
  onDone: (ctx: ConnContext) => void;
  /** The Node path's warning for a request that failed. */
  warn?: (message: string) => void;
  /** One line per request forwarded, when debug logging is on. */
  debug?: (message: string) => void;
}

/** The most client bytes held at a boundary: a whole request head and what came with it (splice.c's FRAME_MAX). */
const FRAME_MAX = 80 * 1024;
/** How much of the first response is held back to read its head (splice.c peeks one segment of this size). */
const PEEK_MAX = 4096;
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const EMPTY = Buffer.alloc(0);
/** How long upstream must send nothing before a hand-over lets it go (a proxy's pause between head and body is shorter): native/splice.c's HANDOVER_GRACE_MS. */
const QUIET_MS = 250;

export async function runFramed(sock: net.Socket, ctx: ConnContext, head: Buffer, d: HttpDecision, deps: FramedDeps): Promise<void> {
  let proxy = d.route.kind === 'proxy' ? d.route.proxy : undefined;
  ctx.via = proxy ? hostPort(proxy.host, proxy.port) : hostPort(ctx.destination.address, ctx.destination.port);
  if (d.request) logRequest(ctx, d.request, deps);
  let out = d.out;
  const onTry = (p: ProxyEndpoint): void => {
    // A failover: the first request's head is rebuilt for the proxy that will get it (its credentials).
    if (p !== proxy) out = d.framer.reroute(p);
    proxy = p;
  };
  const opened = await openFor(sock, ctx, deps.onDone, (signal) =>
    deps.outbounds.openPlain(d.route.kind === 'proxy' ? { kind: 'proxy', proxies: d.route.proxies } : d.route, ctx, signal, onTry),
  );
  if (opened === undefined) return;
  if ('error' in opened) {
    const err = opened.error;
    const gerr = err instanceof GatewayError ? err : new GatewayError(ErrorCodes.INTERNAL, String(err), { cause: err });
    failed(ctx, gerr, deps);
    // The request got no response: the gateway's own answer says why (502, 504), as the native path gives.
    sock.once('close', () => deps.onDone(ctx));
    answerAndClose(sock, gatewayResponse(errorStatus(gerr), gerr.code, gerr.message));
    return;
  }
  return new FramedRelay(sock, opened.upstream, ctx, { ...d, out }, proxy, deps).run(head);
}

/** Framed connections under way: close() ends them and waits until each has logged its end. */
const running = new Map<FramedRelay, Promise<void>>();

/**
 * Ends every framed connection (gateway shutdown; each is logged), resolving
 * once all are: the upstream's close came a loop turn after the client's, and
 * its log line after close() had resolved.
 */
export async function closeFramed(): Promise<void> {
  const all = [...running.values()];
  for (const r of running.keys()) r.destroy();
  await Promise.all(all);
}

/** A request that got the gateway's answer instead of a response: the result, and the Node path's warning. */
function failed(ctx: ConnContext, err: GatewayError, deps: FramedDeps): void {
  ctx.result = err.code;
  ctx.error = err.message;
  deps.warn?.(
    `req id=${ctx.id}.${ctx.requests} host=${field(ctx.name ?? ctx.destination.address)} route=${ctx.route ?? '-'} error=${err.code} ${field(err.message)}`,
  );
}

/** The Node path's debug line for a request, less what the fast path does not read (the response status). */
function logRequest(ctx: ConnContext, request: { method: string; uri: string }, deps: FramedDeps): void {
  deps.debug?.(
    `req id=${ctx.id}.${ctx.requests} client=${field(hostPort(ctx.client.address, ctx.client.port))} method=${field(request.method)} ` +
      `url=${field(request.uri)} route=${ctx.route ?? '-'} via=${field(ctx.via)} status=-`,
  );
}

class FramedRelay {
  /** Client bytes at a boundary, not yet passed on. */
  private pending: Buffer = EMPTY;
  /** Client bytes that pass verbatim before the next boundary. */
  private budget: number;
  /** A request head went upstream and no byte of its answer has come back: the next head waits (splice.c's awaiting). */
  private awaiting = false;
  private downMark = 0;
  /** Bytes of upstream's answers written to the client. */
  private down = 0;
  /** The first response, held until its head can be looked at; undefined once it was. */
  private peek: Buffer | undefined = EMPTY;
  private clientEof = false;
  private upstreamEof = false;
  /** The client's bytes may not be read now: upstream is full, or a boundary waits for an answer. */
  private clientHeld = false;
  /** Upstream is paused because the client does not read. */
  private upstreamHeld = false;
  private handingOver = false;
  /** When upstream last sent bytes: the hand-over waits until it has been quiet for a while. */
  private lastUpstreamRead = 0;
  private quietTimer: NodeJS.Timeout | undefined;
  private outcome = 'ok';
  private lastActive = Date.now();
  private idleTimer: NodeJS.Timeout | undefined;
  /** A partial head (or chunk line) came: it must be whole within deps.headTimeoutMs (splice.c's head_ms). */
  private headTimer: NodeJS.Timeout | undefined;
  private finished = false;
  private upBase: number;
  private resolve!: () => void;

  constructor(
    private readonly sock: net.Socket,
    private readonly upstream: net.Socket,
    private readonly ctx: ConnContext,
    private readonly d: HttpDecision,
    private readonly proxy: ProxyEndpoint | undefined,
    private readonly deps: FramedDeps,
  ) {
    this.budget = d.budget;
    this.upBase = upstream.bytesWritten;
    // Only the proxy's answers are looked at (as on the Node path): a direct one passes at once.
    if (!proxy) this.peek = undefined;
    // The first bytes were read to their end (sniffing): 'end' has been emitted already.
    this.clientEof = sock.readableEnded;
  }

  run(head: Buffer): Promise<void> {
    const { sock, upstream, d } = this;
    const done = new Promise<void>((resolve) => (this.resolve = resolve)).finally(() => running.delete(this));
    running.set(this, done);
    sock.on('data', this.onClientData);
    sock.on('end', this.onClientEnd);
    sock.on('error', this.onClientError);
    sock.on('close', this.onClose);
    sock.on('drain', this.onClientDrain);
    upstream.on('data', this.onUpstreamData);
    upstream.on('end', this.onUpstreamEnd);
    upstream.on('error', this.onUpstreamError);
    upstream.on('close', this.onClose);
    upstream.on('drain', this.onUpstreamDrain);
    if (this.deps.idleTimeoutMs > 0) this.idleTimer = setTimeout(this.onIdle, this.deps.idleTimeoutMs);
    this.guard(() => {
      if (d.request) this.awaitAnswer();
      this.writeUp(Buffer.from(d.out, 'latin1'));
      this.pending = head.subarray(d.consumed);
      this.pump();
      if (!this.clientHeld) sock.resume();
      upstream.resume();
    });
    return done;
  }

  /** Handlers catch: a bug ends only this connection, logged with TG_ERR_INTERNAL. */
  private guard(what: () => void): void {
    try {
      what();
    } catch (err) {
      this.ctx.result = ErrorCodes.INTERNAL;
      this.ctx.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
      this.sock.destroy();
      this.upstream.destroy();
    }
  }

  private readonly onClientData = (chunk: Buffer): void =>
    this.guard(() => {
      this.lastActive = Date.now();
      this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
      this.pump();
    });

  private readonly onClientEnd = (): void =>
    this.guard(() => {
      this.clientEof = true;
      this.pump();
    });

  private readonly onUpstreamDrain = (): void =>
    this.guard(() => {
      this.pump();
    });

  private readonly onClientDrain = (): void => {
    if (!this.upstreamHeld) return;
    this.upstreamHeld = false;
    this.upstream.resume();
    if (this.handingOver) this.handOverWhenQuiet();
  };

  /** Writes to upstream; false when it is full (the client is then not read until 'drain'). */
  private writeUp(bytes: Buffer): boolean {
    if (bytes.length === 0) return true;
    this.lastActive = Date.now();
    return this.upstream.write(bytes);
  }

  private awaitAnswer(): void {
    this.awaiting = true;
    this.downMark = this.down;
  }

  private answerBegun(): boolean {
    return this.down > this.downMark;
  }

  /**
   * The client direction: the verbatim budget first, then the framer at a
   * boundary, as long as upstream takes the bytes. Reading the client stops
   * (pause) whenever upstream is full or a boundary must wait, so that no
   * more than a read's worth is held beyond a request head.
   */
  private pump(): void {
    if (this.finished || this.handingOver) return;
    // Upstream is gone after its answer (a proxy closes once it answered early): what the client still sends is dropped.
    if (this.upstream.destroyed) {
      this.pending = EMPTY;
      return;
    }
    let hold = false;
    for (;;) {
      if (this.upstream.writableNeedDrain) {
        hold = true;
        break;
      }
      if (this.budget > 0) {
        if (this.pending.length === 0) break;
        const n = Math.min(this.budget, this.pending.length);
        const part = this.pending.subarray(0, n);
        this.pending = this.pending.subarray(n);
        this.budget -= n;
        this.writeUp(part);
        continue;
      }
      // A boundary. The next request head waits until the answer to the last has begun: a pipelining client then
      // has at most one answer under way, which a hand-over (it waits for upstream to go quiet) never cuts off.
      if (this.d.framer.atHead && this.awaiting && !this.answerBegun()) {
        hold = true;
        break;
      }
      if (this.pending.length === 0) break;
      const step = this.d.framer.next(this.pending, this.clientEof);
      if (step.kind === 'need-more') {
        if (this.clientEof) {
          // The client finished sending inside a head or a chunk line: nothing of it can go on.
          this.pending = EMPTY;
          break;
        }
        if (this.pending.length >= FRAME_MAX) throw new Error(`the framer asked for more than ${FRAME_MAX} bytes at a boundary`);
        if (!this.headTimer && this.deps.headTimeoutMs) this.headTimer = setTimeout(this.onHeadTimeout, this.deps.headTimeoutMs);
        break;
      }
      if (this.headTimer) clearTimeout(this.headTimer);
      this.headTimer = undefined;
      if (step.kind !== 'forward') {
        // Another route, an Upgrade, a refusal: the Node HTTP session carries (or refuses) it once upstream is quiet.
        this.handingOver = true;
        this.holdClient(true);
        this.handOverWhenQuiet();
        return;
      }
      if (step.consumed === 0 && step.out.length === 0 && step.budget === 0) throw new Error('a framer step that makes no progress');
      this.pending = this.pending.subarray(step.consumed);
      this.budget = step.budget;
      if (step.request) {
        this.ctx.requests = this.d.framer.requests;
        logRequest(this.ctx, step.request, this.deps);
        this.awaitAnswer();
      }
      this.writeUp(Buffer.from(step.out, 'latin1'));
    }
    this.holdClient(hold);
    // The client is done: after the last of its bytes, upstream is half-closed (a body cut short included).
    if (this.clientEof && this.pending.length === 0 && !this.upstream.writableEnded) this.upstream.end();
  }

  private holdClient(hold: boolean): void {
    if (hold === this.clientHeld) return;
    this.clientHeld = hold;
    if (hold) this.sock.pause();
    else this.sock.resume();
  }

  private readonly onUpstreamData = (chunk: Buffer): void =>
    this.guard(() => {
      this.lastActive = Date.now();
      this.lastUpstreamRead = Date.now();
      if (this.peek !== undefined) {
        this.peek = this.peek.length === 0 ? chunk : Buffer.concat([this.peek, chunk]);
        if (!this.lookAtFirst(false)) return;
        chunk = this.peek;
        this.peek = undefined;
      }
      this.toClient(chunk);
    });

  private toClient(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.down += chunk.length;
    if (!this.sock.write(chunk) && !this.upstreamHeld) {
      this.upstreamHeld = true;
      this.upstream.pause();
    }
    // An answer began: the client's next request (perhaps read already) may be looked at now.
    if (this.awaiting && this.answerBegun()) {
      this.awaiting = false;
      this.pump();
    }
  }

  /**
   * The first response's head, before its first byte reaches the client
   * (splice.c's peek_status). From the proxy, a 407 means it wants
   * credentials the gateway does not have, and a 5xx it made itself
   * (X-Squid-Error, Proxy-Status) means it could not fetch: the client gets
   * the gateway's own answer saying what to do or what failed, as on the
   * Node path. True: the held bytes pass on; false: wait for more, or the
   * relay stopped.
   */
  private lookAtFirst(eof: boolean): boolean {
    const buf = this.peek!;
    const end = buf.indexOf(HEAD_END);
    if (end < 0 && buf.length < PEEK_MAX && !eof) return false;
    if (!this.proxy) return true;
    const text = buf.toString('latin1', 0, end < 0 ? Math.min(buf.length, PEEK_MAX) : end + 4);
    const m = /^HTTP\/\d\.\d (\d{3}) /.exec(text);
    if (!m) return true;
    const status = Number(m[1]);
    const err = this.proxyAnswer(status, end < 0 ? undefined : text);
    if (!err) return true;
    this.peek = undefined;
    this.answerInstead(err);
    return false;
  }

  /** The gateway's own answer instead of the first response, as native/splice.c peek_status stops for: 407, or the proxy's own 5xx. */
  private proxyAnswer(status: number, head: string | undefined): GatewayError | undefined {
    const fields = head === undefined ? {} : responseFields(head);
    if (status !== 407 && (status < 500 || (fields['x-squid-error'] === undefined && fields['proxy-status'] === undefined)))
      return undefined;
    return outcomeError(Outcomes.ANSWER_STATUS, '', this.site(), { status, headers: fields });
  }

  /** What the outcome table names (outbound/failures.ts). */
  private site(): FailureSite {
    const authority = hostPort(this.ctx.name ?? this.ctx.destination.address, this.ctx.destination.port);
    return {
      proxy: this.proxy,
      via: this.ctx.via ?? authority,
      authority,
      port: this.ctx.destination.port,
      timeoutMs: 0, // named by none of the outcomes met here
      request: this.d.framer.first ?? { method: 'GET', uri: authority },
    };
  }

  private readonly onUpstreamEnd = (): void =>
    this.guard(() => {
      this.upstreamEof = true;
      if (this.peek !== undefined) {
        if (this.peek.length > 0 && !this.lookAtFirst(true)) return;
        const held = this.peek;
        this.peek = undefined;
        this.toClient(held);
      }
      if (this.handingOver) this.handOverWhenQuiet();
      else if (!this.sock.writableEnded) this.sock.end();
    });

  /**
   * Upstream is quiet when nothing it sent is waiting in this process and
   * it sent nothing for QUIET_MS, as in splice.c: a proxy writes a
   * response's head and its body apart (squid does), and a hand-over
   * between the two lost the body. A client that sends its next
   * request after reading the last response waits QUIET_MS once, at the
   * hand-over.
   */
  private handOverWhenQuiet(): void {
    if (this.finished || this.quietTimer) return;
    const since = Date.now() - this.lastUpstreamRead;
    const quiet =
      this.peek === undefined && (this.upstreamEof || (!this.upstreamHeld && this.upstream.readableLength === 0 && since >= QUIET_MS));
    if (quiet) this.handOver();
    // Not yet: looked at again after the rest of the quiet time (or, while the client is full, at its next drain).
    else if (!this.upstreamHeld) {
      this.quietTimer = setTimeout(
        () => {
          this.quietTimer = undefined;
          this.handOverWhenQuiet();
        },
        Math.max(1, QUIET_MS - since),
      );
    }
  }

  private handOver(): void {
    const { sock, upstream, ctx } = this;
    this.finished = true;
    this.detach();
    ctx.bytesUp = upstream.bytesWritten - this.upBase;
    ctx.bytesDown = this.down;
    upstream.destroy();
    sock.pause();
    sock.setTimeout(0);
    this.deps.http(sock, ctx, this.pending);
    this.resolve();
  }

  private detach(): void {
    const { sock, upstream } = this;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.headTimer) clearTimeout(this.headTimer);
    if (this.quietTimer) clearTimeout(this.quietTimer);
    sock.off('data', this.onClientData);
    sock.off('end', this.onClientEnd);
    sock.off('error', this.onClientError);
    sock.off('close', this.onClose);
    sock.off('drain', this.onClientDrain);
    upstream.off('data', this.onUpstreamData);
    upstream.off('end', this.onUpstreamEnd);
    upstream.off('error', this.onUpstreamError);
    upstream.off('close', this.onClose);
    upstream.off('drain', this.onUpstreamDrain);
    // A late error on a socket let go of is no one's to handle.
    upstream.on('error', noop);
  }

  /** The relay stopped for the first response: the gateway's own answer instead (upstream is reset, its answer unread). */
  private answerInstead(err: GatewayError): void {
    const { sock, upstream, ctx } = this;
    this.finished = true;
    this.detach();
    failed(ctx, err, this.deps);
    ctx.bytesUp = upstream.bytesWritten - this.upBase;
    ctx.bytesDown = this.down;
    upstream.resetAndDestroy();
    sock.on('error', noop);
    sock.once('close', () => {
      this.deps.onDone(ctx);
      this.resolve();
    });
    sock.resume(); // what the client still sends is read and dropped until the answer is out
    answerAndClose(sock, gatewayResponse(errorStatus(err), err.code, err.message));
  }

  private readonly onClientError = (err: Error): void => {
    if (this.outcome === 'ok') this.outcome = `client ${errnoOf(err) ?? err.message}`;
    // A reset is passed on as a reset, so that the peer sees the failure instead of a clean end.
    if (!this.upstream.destroyed) this.upstream.resetAndDestroy();
  };

  private readonly onUpstreamError = (err: Error): void => {
    // After upstream ended its answer, a write error (the client still sending a body the origin did not wait for)
    // must not reset the client before it has read that answer.
    if (this.upstreamEof) return;
    if (this.outcome === 'ok') this.outcome = `upstream ${errnoOf(err) ?? err.message}`;
    if (!this.sock.destroyed) this.sock.resetAndDestroy();
  };

  /** Slowloris on a kept-alive connection: the Node path's 408, once no answer is flowing (as in splice.c). */
  private readonly onHeadTimeout = (): void =>
    this.guard(() => {
      const since = Date.now() - this.lastUpstreamRead;
      if (since < QUIET_MS || this.upstream.readableLength > 0) {
        this.headTimer = setTimeout(this.onHeadTimeout, QUIET_MS);
        return;
      }
      this.answerInstead(outcomeError(Outcomes.HEAD_TIMEOUT, '', this.site())!);
    });

  private readonly onIdle = (): void => {
    const idle = Date.now() - this.lastActive;
    if (idle < this.deps.idleTimeoutMs) {
      this.idleTimer = setTimeout(this.onIdle, this.deps.idleTimeoutMs - idle);
      return;
    }
    if (this.outcome === 'ok') this.outcome = 'idle-timeout';
    this.sock.destroy();
    this.upstream.destroy();
  };

  destroy(): void {
    this.sock.destroy();
    this.upstream.destroy();
  }

  private readonly onClose = (): void => {
    const { sock, upstream, ctx } = this;
    // One side is gone for good: the other cannot carry anything useful any more.
    if (!sock.destroyed && upstream.destroyed && this.upstreamEof) {
      // Upstream answered and left: the client gets the rest of the answer, then the connection ends.
      if (sock.writableFinished) sock.destroy();
      else sock.once('finish', () => sock.destroy());
      return;
    }
    if (!sock.destroyed || !upstream.destroyed) {
      (sock.destroyed ? upstream : sock).destroy();
      return;
    }
    if (this.finished) return;
    this.finished = true;
    this.detach();
    sock.on('error', noop);
    ctx.bytesUp = upstream.bytesWritten - this.upBase;
    ctx.bytesDown = this.down;
    if (this.outcome !== 'ok' && ctx.result === 'ok') ctx.result = this.outcome;
    this.deps.onDone(ctx);
    this.resolve();
  };
}

function noop(): void {}

import type net from 'node:net';
import type { ConnContext } from '../core/context';
import { GatewayError, errnoOf } from '../core/errors';
import type { Outbounds } from '../outbound/outbounds';
import { decide, type DecideDeps, type Decision, type FirstBytes } from '../pipeline/decide';
import { runFramed } from './http-framed';
import { openFor, type Relay, type RelayResult } from './relay';
import type { HostVerifier } from '../route/host-verify';
import { HTTP_SNIFF_MAX_BYTES, sniffHttp } from '../sniff/http';
import { TLS_SNIFF_MAX_BYTES, sniffTls } from '../sniff/tls';
import { readFirstBytes } from './first-bytes';
import { answerAndClose, gatewayResponse } from './http-session';

export interface StreamDeps extends DecideDeps {
  outbounds: Outbounds;
  relay: Relay;
  idleTimeoutMs: number;
  /** Plain HTTP on the framed path: a later request head's deadline (the Node path's headersTimeout). */
  headTimeoutMs?: number;
  verifier: HostVerifier;
  /** Plain HTTP for the Node HTTP session, with the bytes read so far. */
  http: (sock: net.Socket, ctx: ConnContext, head: Buffer) => void;
  onDone: (ctx: ConnContext) => void;
  /** The Node path's warning for a plain HTTP request that failed (framed path). */
  warn?: (message: string) => void;
  /** One line per request forwarded on the framed path, when debug logging is on. */
  debug?: (message: string) => void;
}

const EMPTY = Buffer.alloc(0);

/**
 * The Node executor of the pipeline (pipeline/decide.ts): every kind of
 * connection on Node's sockets, for --relay js, for a build without the
 * addon, and for the connections the addon hands over (a name to verify, a
 * proxy name being looked up). It reads the first bytes, decides, and
 * carries the decision out: a refusal, the Node HTTP session, or a tunnel
 * (outbound/ opens it, relay/ moves the bytes). The client's bytes are
 * never altered on a tunnel.
 *
 * `sniffed`: the first bytes were read before this socket existed (the addon).
 */
export async function runNode(sock: net.Socket, ctx: ConnContext, deps: StreamDeps, sniffed?: Buffer): Promise<void> {
  // Plain HTTP in frames with --relay js (relay/http-framed.ts). With the splice relay, the HTTP connections that come
  // here are the addon's hand-overs (a name to verify), which the Node HTTP session carries as before.
  const framed = deps.relay.name === 'js';
  let first: FirstBytes = { head: sniffed ?? EMPTY, final: true, eof: false, framed };
  if (sniffed === undefined && ctx.kind !== 'tcp') {
    const read =
      ctx.kind === 'tls'
        ? await readFirstBytes(sock, sniffTls, TLS_SNIFF_MAX_BYTES, deps.sniffTimeoutMs)
        : await readFirstBytes(sock, sniffHttp, HTTP_SNIFF_MAX_BYTES, deps.sniffTimeoutMs);
    first = { head: read.head, final: true, eof: read.outcome === 'closed', framed };
  }
  let d = decide(ctx, first, deps);
  if (d.kind === 'verify') {
    // The one lookup decide() cannot make: the name against the destination, then the same decision with its answer.
    const verified = await deps.verifier.verify(ctx.client.address, d.name, ctx.destination.address);
    d = decide(ctx, first, { ...deps, verifier: { check: () => verified } });
  }
  return execute(sock, ctx, first.head, d, deps);
}

async function execute(sock: net.Socket, ctx: ConnContext, head: Buffer, d: Decision, deps: StreamDeps): Promise<void> {
  switch (d.kind) {
    case 'read-more': // not with final bytes
    case 'verify': // answered above
    case 'close':
      sock.destroy();
      deps.onDone(ctx);
      return;
    case 'refuse':
      ctx.refuse(d.code, d.why);
      if (d.status !== undefined) {
        ctx.bytesUp = head.length;
        sock.once('close', () => deps.onDone(ctx));
        answerAndClose(sock, gatewayResponse(d.status, d.code, d.why));
        return;
      }
      // Not a hang: a reset tells the client at once.
      if (!sock.destroyed) sock.resetAndDestroy();
      deps.onDone(ctx);
      return;
    case 'http':
      return runFramed(sock, ctx, head, d, deps);
    case 'http-session':
      deps.http(sock, ctx, head);
      return;
    case 'tunnel':
      return tunnel(sock, ctx, head, d, deps);
  }
}

async function tunnel(
  sock: net.Socket,
  ctx: ConnContext,
  head: Buffer,
  d: Extract<Decision, { kind: 'tunnel' }>,
  deps: StreamDeps,
): Promise<void> {
  const opened = await openFor(sock, ctx, deps.onDone, (signal) => deps.outbounds.open(d.route, ctx, signal));
  if (opened === undefined) return;
  if ('error' in opened) {
    const err = opened.error;
    ctx.result = err instanceof GatewayError ? err.code : (errnoOf(err) ?? 'error');
    ctx.error = err instanceof Error ? err.message : String(err);
    // Not a hang: a reset tells the client at once that its destination failed.
    sock.resetAndDestroy();
    deps.onDone(ctx);
    return;
  }
  const { upstream } = opened;
  if (head.length > 0) upstream.write(head);
  // Returned, not awaited: this frame (both sockets, the head, the abort
  // controller) ends here instead of living as long as the connection; an
  // idle spliced connection then keeps only its context in memory.
  return finishRelay(deps.relay.run(sock, upstream, { idleTimeoutMs: deps.idleTimeoutMs }), ctx, head.length, deps.onDone);
}

function finishRelay(run: Promise<RelayResult>, ctx: ConnContext, headLength: number, onDone: (ctx: ConnContext) => void): Promise<void> {
  return run.then((r) => {
    ctx.bytesUp = headLength + r.up;
    ctx.bytesDown = r.down;
    if (r.outcome !== 'ok') ctx.result = r.outcome;
    onDone(ctx);
  });
}

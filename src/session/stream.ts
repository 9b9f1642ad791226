import type net from 'node:net';
import type { ConnContext } from '../core/context';
import { GatewayError, errnoOf } from '../core/errors';
import type { Outbounds } from '../outbound/outbounds';
import type { Relay, RelayResult } from '../relay/relay';
import type { RouteDecision, RouteInput, Router } from '../route/router';
import type { NameLookup } from '../dns/name-map';
import { ErrorCodes } from '../core/errors';
import type { HostVerifier } from '../route/host-verify';
import { forbiddenTarget } from '../route/targets';
import { TLS_SNIFF_MAX_BYTES, sniffTls } from '../sniff/tls';
import { readFirstBytes } from './first-bytes';

export interface StreamDeps {
  router: Router;
  outbounds: Outbounds;
  relay: Relay;
  idleTimeoutMs: number;
  sniffTimeoutMs: number;
  /** Names the DNS gateway answered for addresses (per client); absent with --no-dns. */
  names?: NameLookup;
  verifier: HostVerifier;
  /** An address of this gateway or of its proxy. */
  isLocal: (address: string) => boolean;
  onDone: (ctx: ConnContext) => void;
}

/**
 * TLS and other TCP: find a name (TLS: the ClientHello's SNI), pick the
 * route, open the tunnel, write what was read while sniffing, relay.
 * The client's bytes are never altered.
 */
export async function handleStream(sock: net.Socket, ctx: ConnContext, deps: StreamDeps, sniffed?: Buffer): Promise<void> {
  // `sniffed`: the first bytes were read (and ctx.name set) before this socket existed (native-stream.ts).
  let head: Buffer = sniffed ?? Buffer.alloc(0);
  if (ctx.kind === 'tls' && sniffed === undefined) {
    const first = await readFirstBytes(sock, sniffTls, TLS_SNIFF_MAX_BYTES, deps.sniffTimeoutMs);
    head = first.head;
    if (first.outcome === 'closed' && head.length === 0) {
      ctx.result = 'client-closed';
      sock.destroy();
      deps.onDone(ctx);
      return;
    }
    if (first.outcome === 'timeout' && head.length > 0) {
      // A ClientHello begun but not finished by the deadline (counted from accept): a trickle, not a client. Cut it.
      refuse(sock, ctx, ErrorCodes.SNIFF_TIMEOUT, `no whole ClientHello within ${deps.sniffTimeoutMs} ms of accept`, deps);
      return;
    }
    if (first.result?.status === 'match') ctx.name = first.result.sni;
  }
  const refused = refusedName(ctx, deps.isLocal);
  if (refused) {
    refuse(sock, ctx, ErrorCodes.FORBIDDEN_TARGET, refused, deps);
    return;
  }
  const decision = await routeStreamVerified(ctx, deps.router, deps.names, deps.verifier);
  const abort = new AbortController();
  const onEarlyClose = (): void => abort.abort();
  sock.once('close', onEarlyClose);
  let upstream: net.Socket;
  try {
    upstream = await deps.outbounds.open(decision, ctx, abort.signal);
  } catch (err) {
    sock.off('close', onEarlyClose);
    ctx.result = err instanceof GatewayError ? err.code : (errnoOf(err) ?? 'error');
    ctx.error = err instanceof Error ? err.message : String(err);
    // Not a hang: a reset tells the client at once that its destination failed.
    if (!sock.destroyed) sock.resetAndDestroy();
    deps.onDone(ctx);
    return;
  }
  sock.off('close', onEarlyClose);
  if (sock.destroyed) {
    upstream.destroy();
    ctx.result = 'client-closed';
    deps.onDone(ctx);
    return;
  }
  if (head.length > 0) upstream.write(head);
  // Returned, not awaited: this frame (both sockets, the head, the abort
  // controller) ends here instead of living as long as the connection; an
  // idle spliced connection then keeps only its context in memory.
  return finishRelay(deps.relay.run(sock, upstream, { idleTimeoutMs: deps.idleTimeoutMs }), ctx, head.length, deps.onDone);
}

/**
 * Where a TLS or TCP connection goes, from its sniffed name (ctx.name) and
 * destination; sets ctx.name and ctx.route. Without Host or SNI (SSH, a TLS
 * client without SNI) the name is the one this client resolved to this
 * address through the gateway, so the proxy gets `CONNECT name:port` and
 * no_proxy names apply.
 */
export function routeStream(ctx: ConnContext, router: Router, names: NameLookup | undefined, nameVerified?: boolean): RouteDecision {
  ctx.name ??= names?.lookup(ctx.client.address, ctx.destination.address);
  const decision = router.select({
    kind: ctx.kind,
    name: ctx.name,
    address: ctx.destination.address,
    port: ctx.destination.port,
    nameVerified,
  });
  ctx.route = decision.kind;
  return decision;
}

/** Why a stream's name (SNI, or the client's DNS answer) must not be asked of the proxy, if it must not. */
export function refusedName(ctx: ConnContext, isLocal: (address: string) => boolean): string | undefined {
  if (ctx.name === undefined) return undefined;
  // Sniffed names are validated (sniff/tls.ts, dns/name-map.ts): names, never IP literals.
  const why = forbiddenTarget({ kind: 'name', host: ctx.name }, isLocal);
  return why && `${why}: not asked of the proxy for a client`;
}

function refuse(sock: net.Socket, ctx: ConnContext, code: string, why: string, deps: StreamDeps): void {
  ctx.refuse(code, why);
  if (!sock.destroyed) sock.resetAndDestroy();
  deps.onDone(ctx);
}

/** routeStream, with a no_proxy name verified against the destination first (it may ask the resolver). */
async function routeStreamVerified(
  ctx: ConnContext,
  router: Router,
  names: NameLookup | undefined,
  verifier: HostVerifier,
): Promise<RouteDecision> {
  ctx.name ??= names?.lookup(ctx.client.address, ctx.destination.address);
  const input: RouteInput = { kind: ctx.kind, name: ctx.name, address: ctx.destination.address, port: ctx.destination.port };
  if (input.name !== undefined && router.needsVerification(input)) {
    input.nameVerified =
      verifier.check(ctx.client.address, input.name, input.address) ??
      (await verifier.verify(ctx.client.address, input.name, input.address));
  }
  const decision = router.select(input);
  ctx.route = decision.kind;
  return decision;
}

function finishRelay(run: Promise<RelayResult>, ctx: ConnContext, headLength: number, onDone: (ctx: ConnContext) => void): Promise<void> {
  return run.then((r) => {
    ctx.bytesUp = headLength + r.up;
    ctx.bytesDown = r.down;
    if (r.outcome !== 'ok') ctx.result = r.outcome;
    onDone(ctx);
  });
}

import type { ConnContext } from '../core/context';
import { ErrorCodes, type ErrorCode } from '../core/errors';
import type { NameLookup } from '../dns/name-map';
import type { HostVerifier } from '../route/host-verify';
import type { RouteDecision, RouteInput, Router } from '../route/router';
import { forbiddenTarget } from '../route/targets';
import { TLS_SNIFF_MAX_BYTES, sniffTls, type TlsSniffResult } from '../sniff/tls';
import type { RequestCheck } from './http-request';
import { RequestFramer, type RequestRoute } from './http-framer';

/**
 * The one decision every intercepted connection goes through, whichever
 * executor carries it (the addon's native/tunnel.c, or Node's sockets):
 *
 *   accept -> first bytes -> decide(ctx, first) -> Decision -> executor
 *
 * Sniffing (TLS SNI, the HTTP request head), name validation (the sniffers
 * and core/names), the client's DNS answers (the name map), no_proxy and
 * host verification, the router, and refusals are all here, with no I/O:
 * what needs the network (a name to verify, a proxy's address) is asked of
 * the caller through the Decision. Unit-tested without sockets
 * (test/unit/decide.test.ts).
 */

export interface DecideDeps {
  router: Router;
  /** Names the DNS gateway answered for addresses (per client); absent with --no-dns. */
  names?: NameLookup;
  /** Host verification results known now (check); a lookup is the caller's (Decision 'verify'). */
  verifier: Pick<HostVerifier, 'check'>;
  /** One of this host's addresses: a connection straight to a listener. */
  isLocal: (address: string) => boolean;
  /** An address of this gateway or of its proxy: never asked of the proxy for a client (route/targets.ts). */
  isForbiddenAddress: (address: string) => boolean;
  sniffTimeoutMs: number;
}

/** What the client sent before the decision. */
export interface FirstBytes {
  /** Everything read so far (empty for a TCP port, which is not sniffed). */
  head: Buffer;
  /** No more bytes will come before a decision: the sniff deadline passed, the buffer is full, or the client closed. */
  final: boolean;
  /** The client finished sending. */
  eof: boolean;
  /** The executor can carry plain HTTP in frames (the addon); otherwise HTTP goes to the Node HTTP session. */
  framed: boolean;
  /** sniffTls(head), when the caller already has it (the addon's side reads on until it is not need-more). */
  tls?: TlsSniffResult;
}

export type Decision =
  /** Not enough bytes yet: read more (only when !final). */
  | { kind: 'read-more' }
  /** Nothing to carry (the client left, or it connected to the gateway itself): ctx.result says which. */
  | { kind: 'close' }
  /** The gateway refuses: an HTTP answer with `status` on HTTP ports, a reset elsewhere. */
  | { kind: 'refuse'; code: ErrorCode; why: string; status?: 400 | 403 | 405 | 408 }
  /** A no_proxy name must be verified against the destination first (a lookup): verify, then decide again. */
  | { kind: 'verify'; name: string }
  /** A byte stream through `route`: CONNECT name:port at the proxy, or straight to the destination; `head` goes first. */
  | { kind: 'tunnel'; route: RouteDecision; head: Buffer }
  /** Plain HTTP in frames: the first request rewritten (`out`), the rest framed by `framer`. */
  | {
      kind: 'http';
      route: Extract<RequestRoute, { kind: 'proxy' | 'direct' }>;
      out: string;
      consumed: number;
      budget: number;
      framer: RequestFramer;
      /** The first request as forwarded, for the log. */
      request: { method: string; uri: string } | undefined;
    }
  /** Plain HTTP the Node HTTP session carries (no framed executor, Upgrade, another HTTP version, a lookup). */
  | { kind: 'http-session'; why: string };

const READ_MORE: Decision = { kind: 'read-more' };
const CLOSE: Decision = { kind: 'close' };

export function decide(ctx: ConnContext, first: FirstBytes, deps: DecideDeps): Decision {
  const { head, final, eof } = first;
  if (deps.isLocal(ctx.destination.address)) {
    ctx.refuseLoop();
    return CLOSE;
  }
  switch (ctx.kind) {
    case 'http':
      return decideHttp(ctx, first, deps);
    case 'tls': {
      const sniffed = head.length > 0 ? (first.tls ?? sniffTls(head)) : undefined;
      if (!final && (sniffed === undefined || sniffed.status === 'need-more')) return READ_MORE;
      if (eof && head.length === 0) {
        ctx.result = 'client-closed';
        return CLOSE;
      }
      if (sniffed?.status === 'need-more' && !eof && head.length < TLS_SNIFF_MAX_BYTES) {
        // A ClientHello begun but not finished by the deadline (counted from accept): a trickle, not a client.
        return { kind: 'refuse', code: ErrorCodes.SNIFF_TIMEOUT, why: `no whole ClientHello within ${deps.sniffTimeoutMs} ms of accept` };
      }
      if (sniffed?.status === 'match') ctx.name = sniffed.sni;
      return decideStream(ctx, head, deps);
    }
    default:
      return decideStream(ctx, head, deps);
  }
}

/**
 * A TLS or TCP connection, or bytes on an HTTP port that are not HTTP.
 * Without SNI (SSH, a TLS client without it) the name is the one this
 * client resolved to this address through the gateway, so the proxy gets
 * `CONNECT name:port` and no_proxy names apply.
 */
function decideStream(ctx: ConnContext, head: Buffer, deps: DecideDeps): Decision {
  ctx.name ??= deps.names?.lookup(ctx.client.address, ctx.destination.address);
  if (ctx.name !== undefined) {
    // Sniffed names are validated (sniff/tls.ts, dns/name-map.ts): names, never IP literals.
    const why = forbiddenTarget({ kind: 'name', host: ctx.name }, deps.isForbiddenAddress);
    if (why) return { kind: 'refuse', code: ErrorCodes.FORBIDDEN_TARGET, why: `${why}: not asked of the proxy for a client` };
  }
  const input: RouteInput = { kind: ctx.kind, name: ctx.name, address: ctx.destination.address, port: ctx.destination.port };
  if (input.name !== undefined && deps.router.needsVerification(input)) {
    const verified = deps.verifier.check(ctx.client.address, input.name, input.address);
    if (verified === undefined) return { kind: 'verify', name: input.name };
    input.nameVerified = verified;
  }
  const route = deps.router.select(input);
  ctx.route = route.kind;
  return { kind: 'tunnel', route, head };
}

function decideHttp(ctx: ConnContext, first: FirstBytes, deps: DecideDeps): Decision {
  const { head, final, eof } = first;
  if (head.length === 0) {
    if (eof) {
      ctx.result = 'client-closed';
      return CLOSE;
    }
    // Nothing sent by the deadline: a protocol where the server speaks first, carried as TCP.
    return final ? decideStream(ctx, head, deps) : READ_MORE;
  }
  const framer = new RequestFramer({
    port: ctx.destination.port,
    address: ctx.destination.address,
    isLocal: deps.isForbiddenAddress,
    route: (check) => routeRequest(ctx, check, deps),
  });
  const step = framer.next(head, eof);
  switch (step.kind) {
    case 'need-more':
      if (!final) return READ_MORE;
      if (eof) {
        ctx.result = 'client-closed';
        return CLOSE;
      }
      // A head begun but not whole by the deadline (counted from accept): a trickle, not a client.
      return {
        kind: 'refuse',
        code: ErrorCodes.SNIFF_TIMEOUT,
        why: `no whole request head within ${deps.sniffTimeoutMs} ms of accept`,
        status: 408,
      };
    case 'not-http':
      return decideStream(ctx, head, deps);
    case 'refuse':
      ctx.requests = 1;
      return { kind: 'refuse', code: step.code, why: step.reason, status: step.status };
    case 'handover':
      return { kind: 'http-session', why: step.why };
    case 'forward': {
      // Checked and routed: the Node HTTP session does the same per request when no framed executor is there.
      if (!first.framed) return { kind: 'http-session', why: 'no framed executor' };
      const route = step.route;
      if (route === undefined || route.kind === 'handover') return { kind: 'http-session', why: 'unrouted' };
      ctx.name = framer.lastCheck?.target?.host;
      ctx.route = route.kind;
      ctx.requests = 1;
      return { kind: 'http', route, out: step.out, consumed: step.consumed, budget: step.budget, framer, request: step.request };
    }
  }
}

/** Where one request of a plain HTTP connection goes, from what is known now (HttpSession.route, without waiting). */
function routeRequest(ctx: ConnContext, check: Extract<RequestCheck, { ok: true }>, deps: DecideDeps): RequestRoute {
  const input: RouteInput = { kind: 'http', name: check.target?.host, address: ctx.destination.address, port: ctx.destination.port };
  if (input.name !== undefined && deps.router.needsVerification(input)) {
    const known = deps.verifier.check(ctx.client.address, input.name, input.address);
    if (known === undefined) return { kind: 'handover', why: 'the name must be looked up to be verified' };
    input.nameVerified = known;
  }
  const decision = deps.router.select(input);
  if (decision.kind === 'proxy' && decision.proxy) {
    // One key for every proxy route: the framer keeps the connection's proxy while a request's route names it.
    return { kind: 'proxy', key: 'proxy', proxy: decision.proxy, proxies: decision.proxies ?? [decision.proxy] };
  }
  return { kind: 'direct', key: 'direct' };
}

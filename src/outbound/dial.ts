import dns from 'node:dns';
import net from 'node:net';
import { ErrorCodes, GatewayError, errnoOf, type ErrorCode } from '../core/errors';
import { connectMarkedSocket } from '../native';

export interface DialOptions {
  host: string;
  port: number;
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * SO_MARK for the socket, set before connect() (--local: the OUTPUT rules
   * skip packets carrying it, so transgate never intercepts itself).
   */
  mark?: number;
  /**
   * Connect from this address, which need not be local (--direct-source
   * client: the client's own): IP_TRANSPARENT, then bind(source, 0) so that
   * the kernel picks the port. Ignored when its family is not the target's.
   */
  source?: string;
}

/**
 * A connecting socket: plain net.connect, or a marked socket from the addon.
 * Must be called in the same tick as connecting(): a connect() that fails at
 * once (ENETUNREACH) reports on the next tick, before any promise callback
 * could attach an error listener.
 */
function openSocket(opts: DialOptions, host: string): net.Socket {
  // A source of the other family cannot be bound; the gateway's own address is then the only one left.
  const source = opts.source !== undefined && net.isIP(opts.source) === net.isIP(host) ? opts.source : undefined;
  if (opts.mark === undefined && source === undefined) return net.connect({ host, port: opts.port, allowHalfOpen: true, noDelay: true });
  // net.connect cannot set IP_TRANSPARENT before its bind: the addon makes the socket, Node binds and connects it.
  const sock = connectMarkedSocket({ host, port: opts.port, mark: opts.mark, transparent: source !== undefined, localAddress: source });
  // Read by net.Socket when the peer ends: keep our side writable so a half-close is carried through.
  sock.allowHalfOpen = true;
  sock.setNoDelay(true);
  return sock;
}

/**
 * Opens a TCP connection with a deadline. Rejects with a GatewayError of the
 * given codes; the socket is created with allowHalfOpen so that the relay can
 * carry a half-close through.
 */
export async function dialTcp(opts: DialOptions, codes: { unreachable: ErrorCode; timeout: ErrorCode }, what: string): Promise<net.Socket> {
  const started = Date.now();
  let host = opts.host;
  // The addon connects IP literals only: names (a proxy given by name) are looked up first.
  if ((opts.mark !== undefined || opts.source !== undefined) && !net.isIP(host)) {
    try {
      host = (await dns.promises.lookup(host)).address;
    } catch (err) {
      throw new GatewayError(codes.unreachable, `${what}: cannot resolve ${opts.host} (${errnoOf(err) ?? (err as Error).message})`, {
        cause: err,
        upstreamDown: isUpstream(codes),
      });
    }
  }
  let sock: net.Socket;
  try {
    sock = openSocket(opts, host);
  } catch (err) {
    throw dialFailure.error(codes, what, errnoOf(err) ?? (err as Error).message, err);
  }
  return connecting(sock, { ...opts, timeoutMs: Math.max(1, opts.timeoutMs - (Date.now() - started)) }, codes, what);
}

function connecting(
  sock: net.Socket,
  opts: DialOptions,
  codes: { unreachable: ErrorCode; timeout: ErrorCode },
  what: string,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      sock.destroy();
      reject(new GatewayError(codes.unreachable, `${what}: cancelled`));
      return;
    }
    const timer = setTimeout(() => finish(dialFailure.timeout(codes, what, opts.timeoutMs)), opts.timeoutMs);
    const onAbort = (): void => finish(new GatewayError(codes.unreachable, `${what}: cancelled`));
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    function finish(err?: GatewayError): void {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      sock.off('connect', onConnect);
      sock.off('error', onError);
      if (err) {
        sock.destroy();
        reject(err);
      } else {
        resolve(sock);
      }
    }
    function onConnect(): void {
      finish();
    }
    function onError(err: Error): void {
      finish(dialFailure.error(codes, what, errnoOf(err) ?? err.message, err));
    }
    sock.once('connect', onConnect);
    sock.once('error', onError);
  });
}

/** A proxy that cannot be connected to is down (GatewayError.upstreamDown); a direct destination is only one connection's. */
function isUpstream(codes: { unreachable?: ErrorCode; timeout?: ErrorCode }): boolean {
  return codes.unreachable === ErrorCodes.UPSTREAM_UNREACHABLE || codes.timeout === ErrorCodes.UPSTREAM_TIMEOUT;
}

/** How a connect fails, in the same words wherever it runs (here or in the addon). */
export const dialFailure = {
  timeout: (codes: { timeout: ErrorCode }, what: string, ms: number): GatewayError =>
    new GatewayError(codes.timeout, `${what}: no answer within ${ms} ms`, { upstreamDown: isUpstream(codes) }),
  error: (codes: { unreachable: ErrorCode }, what: string, detail: string, cause?: unknown): GatewayError =>
    new GatewayError(codes.unreachable, `${what}: ${detail}`, { cause, upstreamDown: isUpstream(codes) }),
};

export const DIRECT_CODES = { unreachable: ErrorCodes.DIRECT_UNREACHABLE, timeout: ErrorCodes.DIRECT_TIMEOUT } as const;
export const UPSTREAM_CODES = { unreachable: ErrorCodes.UPSTREAM_UNREACHABLE, timeout: ErrorCodes.UPSTREAM_TIMEOUT } as const;

type ConnectCallback = (err: Error | null, sock?: net.Socket) => void;

/**
 * An http.Agent createConnection that opens marked sockets (--local) or, with
 * `transparent`, sockets bound to the request's localAddress, which need not
 * be local (--direct-source client; the agent keeps one pool per
 * localAddress, so a kept-alive connection serves only the client it came
 * from), for the HTTP path's keep-alive agents. IP literals connect in the
 * calling tick; names are looked up first and handed over through the callback.
 */
export function markedConnector(
  mark: number | undefined,
  transparent = false,
): (
  opts: { host?: string | null; port?: number | string | null; localAddress?: string | null },
  cb: ConnectCallback,
) => net.Socket | undefined {
  return (opts, cb) => {
    const host = opts.host ?? 'localhost';
    const port = Number(opts.port ?? 80);
    const open = (addr: string): net.Socket => {
      const source = transparent && opts.localAddress && net.isIP(opts.localAddress) === net.isIP(addr) ? opts.localAddress : undefined;
      const sock = connectMarkedSocket({ host: addr, port, mark, transparent: source !== undefined, localAddress: source });
      sock.setNoDelay(true);
      return sock;
    };
    if (net.isIP(host)) return open(host);
    dns.lookup(host, (err, address) => {
      if (err) cb(err);
      else {
        try {
          cb(null, open(address));
        } catch (e) {
          cb(e as Error);
        }
      }
    });
    return undefined;
  };
}

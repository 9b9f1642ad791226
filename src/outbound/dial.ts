import net from 'node:net';
import { ErrorCodes, GatewayError, errnoOf, type ErrorCode } from '../core/errors';

export interface DialOptions {
  host: string;
  port: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Opens a TCP connection with a deadline. Rejects with a GatewayError of the
 * given codes; the socket is created with allowHalfOpen so that the relay can
 * carry a half-close through.
 */
export function dialTcp(
  opts: DialOptions,
  codes: { unreachable: ErrorCode; timeout: ErrorCode },
  what: string,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new GatewayError(codes.unreachable, `${what}: cancelled`));
      return;
    }
    const sock = net.connect({ host: opts.host, port: opts.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      finish(new GatewayError(codes.timeout, `${what}: no answer within ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
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
      finish(new GatewayError(codes.unreachable, `${what}: ${errnoOf(err) ?? err.message}`, { cause: err }));
    }
    sock.once('connect', onConnect);
    sock.once('error', onError);
  });
}

export const DIRECT_CODES = { unreachable: ErrorCodes.DIRECT_UNREACHABLE, timeout: ErrorCodes.DIRECT_TIMEOUT } as const;
export const UPSTREAM_CODES = { unreachable: ErrorCodes.UPSTREAM_UNREACHABLE, timeout: ErrorCodes.UPSTREAM_TIMEOUT } as const;

import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ErrorCodes, GatewayError } from '../core/errors';
import { hostPort } from '../core/types';
import { UPSTREAM_CODES, dialTcp } from './dial';
import { connectRequest } from './request-head';

// The CONNECT head is built with the other upstream heads (request-head.ts); the addon's tunnel sends it too.
export { connectRequest } from './request-head';

const MAX_RESPONSE_HEAD = 16 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');

export interface TunnelOptions {
  proxy: ProxyEndpoint;
  /** Name or address literal (unbracketed). */
  host: string;
  port: number;
  timeoutMs: number;
  /** SO_MARK for the connection to the proxy (see DialOptions.mark). */
  mark?: number;
  signal?: AbortSignal;
}

/** Parses `HTTP/1.1 200 Connection established`; undefined when it is not a status line. */
export function parseStatusLine(line: string): { status: number; reason: string } | undefined {
  const m = /^HTTP\/\d\.\d (\d{3})(?: (.*))?$/.exec(line);
  if (!m) return undefined;
  return { status: Number(m[1]), reason: (m[2] ?? '').trim() };
}

/** What to do about a 407 from this proxy: one text for CONNECT and for plain HTTP requests. */
export function proxyAuthFix(proxy: ProxyEndpoint): string {
  return proxy.authorization
    ? 'the credentials in https_proxy/http_proxy were rejected: check user and password (percent-encode @ : / and spaces)'
    : 'the proxy wants credentials: put them in the URL, http://user:password@proxy:port';
}

/** Turns a refused CONNECT into an error that says what the user can do. */
export function connectRefusal(proxy: ProxyEndpoint, authority: string, port: number, status: number, reason: string): GatewayError {
  const said = `proxy ${proxy.display} answered ${status}${reason ? ` ${reason}` : ''} to CONNECT ${authority}`;
  if (status === 407) return new GatewayError(ErrorCodes.UPSTREAM_407, `${said}: ${proxyAuthFix(proxy)}`, { status });
  if (status === 403) {
    const hint = port !== 443 ? `; many proxies allow CONNECT only to port 443 (port ${port} refused)` : '';
    return new GatewayError(ErrorCodes.UPSTREAM_403, `${said}: the proxy's policy refuses this destination${hint}`, { status });
  }
  return new GatewayError(ErrorCodes.UPSTREAM_STATUS, said, { status });
}

/** How a CONNECT exchange fails, in the same words wherever the exchange runs (here or in the addon). */
export const tunnelFailure = {
  timeout: (proxy: ProxyEndpoint, authority: string, ms: number): GatewayError =>
    new GatewayError(ErrorCodes.UPSTREAM_TIMEOUT, `proxy ${proxy.display} did not answer CONNECT ${authority} within ${ms} ms`),
  closed: (proxy: ProxyEndpoint, authority: string): GatewayError =>
    new GatewayError(ErrorCodes.UPSTREAM_CLOSED, `proxy ${proxy.display} closed the connection before answering CONNECT ${authority}`),
  notHttp: (proxy: ProxyEndpoint): GatewayError =>
    new GatewayError(
      ErrorCodes.UPSTREAM_PROTOCOL,
      `proxy ${proxy.display} did not answer CONNECT with HTTP: is ${proxy.display} an HTTP proxy?`,
    ),
  oversized: (proxy: ProxyEndpoint): GatewayError =>
    new GatewayError(ErrorCodes.UPSTREAM_PROTOCOL, `proxy ${proxy.display} sent an oversized answer to CONNECT`),
  error: (proxy: ProxyEndpoint, detail: string, cause?: unknown): GatewayError =>
    new GatewayError(ErrorCodes.UPSTREAM_UNREACHABLE, `proxy ${proxy.display}: ${detail}`, { cause }),
};

/**
 * Opens a tunnel through an HTTP proxy with CONNECT. Resolves once the proxy
 * said 2xx; bytes the proxy sent after its head are put back on the socket.
 */
export async function openTunnel(opts: TunnelOptions): Promise<net.Socket> {
  const { proxy, host, port } = opts;
  const authority = hostPort(host, port);
  const sock = await dialTcp(
    { host: proxy.host, port: proxy.port, timeoutMs: opts.timeoutMs, signal: opts.signal, mark: opts.mark },
    UPSTREAM_CODES,
    `proxy ${proxy.display}`,
  );
  sock.write(connectRequest(proxy, host, port));
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => fail(tunnelFailure.timeout(proxy, authority, opts.timeoutMs)), opts.timeoutMs);
    const onAbort = (): void => fail(new GatewayError(ErrorCodes.UPSTREAM_CLOSED, `CONNECT ${authority}: cancelled`));
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    function cleanup(): void {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      sock.off('data', onData);
      sock.off('error', onError);
      sock.off('end', onEnd);
    }
    function fail(err: GatewayError): void {
      cleanup();
      sock.destroy();
      reject(err);
    }
    function onData(chunk: Buffer): void {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf(HEAD_END);
      if (end < 0) {
        if (buffered.length > MAX_RESPONSE_HEAD) {
          fail(tunnelFailure.oversized(proxy));
        }
        return;
      }
      const head = buffered.subarray(0, end).toString('latin1');
      const statusLine = parseStatusLine(head.split('\r\n', 1)[0]!);
      if (!statusLine) {
        fail(tunnelFailure.notHttp(proxy));
        return;
      }
      if (statusLine.status < 200 || statusLine.status > 299) {
        fail(connectRefusal(proxy, authority, port, statusLine.status, statusLine.reason));
        return;
      }
      cleanup();
      sock.pause();
      const rest = buffered.subarray(end + HEAD_END.length);
      if (rest.length > 0) sock.unshift(rest);
      resolve(sock);
    }
    function onError(err: Error): void {
      fail(tunnelFailure.error(proxy, err.message, err));
    }
    function onEnd(): void {
      fail(tunnelFailure.closed(proxy, authority));
    }
    sock.on('data', onData);
    sock.once('error', onError);
    sock.once('end', onEnd);
  });
}

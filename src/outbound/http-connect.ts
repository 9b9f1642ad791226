import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { hostPort } from '../core/types';
import { Outcomes, type Outcome } from '../native';
import { UPSTREAM_CODES, dialTcp } from './dial';
import { outcomeError, type FailureDetail } from './failures';
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

/**
 * Opens a tunnel through an HTTP proxy with CONNECT. Resolves once the proxy
 * said 2xx; bytes the proxy sent after its head are put back on the socket.
 * Its failures are the addon's outcomes (native/tunnel.c reads the answer
 * the same way), turned into errors by the same table (outbound/failures.ts).
 */
export async function openTunnel(opts: TunnelOptions): Promise<net.Socket> {
  const { proxy, host, port } = opts;
  const authority = hostPort(host, port);
  const site = { proxy, via: hostPort(proxy.host, proxy.port), authority, port, timeoutMs: opts.timeoutMs };
  // Every outcome reaching here is one of the table's errors (a proxy is always set).
  const failure = (outcome: Outcome, detail = '', d?: FailureDetail): GatewayError => outcomeError(outcome, detail, site, d)!;
  const sock = await dialTcp(
    { host: proxy.host, port: proxy.port, timeoutMs: opts.timeoutMs, signal: opts.signal, mark: opts.mark },
    UPSTREAM_CODES,
    `proxy ${proxy.display}`,
  );
  sock.write(connectRequest(proxy, host, port));
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => fail(failure(Outcomes.ANSWER_TIMEOUT)), opts.timeoutMs);
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
          fail(failure(Outcomes.ANSWER_OVERSIZED));
        }
        return;
      }
      const head = buffered.subarray(0, end).toString('latin1');
      const statusLine = parseStatusLine(head.split('\r\n', 1)[0]!);
      if (!statusLine) {
        fail(failure(Outcomes.ANSWER_PROTOCOL));
        return;
      }
      if (statusLine.status < 200 || statusLine.status > 299) {
        fail(failure(Outcomes.ANSWER_STATUS, '', statusLine));
        return;
      }
      cleanup();
      sock.pause();
      const rest = buffered.subarray(end + HEAD_END.length);
      if (rest.length > 0) sock.unshift(rest);
      resolve(sock);
    }
    function onError(err: Error): void {
      // The errno name, as the addon reports it (Node's message adds the syscall: `read ECONNRESET`).
      fail(failure(Outcomes.ANSWER, errnoOf(err) ?? err.message, { cause: err }));
    }
    function onEnd(): void {
      fail(failure(Outcomes.ANSWER_CLOSED));
    }
    sock.on('data', onData);
    sock.once('error', onError);
    sock.once('end', onEnd);
  });
}

import type net from 'node:net';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { hostPort } from '../core/types';
import { Outcomes, type Outcome } from '../native';
import { UPSTREAM_CODES, dialTcp } from './dial';
import { outcomeError, type FailureDetail } from './failures';
import { connectRequest } from './request-head';
import { ProxyAuthenticator, readAnswerHead, type AnswerHead } from './auth/proxy-auth';

// The CONNECT head is built with the other upstream heads (request-head.ts); the addon's tunnel sends it too.
export { connectRequest } from './request-head';

export interface TunnelOptions {
  proxy: ProxyEndpoint;
  /** Name or address literal (unbracketed). */
  host: string;
  port: number;
  timeoutMs: number;
  /** SO_MARK for the connection to the proxy (see DialOptions.mark). */
  mark?: number;
  signal?: AbortSignal;
  /** Told the scheme the proxy accepted (undefined: it asked for none), once the tunnel is open (doctor says which). */
  onAccepted?: (scheme: string | undefined) => void;
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
 * A 407 is answered as the proxy asks (outbound/auth/proxy-auth.ts: NTLM,
 * Digest, Basic), on the same connection when the proxy keeps it, each leg
 * within the timeout. Its failures are the addon's outcomes (native/tunnel.c
 * reads the answer the same way), turned into errors by the same table
 * (outbound/failures.ts).
 */
export async function openTunnel(opts: TunnelOptions): Promise<net.Socket> {
  const { proxy, host, port } = opts;
  const authority = hostPort(host, port);
  const site = { proxy, via: hostPort(proxy.host, proxy.port), authority, port, timeoutMs: opts.timeoutMs };
  // Every outcome reaching here is one of the table's errors (a proxy is always set).
  const failure = (outcome: Outcome, detail = '', d?: FailureDetail): GatewayError => outcomeError(outcome, detail, site, d)!;
  const dial = (): Promise<net.Socket> =>
    dialTcp(
      { host: proxy.host, port: proxy.port, timeoutMs: opts.timeoutMs, signal: opts.signal, mark: opts.mark },
      UPSTREAM_CODES,
      `proxy ${proxy.display}`,
    );
  const auth = new ProxyAuthenticator(proxy, 'CONNECT', authority);
  let authorization = auth.initial;
  let sock = await dial();
  let carried: Buffer = Buffer.alloc(0);
  for (;;) {
    sock.write(connectRequest(proxy, host, port, authorization));
    let answer: { head: AnswerHead; rest: Buffer };
    try {
      answer = await readAnswer(sock, carried, opts, failure, authority);
    } catch (err) {
      sock.destroy();
      throw err;
    }
    const { head, rest } = answer;
    if (head.status >= 200 && head.status <= 299) {
      auth.succeeded();
      opts.onAccepted?.(auth.current);
      sock.pause();
      if (rest.length > 0) sock.unshift(rest);
      return sock;
    }
    const leg = head.status === 407 ? auth.answer(head.fields) : undefined;
    const reuse = leg !== undefined && head.keepAlive;
    if (leg === undefined || (leg.sameConnection && !reuse)) {
      sock.destroy();
      throw failure(Outcomes.ANSWER_STATUS, '', { status: head.status, reason: head.reason, scheme: auth.current, offered: auth.offered });
    }
    authorization = leg.authorization;
    if (reuse) {
      try {
        carried = await skipBody(sock, rest, head.bodyLength!, opts, failure);
      } catch (err) {
        sock.destroy();
        throw err;
      }
    } else {
      sock.destroy();
      carried = Buffer.alloc(0);
      sock = await dial();
    }
  }
}

type Failure = (outcome: Outcome, detail?: string, d?: FailureDetail) => GatewayError;

/** One answer head from the proxy (after `carried`, bytes already read), with what came behind it. */
function readAnswer(
  sock: net.Socket,
  carried: Buffer,
  opts: TunnelOptions,
  failure: Failure,
  authority: string,
): Promise<{ head: AnswerHead; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffered = carried;
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
      reject(err);
    }
    function look(): boolean {
      const head = readAnswerHead(buffered);
      if (head === undefined) return false;
      if (head === 'invalid' || head === 'oversized') {
        fail(failure(head === 'oversized' ? Outcomes.ANSWER_OVERSIZED : Outcomes.ANSWER_PROTOCOL));
        return true;
      }
      cleanup();
      resolve({ head, rest: buffered.subarray(head.headLength) });
      return true;
    }
    function onData(chunk: Buffer): void {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      look();
    }
    function onError(err: Error): void {
      // The errno name, as the addon reports it (Node's message adds the syscall: `read ECONNRESET`).
      fail(failure(Outcomes.ANSWER, errnoOf(err) ?? err.message, { cause: err }));
    }
    function onEnd(): void {
      fail(failure(Outcomes.ANSWER_CLOSED));
    }
    if (buffered.length > 0 && look()) return;
    sock.on('data', onData);
    sock.once('error', onError);
    sock.once('end', onEnd);
    sock.resume();
  });
}

/** Reads and drops a 407's body of `length` bytes (`have` of it already read); resolves with the bytes after it. */
function skipBody(sock: net.Socket, have: Buffer, length: number, opts: TunnelOptions, failure: Failure): Promise<Buffer> {
  if (have.length >= length) return Promise.resolve(have.subarray(length));
  let left = length - have.length;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(failure(Outcomes.ANSWER_TIMEOUT)), opts.timeoutMs);
    function done(err?: GatewayError, rest?: Buffer): void {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
      if (err) reject(err);
      else resolve(rest ?? Buffer.alloc(0));
    }
    function onData(chunk: Buffer): void {
      if (chunk.length < left) {
        left -= chunk.length;
        return;
      }
      done(undefined, chunk.subarray(left));
    }
    const onEnd = (): void => done(failure(Outcomes.ANSWER_CLOSED));
    const onError = (err: Error): void => done(failure(Outcomes.ANSWER, errnoOf(err) ?? err.message, { cause: err }));
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('error', onError);
    sock.resume();
  });
}

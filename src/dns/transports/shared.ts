/**
 * What every DNS transport shares: the interface, DNS-over-TCP framing,
 * query IDs, and the promise of one query in flight.
 */
import crypto from 'node:crypto';
import type net from 'node:net';
import type { DnsServer } from '../../config/types';
import { ErrorCodes, GatewayError } from '../../core/errors';

/** Sends one DNS message and resolves with the answer; rejects with a GatewayError (code TG_ERR_DNS) or on abort. */
export interface DnsTransport {
  readonly description: string;
  query(msg: Buffer, signal: AbortSignal): Promise<Buffer>;
  close(): void;
}

/** Where a transport sends its queries (config/types: the DNS settings name servers so). */
export type Server = DnsServer;

/** Opens a stream to host:port: directly, or a CONNECT tunnel through the proxy. */
export type StreamOpener = (host: string, port: number, signal: AbortSignal) => Promise<net.Socket>;

export function dnsError(message: string, cause?: unknown): GatewayError {
  return new GatewayError(ErrorCodes.DNS, message, { cause });
}

export function aborted(signal: AbortSignal, what: string): GatewayError {
  return dnsError(`${what}: ${signal.reason instanceof Error ? signal.reason.message : 'cancelled'}`);
}

/** Frames a message for DNS over TCP (RFC 1035 4.2.2): a 16-bit length first. */
export function frame(msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 2);
  out.writeUInt16BE(msg.length, 0);
  msg.copy(out, 2);
  return out;
}

/**
 * Splits a TCP byte stream into DNS messages. Returns the messages complete
 * so far and the bytes left over.
 */
export function unframe(buf: Buffer): { messages: Buffer[]; rest: Buffer } {
  const messages: Buffer[] = [];
  let off = 0;
  while (buf.length - off >= 2) {
    const len = buf.readUInt16BE(off);
    if (buf.length - off - 2 < len) break;
    messages.push(buf.subarray(off + 2, off + 2 + len));
    off += 2 + len;
  }
  return { messages, rest: off === 0 ? buf : buf.subarray(off) };
}

/**
 * An ID for an upstream query: unpredictable (RFC 5452 9.2), because the
 * gateway's sockets live long and a guessed ID is all an off-path attacker
 * needs to slip a forged answer into the cache, and into the name map.
 * Math.random is not: its state can be recovered from a few outputs.
 */
export function randomId(): number {
  return crypto.randomInt(0x10000);
}

export function withId(msg: Buffer, id: number): Buffer {
  const out = Buffer.from(msg);
  out.writeUInt16BE(id, 0);
  return out;
}

export interface Pending {
  resolve(answer: Buffer): void;
  reject(err: Error): void;
}

/**
 * The answer to one query in flight: settled by the answer, by an error, or
 * when the query's signal aborts (then `onAbort` forgets the query and says
 * why). The abort listener never outlives the query.
 */
export function awaitAnswer(signal: AbortSignal, onAbort: () => Error, register: (p: Pending) => void): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const abort = (): void => reject(onAbort());
    signal.addEventListener('abort', abort, { once: true });
    register({
      resolve: (a) => {
        signal.removeEventListener('abort', abort);
        resolve(a);
      },
      reject: (e) => {
        signal.removeEventListener('abort', abort);
        reject(e);
      },
    });
  });
}

import { ErrorCodes } from './errors';
import type { Address } from './types';

export type RouteKind = 'proxy' | 'direct' | 'reject';

/** 'dns': clients' DNS over TCP (port 53), answered by the gateway itself. */
export type ListenerKind = 'http' | 'tls' | 'tcp' | 'dns';

/** One record per intercepted connection; every log line reads from it. */
export class ConnContext {
  private static nextId = 1;

  readonly id: number;
  readonly startedAt: number;
  readonly kind: ListenerKind;
  readonly client: Address;
  readonly destination: Address;
  /** Name sniffed from the Host header or the TLS SNI, if any. */
  name: string | undefined;
  route: RouteKind | undefined;
  /** Where the connection was sent: the proxy URL's host:port, or the direct target. */
  via: string | undefined;
  bytesUp = 0;
  bytesDown = 0;
  result = 'ok';
  /** Human-readable reason when result is not ok. */
  error: string | undefined;
  /** HTTP requests carried on this connection. */
  requests = 0;

  constructor(kind: ListenerKind, client: Address, destination: Address) {
    this.id = ConnContext.nextId++;
    this.startedAt = performance.now();
    this.kind = kind;
    this.client = client;
    this.destination = destination;
  }

  /** A connection to one of the gateway's own addresses: refused, never relayed (an open relay otherwise). */
  refuseLoop(): void {
    this.route = 'reject';
    this.result = ErrorCodes.LOOP;
    this.error = 'destination is this gateway: listeners serve intercepted connections only';
  }

  /**
   * The gateway answered or closed the connection itself (400, 403, 405,
   * 408, a reset): its first refusal is the one logged; a target no client
   * may have fetched also marks the route.
   */
  refuse(code: string, why: string): void {
    if (this.result === 'ok') {
      this.result = code;
      this.error = why;
    }
    if (code === ErrorCodes.FORBIDDEN_TARGET) this.route = 'reject';
  }

  durationMs(): number {
    return Math.round(performance.now() - this.startedAt);
  }
}

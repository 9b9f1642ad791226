/**
 * One place for every error transgate reports. Each error has a stable code
 * (tests assert codes, not messages) and, where it came from below, a cause.
 */
export const ErrorCodes = {
  CONFIG: 'TG_ERR_CONFIG',
  FLAG: 'TG_ERR_FLAG',
  PERMISSION: 'TG_ERR_PERMISSION',
  NATIVE: 'TG_ERR_NATIVE',
  RULES: 'TG_ERR_RULES',
  LISTEN: 'TG_ERR_LISTEN',
  ORIGINAL_DST: 'TG_ERR_ORIGINAL_DST',
  LOOP: 'TG_ERR_LOOP',
  UPSTREAM_UNREACHABLE: 'TG_ERR_UPSTREAM_UNREACHABLE',
  UPSTREAM_TIMEOUT: 'TG_ERR_UPSTREAM_TIMEOUT',
  UPSTREAM_407: 'TG_ERR_UPSTREAM_407',
  UPSTREAM_403: 'TG_ERR_UPSTREAM_403',
  UPSTREAM_STATUS: 'TG_ERR_UPSTREAM_STATUS',
  UPSTREAM_PROTOCOL: 'TG_ERR_UPSTREAM_PROTOCOL',
  UPSTREAM_CLOSED: 'TG_ERR_UPSTREAM_CLOSED',
  DIRECT_UNREACHABLE: 'TG_ERR_DIRECT_UNREACHABLE',
  DIRECT_TIMEOUT: 'TG_ERR_DIRECT_TIMEOUT',
  DNS: 'TG_ERR_DNS',
  /** A malformed HTTP request head, or a Host that is not a name or an address (400). */
  BAD_REQUEST: 'TG_ERR_BAD_REQUEST',
  /** A target no client could reach without the gateway: localhost, loopback, link-local, this host (HTTP 403, else a reset). */
  FORBIDDEN_TARGET: 'TG_ERR_FORBIDDEN_TARGET',
  /** TRACE or CONNECT sent to an HTTP port (405). */
  METHOD: 'TG_ERR_METHOD',
  /** The first bytes did not arrive whole within --sniff-timeout of accept (HTTP 408, else a reset). */
  SNIFF_TIMEOUT: 'TG_ERR_SNIFF_TIMEOUT',
  /** This client has --max-conns-per-client connections open. */
  CLIENT_LIMIT: 'TG_ERR_CLIENT_LIMIT',
  /** The gateway has --max-conns connections open. */
  LIMIT: 'TG_ERR_LIMIT',
  /** The source is not in --clients. */
  CLIENT_REFUSED: 'TG_ERR_CLIENT_REFUSED',
  /** A bug met by one connection: that connection ended, the gateway did not. */
  INTERNAL: 'TG_ERR_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class GatewayError extends Error {
  readonly code: ErrorCode;
  /** Upstream proxy status, where the proxy answered. */
  readonly status?: number;
  /**
   * The proxy itself failed (not reached, or it did not answer as a proxy):
   * the next upstream may carry the connection, and this one is marked down.
   * A status it answered (403, 407, 502) is its policy or the origin's
   * failure, never a reason to ask another proxy.
   */
  readonly upstreamDown?: boolean;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; status?: number; upstreamDown?: boolean }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'GatewayError';
    this.code = code;
    if (options?.status !== undefined) this.status = options.status;
    if (options?.upstreamDown) this.upstreamDown = true;
  }
}

/** Adds context at a boundary, keeping the original as cause: `start listener[tls :443]: EADDRINUSE`. */
export function withContext(what: string, err: unknown, code: ErrorCode = ErrorCodes.CONFIG): GatewayError {
  if (err instanceof GatewayError) {
    return new GatewayError(err.code, `${what}: ${err.message}`, { cause: err, status: err.status, upstreamDown: err.upstreamDown });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new GatewayError(code, `${what}: ${msg}`, { cause: err });
}

export function errnoOf(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}

/**
 * One table from how an attempt to reach the destination ended to the
 * GatewayError that the client's error page, the access log and `transgate
 * doctor` show. The addon reports an Outcome (native/protocol.h) with a
 * detail; the JS executors (openTunnel, dialTcp, the Node HTTP path) classify
 * their failures with the same Outcome values and call the same table, so a
 * 403 to CONNECT, a proxy that closes before answering or one that stays
 * silent reads the same (code, status, message) whichever executor met it.
 */
import type http from 'node:http';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ErrorCodes, GatewayError } from '../core/errors';
import { Outcomes, type Outcome } from '../native';
import { DIRECT_CODES, UPSTREAM_CODES, dialFailure } from './dial';

/** Where the attempt went: what the messages name. */
export interface FailureSite {
  /** The proxy asked (CONNECT, or a plain HTTP request); undefined for a direct connection. */
  proxy: ProxyEndpoint | undefined;
  /** A direct connection's destination as dialled, host:port (messages say `direct <via>`). */
  via: string;
  /** host:port as the CONNECT named it. */
  authority: string;
  /** The destination port (a 403 to another port than 443 says so). */
  port: number;
  /** The connect and answer deadline, for the timeout messages. */
  timeoutMs: number;
  /** Plain HTTP: the request whose response ANSWER_STATUS is about; without it ANSWER_STATUS is CONNECT's answer. */
  request?: { method: string; uri: string };
}

/** What else is known about the failure: the proxy's answer (ANSWER_STATUS), and a cause to keep. */
export interface FailureDetail {
  status?: number;
  /** The reason phrase of the proxy's status line. */
  reason?: string;
  /** The response's fields, names lowercased: a proxy's own error is told by them (proxyOwnError). */
  headers?: http.IncomingHttpHeaders;
  cause?: unknown;
  /** A 407: the scheme the gateway answered with last, and the ones the proxy offered. */
  scheme?: string;
  offered?: readonly string[];
}

/** What to do about a 407 from this proxy: one text for CONNECT and for plain HTTP requests. */
function proxyAuthFix(proxy: ProxyEndpoint, d: FailureDetail = {}): string {
  if (!proxy.authorization) return 'the proxy wants credentials: put them in the URL, http://user:password@proxy:port';
  const offered = d.offered && d.offered.length > 0 ? ` (it offers ${d.offered.join(', ')})` : '';
  if (d.scheme === 'ntlm')
    return `the NTLM credentials were rejected${offered}: check DOMAIN\\user (DOMAIN%5Cuser in the URL) and password`;
  if (d.scheme === 'digest') return `the Digest credentials were rejected${offered}: check user and password`;
  if (d.offered && d.offered.length > 0 && !d.offered.some((s) => s === 'basic' || s === 'ntlm' || s === 'digest')) {
    return `the proxy asks for ${d.offered.join(', ')}, which transgate cannot answer yet`;
  }
  return `the credentials in https_proxy/http_proxy were rejected${offered}: check user and password (percent-encode @ : / and spaces)`;
}

/**
 * A 5xx the proxy made itself (it could not reach or resolve the origin) and
 * not one the origin sent through it: squid says so in X-Squid-Error,
 * RFC 9209 proxies in Proxy-Status. What it says, or undefined.
 */
export function proxyOwnError(res: { statusCode?: number; headers: http.IncomingHttpHeaders }): string | undefined {
  if ((res.statusCode ?? 0) < 500) return undefined;
  const ps = res.headers['proxy-status'];
  if (typeof ps === 'string' && /error=/.test(ps)) return `(Proxy-Status: ${ps})`;
  const squid = res.headers['x-squid-error'];
  if (typeof squid === 'string') {
    const what = /^ERR_DNS_FAIL/.test(squid)
      ? 'name not found by the proxy'
      : /^ERR_CONNECT_FAIL/.test(squid)
        ? 'origin unreachable from the proxy'
        : /^ERR_READ_TIMEOUT|^ERR_CONNECT_TIMEOUT/.test(squid)
          ? 'origin timed out at the proxy'
          : 'proxy error';
    return `${what} (${squid})`;
  }
  return undefined;
}

/** A response head's fields, names lowercased (the last of a repeated one): what proxyOwnError reads. */
export function responseFields(head: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) fields[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return fields;
}

/** A CONNECT the proxy answered with a status other than 2xx, in words that say what the user can do. */
function connectRefusal(proxy: ProxyEndpoint, site: FailureSite, status: number, reason: string, d: FailureDetail = {}): GatewayError {
  const said = `proxy ${proxy.display} answered ${status}${reason ? ` ${reason}` : ''} to CONNECT ${site.authority}`;
  if (status === 407) return new GatewayError(ErrorCodes.UPSTREAM_407, `${said}: ${proxyAuthFix(proxy, d)}`, { status });
  if (status === 403) {
    const hint = site.port !== 443 ? `; many proxies allow CONNECT only to port 443 (port ${site.port} refused)` : '';
    return new GatewayError(ErrorCodes.UPSTREAM_403, `${said}: the proxy's policy refuses this destination${hint}`, { status });
  }
  return new GatewayError(ErrorCodes.UPSTREAM_STATUS, said, { status });
}

/** A plain HTTP request the proxy answered with 407 or with an error of its own (the client gets the gateway's page). */
function requestRefusal(proxy: ProxyEndpoint, request: { method: string; uri: string }, d: FailureDetail): GatewayError {
  const status = d.status ?? 0;
  if (status === 407) {
    return new GatewayError(
      ErrorCodes.UPSTREAM_407,
      `proxy ${proxy.display} answered 407 to ${request.method} ${request.uri}: ${proxyAuthFix(proxy)}`,
      {
        status,
      },
    );
  }
  // The addon stops only for a 5xx with X-Squid-Error or Proxy-Status; one whose field says no more is still the proxy's.
  const own = proxyOwnError({ statusCode: status, headers: d.headers ?? {} }) ?? 'proxy error';
  return new GatewayError(
    status === 504 ? ErrorCodes.UPSTREAM_TIMEOUT : ErrorCodes.UPSTREAM_STATUS,
    `proxy ${proxy.display} could not fetch ${request.uri}: ${status} ${own}`,
    { status },
  );
}

type Entry = (detail: string, site: FailureSite, d: FailureDetail) => GatewayError | undefined;

/** Not a failure to report as an error: the log's result is the outcome's own text (outcomeText). */
const ITS_OWN_RESULT: Entry = () => undefined;

const dialed: Entry = (detail, s, d) =>
  dialFailure.error(s.proxy ? UPSTREAM_CODES : DIRECT_CODES, s.proxy ? `proxy ${s.proxy.display}` : `direct ${s.via}`, detail, d.cause);

/** An outcome about the proxy's answer: only a proxy answers (a direct connection's are the relay's to report). */
function fromProxy(entry: (p: ProxyEndpoint, detail: string, site: FailureSite, d: FailureDetail) => GatewayError): Entry {
  return (detail, s, d) => (s.proxy ? entry(s.proxy, detail, s, d) : undefined);
}

/** Every outcome, so that a new one in native/protocol.h does not compile until it is given its error here. */
const TABLE: Record<Outcome, Entry> = {
  [Outcomes.OK]: ITS_OWN_RESULT,
  [Outcomes.HANDED_OVER]: ITS_OWN_RESULT,
  [Outcomes.ABORTED]: ITS_OWN_RESULT,
  [Outcomes.IDLE_TIMEOUT]: ITS_OWN_RESULT,
  [Outcomes.REFUSED]: ITS_OWN_RESULT,
  [Outcomes.REJECTED]: ITS_OWN_RESULT,
  [Outcomes.UNUSABLE]: ITS_OWN_RESULT,
  [Outcomes.INTERNAL_ERROR]: ITS_OWN_RESULT,
  [Outcomes.CLIENT_ERROR]: ITS_OWN_RESULT,
  // Before the relay (a write of the request head that failed) or during it: the relay's words, as on the Node path.
  [Outcomes.UPSTREAM_ERROR]: ITS_OWN_RESULT,
  [Outcomes.RELAY_ERROR]: ITS_OWN_RESULT,
  // The Node HTTP session's words for its headersTimeout (relay/http-session.ts clientError).
  [Outcomes.HEAD_TIMEOUT]: () => new GatewayError(ErrorCodes.SNIFF_TIMEOUT, 'the request head did not arrive in time', { status: 408 }),
  [Outcomes.CONNECT]: dialed,
  [Outcomes.SOCKET]: dialed,
  [Outcomes.CONNECT_TIMEOUT]: (_, s) =>
    dialFailure.timeout(s.proxy ? UPSTREAM_CODES : DIRECT_CODES, s.proxy ? `proxy ${s.proxy.display}` : `direct ${s.via}`, s.timeoutMs),
  [Outcomes.ANSWER]: fromProxy(
    (p, detail, _, d) =>
      new GatewayError(ErrorCodes.UPSTREAM_UNREACHABLE, `proxy ${p.display}: ${detail}`, { cause: d.cause, upstreamDown: true }),
  ),
  // Not upstreamDown: squid answers CONNECT only once it has reached the origin, so a slow origin looks the same.
  [Outcomes.ANSWER_TIMEOUT]: fromProxy(
    (p, _, s) =>
      new GatewayError(ErrorCodes.UPSTREAM_TIMEOUT, `proxy ${p.display} did not answer CONNECT ${s.authority} within ${s.timeoutMs} ms`),
  ),
  [Outcomes.ANSWER_CLOSED]: fromProxy(
    (p, _, s) =>
      new GatewayError(ErrorCodes.UPSTREAM_CLOSED, `proxy ${p.display} closed the connection before answering CONNECT ${s.authority}`, {
        upstreamDown: true,
      }),
  ),
  [Outcomes.ANSWER_PROTOCOL]: fromProxy(
    (p) =>
      new GatewayError(
        ErrorCodes.UPSTREAM_PROTOCOL,
        `proxy ${p.display} did not answer CONNECT with HTTP: is ${p.display} an HTTP proxy?`,
        {
          upstreamDown: true,
        },
      ),
  ),
  [Outcomes.ANSWER_OVERSIZED]: fromProxy(
    (p) => new GatewayError(ErrorCodes.UPSTREAM_PROTOCOL, `proxy ${p.display} sent an oversized answer to CONNECT`, { upstreamDown: true }),
  ),
  // The gateway itself was looking something up for the upstream (a token, a PAC answer) and ran out of time.
  [Outcomes.PENDING_TIMEOUT]: (_, s) =>
    new GatewayError(
      ErrorCodes.UPSTREAM_TIMEOUT,
      `${s.proxy ? `proxy ${s.proxy.display}` : `direct ${s.via}`}: the way upstream was not ready within ${s.timeoutMs} ms`,
    ),
  [Outcomes.HANDSHAKE]: (_, s) =>
    new GatewayError(
      ErrorCodes.UPSTREAM_PROTOCOL,
      `${s.proxy ? `proxy ${s.proxy.display}` : `direct ${s.via}`}: the handshake for ${s.authority} did not end within 16 rounds`,
    ),
  [Outcomes.ANSWER_STATUS]: fromProxy((p, _, s, d) =>
    s.request ? requestRefusal(p, s.request, d) : connectRefusal(p, s, d.status ?? 0, d.reason ?? '', d),
  ),
};

/**
 * The error for an outcome, or undefined when the outcome is not one (ok,
 * idle-timeout, a relay side's errno: the log shows outcomeText instead).
 */
export function outcomeError(outcome: Outcome, detail: string, site: FailureSite, d: FailureDetail = {}): GatewayError | undefined {
  const entry = TABLE[outcome] as Entry | undefined;
  return entry?.(detail, site, d);
}

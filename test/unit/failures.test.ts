/**
 * outbound/failures.ts: every outcome to its error (code, status, message
 * shape), for a proxy and for a direct connection. The same table serves the
 * addon's done(), openTunnel, the HTTP path and `transgate doctor`.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { GatewayError } from '../../src/core/errors';
import { outcomeError, proxyOwnError, type FailureSite } from '../../src/outbound/failures';
import { Outcomes, outcomeText, type Outcome } from '../../src/native';

const proxy = parseProxyUrl('http://198.51.100.2:3128');
const viaProxy: FailureSite = { proxy, via: '198.51.100.2:3128', authority: 'www.example.test:443', port: 443, timeoutMs: 5000 };
const direct: FailureSite = { proxy: undefined, via: '203.0.113.7:443', authority: '203.0.113.7:443', port: 443, timeoutMs: 5000 };

/** [outcome, detail, extra, code, status, message pattern] through a proxy. */
const PROXY_FIXTURES: Array<[Outcome, string, { status?: number; reason?: string }, string, number | undefined, RegExp]> = [
  [Outcomes.CONNECT, 'ECONNREFUSED', {}, 'TG_ERR_UPSTREAM_UNREACHABLE', undefined, /^proxy http:\/\/198\.51\.100\.2:3128: ECONNREFUSED$/],
  [Outcomes.SOCKET, 'EMFILE', {}, 'TG_ERR_UPSTREAM_UNREACHABLE', undefined, /^proxy .*: EMFILE$/],
  [Outcomes.CONNECT_TIMEOUT, '', {}, 'TG_ERR_UPSTREAM_TIMEOUT', undefined, /^proxy .*: no answer within 5000 ms$/],
  [Outcomes.ANSWER, 'ECONNRESET', {}, 'TG_ERR_UPSTREAM_UNREACHABLE', undefined, /^proxy .*: ECONNRESET$/],
  [Outcomes.ANSWER_TIMEOUT, '', {}, 'TG_ERR_UPSTREAM_TIMEOUT', undefined, /did not answer CONNECT www\.example\.test:443 within 5000 ms$/],
  [
    Outcomes.ANSWER_CLOSED,
    '',
    {},
    'TG_ERR_UPSTREAM_CLOSED',
    undefined,
    /closed the connection before answering CONNECT www\.example\.test:443$/,
  ],
  [Outcomes.ANSWER_PROTOCOL, '', {}, 'TG_ERR_UPSTREAM_PROTOCOL', undefined, /did not answer CONNECT with HTTP: is .* an HTTP proxy\?$/],
  [Outcomes.ANSWER_OVERSIZED, '', {}, 'TG_ERR_UPSTREAM_PROTOCOL', undefined, /sent an oversized answer to CONNECT$/],
  [
    Outcomes.ANSWER_STATUS,
    '',
    { status: 407, reason: 'Proxy Authentication Required' },
    'TG_ERR_UPSTREAM_407',
    407,
    /answered 407 Proxy Authentication Required to CONNECT www\.example\.test:443: .*user:password/,
  ],
  [Outcomes.ANSWER_STATUS, '', { status: 403, reason: 'Forbidden' }, 'TG_ERR_UPSTREAM_403', 403, /policy refuses this destination$/],
  [
    Outcomes.ANSWER_STATUS,
    '',
    { status: 503, reason: 'Service Unavailable' },
    'TG_ERR_UPSTREAM_STATUS',
    503,
    /answered 503 Service Unavailable to CONNECT/,
  ],
  [Outcomes.HEAD_TIMEOUT, '', {}, 'TG_ERR_SNIFF_TIMEOUT', 408, /^the request head did not arrive in time$/],
  [Outcomes.PENDING_TIMEOUT, '', {}, 'TG_ERR_UPSTREAM_TIMEOUT', undefined, /^proxy .*: the way upstream was not ready within 5000 ms$/],
  [
    Outcomes.HANDSHAKE,
    '',
    {},
    'TG_ERR_UPSTREAM_PROTOCOL',
    undefined,
    /^proxy .*: the handshake for www\.example\.test:443 did not end within 16 rounds$/,
  ],
];

/** Outcomes that are the log's own result, not an error page. */
const NOT_ERRORS: Outcome[] = [
  Outcomes.OK,
  Outcomes.HANDED_OVER,
  Outcomes.ABORTED,
  Outcomes.IDLE_TIMEOUT,
  Outcomes.REFUSED,
  Outcomes.REJECTED,
  Outcomes.UNUSABLE,
  Outcomes.INTERNAL_ERROR,
  Outcomes.CLIENT_ERROR,
  Outcomes.UPSTREAM_ERROR,
  Outcomes.RELAY_ERROR,
];

describe('outcome → GatewayError', () => {
  test('every outcome is either an error fixture or the log result of its own', () => {
    const covered = new Set<Outcome>([...PROXY_FIXTURES.map((f) => f[0]), ...NOT_ERRORS]);
    assert.deepEqual(covered, new Set(Object.values(Outcomes)));
  });

  for (const [outcome, detail, extra, code, status, message] of PROXY_FIXTURES) {
    test(`through a proxy: ${outcomeText(outcome, detail)}${extra.status ? ` ${extra.status}` : ''} is ${code}`, () => {
      const e = outcomeError(outcome, detail, viaProxy, extra);
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, code);
      assert.equal(e.status, status);
      assert.match(e.message, message);
    });
  }

  test('relay outcomes are not errors: the log shows their text', () => {
    for (const o of NOT_ERRORS) assert.equal(outcomeError(o, 'ECONNRESET', viaProxy), undefined, `outcome ${o}`);
  });

  test('a direct connection: dial failures name the destination with the DIRECT codes; proxy answers are not its', () => {
    const refused = outcomeError(Outcomes.CONNECT, 'ECONNREFUSED', direct);
    assert.equal(refused?.code, 'TG_ERR_DIRECT_UNREACHABLE');
    assert.equal(refused?.message, 'direct 203.0.113.7:443: ECONNREFUSED');
    const slow = outcomeError(Outcomes.CONNECT_TIMEOUT, '', direct);
    assert.equal(slow?.code, 'TG_ERR_DIRECT_TIMEOUT');
    assert.equal(slow?.message, 'direct 203.0.113.7:443: no answer within 5000 ms');
    for (const o of [Outcomes.ANSWER, Outcomes.ANSWER_CLOSED, Outcomes.ANSWER_STATUS, Outcomes.ANSWER_TIMEOUT]) {
      assert.equal(outcomeError(o, '', direct, { status: 403 }), undefined, `outcome ${o}`);
    }
  });

  test('a 403 to CONNECT on another port than 443 says many proxies allow only 443', () => {
    const e = outcomeError(
      Outcomes.ANSWER_STATUS,
      '',
      { ...viaProxy, authority: '203.0.113.2:22', port: 22 },
      { status: 403, reason: 'Forbidden' },
    );
    assert.match(e?.message ?? '', /CONNECT only to port 443 \(port 22 refused\)$/);
  });

  test('a plain HTTP request: ANSWER_STATUS is its response (407, or the proxy’s own 5xx), not a CONNECT answer', () => {
    const http = { ...viaProxy, request: { method: 'GET', uri: 'http://www.example.test/x' } };
    const auth = outcomeError(Outcomes.ANSWER_STATUS, '', http, { status: 407 });
    assert.equal(auth?.code, 'TG_ERR_UPSTREAM_407');
    assert.match(auth?.message ?? '', /answered 407 to GET http:\/\/www\.example\.test\/x: /);
    const dns = outcomeError(Outcomes.ANSWER_STATUS, '', http, { status: 503, headers: { 'x-squid-error': 'ERR_DNS_FAIL 0' } });
    assert.equal(dns?.code, 'TG_ERR_UPSTREAM_STATUS');
    assert.equal(dns?.status, 503);
    assert.match(dns?.message ?? '', /could not fetch http:\/\/www\.example\.test\/x: 503 name not found by the proxy \(ERR_DNS_FAIL 0\)$/);
    const timeout = outcomeError(Outcomes.ANSWER_STATUS, '', http, { status: 504, headers: { 'x-squid-error': 'ERR_READ_TIMEOUT 0' } });
    assert.equal(timeout?.code, 'TG_ERR_UPSTREAM_TIMEOUT');
  });

  test('a 5xx the origin sent through the proxy is not the proxy’s own error', () => {
    assert.equal(proxyOwnError({ statusCode: 502, headers: {} }), undefined);
    assert.equal(proxyOwnError({ statusCode: 404, headers: { 'x-squid-error': 'ERR_X 0' } }), undefined);
    assert.match(proxyOwnError({ statusCode: 502, headers: { 'proxy-status': 'squid; error=connection_refused' } }) ?? '', /Proxy-Status/);
  });

  test('a cause is kept', () => {
    const cause = new Error('read ECONNRESET');
    assert.equal(outcomeError(Outcomes.ANSWER, 'ECONNRESET', viaProxy, { cause })?.cause, cause);
  });
});

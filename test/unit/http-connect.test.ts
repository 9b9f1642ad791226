import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { GatewayError } from '../../src/core/errors';
import { connectRequest, openTunnel, parseStatusLine } from '../../src/outbound/http-connect';
import { absoluteUri } from '../../src/outbound/request-head';
import { endToEndHeaders, errorStatus } from '../../src/relay/http-session';

describe('CONNECT request and answer parsing', () => {
  test('request head carries Basic credentials and brackets IPv6', () => {
    const p = parseProxyUrl('http://alice:s3cr3t%20p%40ss@198.51.100.2:3128');
    assert.equal(
      connectRequest(p, '2001:db8::2', 22),
      `CONNECT [2001:db8::2]:22 HTTP/1.1\r\nHost: [2001:db8::2]:22\r\nProxy-Authorization: Basic ${Buffer.from('alice:s3cr3t p@ss').toString('base64')}\r\n\r\n`,
    );
    assert.equal(
      connectRequest(parseProxyUrl('http://p:1'), 'a.example', 443),
      'CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n',
    );
  });

  test('status lines', () => {
    assert.deepEqual(parseStatusLine('HTTP/1.1 200 Connection established'), { status: 200, reason: 'Connection established' });
    assert.deepEqual(parseStatusLine('HTTP/1.0 407'), { status: 407, reason: '' });
    assert.equal(parseStatusLine('SSH-2.0-OpenSSH_9.2'), undefined);
    assert.equal(parseStatusLine('HTTP/1.1 20 short'), undefined);
  });
});

describe('HTTP forwarding helpers', () => {
  test('hop-by-hop headers and those named by Connection are dropped', () => {
    const raw = [
      'Host',
      'a',
      'Connection',
      'keep-alive, X-Private',
      'X-Private',
      '1',
      'Proxy-Authorization',
      'x',
      'Accept',
      '*/*',
      'Transfer-Encoding',
      'chunked',
    ];
    assert.deepEqual(endToEndHeaders(raw, 'keep-alive, X-Private'), ['Host', 'a', 'Accept', '*/*']);
  });

  test('absolute URIs for the proxy', () => {
    assert.equal(absoluteUri('www.example.test', 80, '/a?b=1'), 'http://www.example.test/a?b=1');
    assert.equal(absoluteUri('www.example.test', 8080, '/'), 'http://www.example.test:8080/');
    assert.equal(absoluteUri('2001:db8:3::2', 80, '/'), 'http://[2001:db8:3::2]/');
  });

  test('timeouts are 504, everything else 502', () => {
    assert.equal(errorStatus(new GatewayError('TG_ERR_UPSTREAM_TIMEOUT', 't')), 504);
    assert.equal(errorStatus(new GatewayError('TG_ERR_UPSTREAM_407', 'a')), 502);
    assert.equal(errorStatus(new Error('x')), 502);
  });
});

/** A loopback server that answers each CONNECT with a scripted reply, to see how refusals are reported. */
describe('openTunnel against scripted proxy answers', () => {
  let server: net.Server;
  let port = 0;
  let reply = '';
  const seen: string[] = [];
  const conns = new Set<net.Socket>();

  before(async () => {
    server = net.createServer((s) => {
      conns.add(s);
      s.on('error', () => {});
      s.once('data', (d) => {
        seen.push(d.toString('latin1'));
        if (reply === 'close') s.end();
        else if (reply !== 'silent') s.write(reply);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });
  after(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });

  async function attempt(answer: string, target = 'a.example', targetPort = 443, timeoutMs = 2000): Promise<GatewayError | net.Socket> {
    reply = answer;
    try {
      return await openTunnel({ proxy: parseProxyUrl(`http://127.0.0.1:${port}`), host: target, port: targetPort, timeoutMs });
    } catch (err) {
      assert.ok(err instanceof GatewayError, `not a GatewayError: ${String(err)}`);
      return err;
    }
  }

  test('200 gives a socket; bytes after the head are kept', async () => {
    const s = await attempt('HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x\r\n');
    assert.ok(s instanceof net.Socket);
    const first = new Promise<Buffer>((r) => s.once('data', r));
    s.resume();
    assert.equal((await first).toString(), 'SSH-2.0-x\r\n');
    s.destroy();
    assert.match(seen.at(-1)!, /^CONNECT a\.example:443 HTTP\/1\.1\r\n/);
  });

  test('407 names the missing credentials', async () => {
    const e = await attempt('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n');
    assert.ok(e instanceof GatewayError);
    assert.equal(e.code, 'TG_ERR_UPSTREAM_407');
    assert.equal(e.status, 407);
    assert.match(e.message, /user:password/);
  });

  test('403 to a port other than 443 says many proxies allow only 443', async () => {
    const e = await attempt('HTTP/1.1 403 Forbidden\r\n\r\n', '203.0.113.2', 22);
    assert.ok(e instanceof GatewayError);
    assert.equal(e.code, 'TG_ERR_UPSTREAM_403');
    assert.match(e.message, /port 443/);
    assert.match(e.message, /port 22/);
  });

  test('other statuses, garbage, early close and silence', async () => {
    const s503 = await attempt('HTTP/1.1 503 Service Unavailable\r\n\r\n');
    assert.ok(s503 instanceof GatewayError && s503.code === 'TG_ERR_UPSTREAM_STATUS' && s503.status === 503);
    const garbage = await attempt('SSH-2.0-OpenSSH\r\n\r\n');
    assert.ok(garbage instanceof GatewayError && garbage.code === 'TG_ERR_UPSTREAM_PROTOCOL');
    const closed = await attempt('close');
    assert.ok(closed instanceof GatewayError && closed.code === 'TG_ERR_UPSTREAM_CLOSED');
    const t0 = Date.now();
    const silent = await attempt('silent', 'a.example', 443, 300);
    assert.ok(silent instanceof GatewayError && silent.code === 'TG_ERR_UPSTREAM_TIMEOUT');
    assert.ok(Date.now() - t0 < 2000);
  });

  test('a proxy that is down is reported as unreachable', async () => {
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const deadPort = (dead.address() as net.AddressInfo).port;
    await new Promise<void>((r) => dead.close(() => r()));
    await assert.rejects(
      openTunnel({ proxy: parseProxyUrl(`http://127.0.0.1:${deadPort}`), host: 'a.example', port: 443, timeoutMs: 1000 }),
      (e: unknown) => e instanceof GatewayError && e.code === 'TG_ERR_UPSTREAM_UNREACHABLE' && /ECONNREFUSED/.test(e.message),
    );
  });
});

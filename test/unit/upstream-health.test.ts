import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseNoProxy } from '../../src/config/no-proxy';
import { parseProxyUrl, type ProxyEndpoint } from '../../src/config/proxy-url';
import { ConnContext } from '../../src/core/context';
import type { GatewayError } from '../../src/core/errors';
import { Outbounds } from '../../src/outbound/outbounds';
import { UpstreamProber } from '../../src/outbound/upstream-probe';
import { Router } from '../../src/route/router';
import { UpstreamHealth, type UpstreamState } from '../../src/route/upstream-health';

const A = parseProxyUrl('http://a.example:3128');
const B = parseProxyUrl('http://b.example:3128');
const C = parseProxyUrl('http://c.example:3128');

describe('UpstreamHealth', () => {
  it('keeps the configured order while all are up, and returns the same list (no allocation per connection)', () => {
    const h = new UpstreamHealth();
    const list = [A, B, C];
    assert.equal(h.order(list), list);
  });

  it('puts a down upstream last, the soonest retry first among the down ones, and back in place once up', () => {
    let now = 1000;
    const changes: Array<[string, boolean]> = [];
    const h = new UpstreamHealth(
      (p, s) => changes.push([p.display, s.up]),
      () => now,
    );
    h.failed(A, 'refused');
    assert.deepEqual(
      h.order([A, B, C]).map((p) => p.display),
      [B, C, A].map((p) => p.display),
    );
    now += 10;
    h.failed(B, 'refused');
    h.failed(A, 'refused again');
    // A failed twice: its retry (2 s) is later than B's (1 s).
    assert.deepEqual(
      h.order([A, B, C]).map((p) => p.display),
      [C, B, A].map((p) => p.display),
    );
    h.succeeded(A, 12);
    assert.deepEqual(
      h.order([A, B, C]).map((p) => p.display),
      [A, C, B].map((p) => p.display),
    );
    assert.deepEqual(changes, [
      [A.display, false],
      [B.display, false],
      [A.display, true],
    ]);
    const s: UpstreamState = h.state(A);
    assert.equal(s.up, true);
    assert.equal(s.latencyMs, 12);
    assert.equal(s.lastError, 'refused again', 'the last error is kept after recovery');
  });

  it('backs off 1 s, 2 s, 4 s … up to 60 s, and due() names the down ones whose time has come', () => {
    let now = 0;
    const h = new UpstreamHealth(undefined, () => now);
    const waits: number[] = [];
    for (let i = 0; i < 9; i++) {
      h.failed(A, 'x');
      waits.push(h.state(A).retryAt - now);
    }
    assert.deepEqual(waits, [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    assert.deepEqual(h.due([A, B]), []);
    now += 60_000;
    assert.deepEqual(h.due([A, B]), [A], 'B is up: never due');
  });

  it('with every upstream down, the connection still has all of them to try', () => {
    const h = new UpstreamHealth();
    h.failed(A, 'x');
    h.failed(B, 'x');
    assert.equal(h.order([A, B]).length, 2);
  });

  it('the Router hands the order to each decision: proxy is the first, proxies the whole list', () => {
    const h = new UpstreamHealth();
    const r = new Router({ http: [A, B], https: [B, C] }, parseNoProxy(''), h);
    h.failed(A, 'down');
    const d = r.select({ kind: 'http', name: 'x.test', address: '203.0.113.5', port: 80 });
    assert.equal(d.proxy, B);
    assert.deepEqual(d.proxies, [B, A]);
    assert.deepEqual(r.select({ kind: 'tls', name: 'x.test', address: '203.0.113.5', port: 443 }).proxies, [B, C]);
  });
});

/** A proxy that answers every CONNECT with `status` (after reading the head), on loopback. */
function fakeProxy(status: number): Promise<net.Server> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) s.end(`HTTP/1.1 ${status} X\r\nContent-Length: 0\r\n\r\n`);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** A loopback port with nothing listening: connect() is refused at once. */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const portOf = (s: net.Server): number => (s.address() as net.AddressInfo).port;

describe('failover over real sockets (Outbounds, UpstreamProber)', () => {
  let ok: net.Server;
  let forbidding: net.Server;
  let dead: ProxyEndpoint;
  before(async () => {
    ok = await fakeProxy(200);
    forbidding = await fakeProxy(403);
    dead = parseProxyUrl(`http://127.0.0.1:${await closedPort()}`);
  });
  after(() => {
    ok.close();
    forbidding.close();
  });

  const ctx = (): ConnContext =>
    new ConnContext('tls', { address: '192.0.2.7', port: 40000, family: 4 }, { address: '203.0.113.5', port: 443, family: 4 });

  it('a refused proxy is marked down and the next one carries the connection; ctx.via names the one used', async () => {
    const h = new UpstreamHealth();
    const out = new Outbounds(2000, undefined, false, h);
    const good = parseProxyUrl(`http://127.0.0.1:${portOf(ok)}`);
    const c = ctx();
    const sock = await out.open({ kind: 'proxy', proxy: dead, proxies: [dead, good], reason: 'test' }, c);
    sock.destroy();
    assert.equal(c.via, `127.0.0.1:${portOf(ok)}`);
    assert.equal(h.isUp(dead), false);
    assert.match(h.state(dead).lastError ?? '', /ECONNREFUSED/);
    assert.equal(h.isUp(good), true);
    assert.ok(h.state(good).latencyMs !== undefined);
  });

  it("a proxy's answer (403) is its policy: no failover to the next, and it stays up", async () => {
    const h = new UpstreamHealth();
    const out = new Outbounds(2000, undefined, false, h);
    const no = parseProxyUrl(`http://127.0.0.1:${portOf(forbidding)}`);
    const good = parseProxyUrl(`http://127.0.0.1:${portOf(ok)}`);
    await assert.rejects(out.open({ kind: 'proxy', proxy: no, proxies: [no, good], reason: 'test' }, ctx()), (e: GatewayError) => {
      assert.equal(e.code, 'TG_ERR_UPSTREAM_403');
      return true;
    });
    assert.equal(h.isUp(no), true);
  });

  it('every upstream down: one error that names each one', async () => {
    const h = new UpstreamHealth();
    const out = new Outbounds(2000, undefined, false, h);
    const dead2 = parseProxyUrl(`http://127.0.0.1:${await closedPort()}`);
    await assert.rejects(out.open({ kind: 'proxy', proxy: dead, proxies: [dead, dead2], reason: 'test' }, ctx()), (e: GatewayError) => {
      assert.equal(e.code, 'TG_ERR_UPSTREAM_UNREACHABLE');
      assert.match(e.message, /all 2 upstreams failed/);
      assert.ok(e.message.includes(dead.display) && e.message.includes(dead2.display));
      return true;
    });
  });

  it('the prober marks a dead upstream down, takes a 403 as alive, and brings a recovered one back', async () => {
    let now = 0;
    const h = new UpstreamHealth(undefined, () => now);
    const out = new Outbounds(2000);
    // The one that is down at first comes back on the same port.
    const back = net.createServer();
    await new Promise<void>((r) => back.listen(0, '127.0.0.1', () => r()));
    const backPort = portOf(back);
    await new Promise<void>((r) => back.close(() => r()));
    const revived = parseProxyUrl(`http://127.0.0.1:${backPort}`);
    const no = parseProxyUrl(`http://127.0.0.1:${portOf(forbidding)}`);
    const prober = new UpstreamProber({
      proxies: [revived, no],
      health: h,
      intervalMs: 30_000,
      probe: (p, signal) => out.probe(p, '203.0.113.5', 443, signal),
    });
    await prober.tick(now);
    assert.equal(h.isUp(revived), false);
    assert.equal(h.isUp(no), true, 'a 403 is an answer');
    // Before its backoff ends, it is not probed again.
    now += 500;
    await prober.tick(now);
    assert.equal(h.state(revived).failures, 1);
    const server = await new Promise<net.Server>((resolve) => {
      const s = net.createServer((c) => {
        c.on('error', () => {});
        c.once('data', () => c.end('HTTP/1.1 200 OK\r\n\r\n'));
      });
      s.listen(backPort, '127.0.0.1', () => resolve(s));
    });
    now += 600;
    await prober.tick(now);
    assert.equal(h.isUp(revived), true);
    prober.close();
    server.close();
  });
});

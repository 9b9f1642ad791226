import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { buildQuery } from '../../src/dns/message';
import { frame, unframe } from '../../src/dns/transports/shared';
import { TcpTransport } from '../../src/dns/transports/tcp';
import { buildConfig } from '../../src/config/config';
import { parseArgs } from '../../src/config/flags';
import { Logger } from '../../src/core/log';
import { DnsService } from '../../src/dns/service';
import { dnsSettings } from './dns-settings';
import type { DnsSettings } from '../../src/config/types';

/** A DNS-over-TCP server on loopback that answers each query by echoing it with QR set, in reverse order per read. */
function echoServer(opts: { closeAfterAnswer?: boolean }) {
  const state = { connections: 0, queries: 0, server: undefined as net.Server | undefined };
  state.server = net.createServer((sock) => {
    state.connections++;
    let buf: Buffer = Buffer.alloc(0);
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const { messages, rest } = unframe(buf);
      buf = rest;
      // Answer out of order: pipelining must match by ID, not by position.
      for (const m of messages.reverse()) {
        state.queries++;
        const a = Buffer.from(m);
        a.writeUInt16BE(a.readUInt16BE(2) | 0x8000, 2);
        sock.write(frame(a));
      }
      if (opts.closeAfterAnswer) sock.end();
    });
  });
  return state;
}

describe('dns over TCP transport (pooled, pipelined)', () => {
  const pipelined = echoServer({});
  const closing = echoServer({ closeAfterAnswer: true });
  let port1 = 0;
  let port2 = 0;
  before(async () => {
    await new Promise<void>((r) => pipelined.server!.listen(0, '127.0.0.1', () => r()));
    await new Promise<void>((r) => closing.server!.listen(0, '127.0.0.1', () => r()));
    port1 = (pipelined.server!.address() as net.AddressInfo).port;
    port2 = (closing.server!.address() as net.AddressInfo).port;
  });
  after(() => {
    pipelined.server!.close();
    closing.server!.close();
  });

  const open = (host: string, port: number): Promise<net.Socket> =>
    new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => resolve(s));
      s.once('error', reject);
    });

  it('carries many concurrent queries over few connections and matches answers by ID', async () => {
    const t = new TcpTransport({ host: '127.0.0.1', port: port1 }, open, 'test', { maxConnections: 2, perConnection: 64 });
    const names = Array.from({ length: 100 }, (_, i) => `n${i}.test`);
    const answers = await Promise.all(names.map((n, i) => t.query(buildQuery(i, n, 1), AbortSignal.timeout(2000))));
    for (let i = 0; i < names.length; i++) {
      assert.ok(answers[i]!.includes(Buffer.from(`n${i}`)), `answer ${i} belongs to its query`);
    }
    assert.ok(pipelined.connections <= 2, `${pipelined.connections} connections`);
    t.close();
  });

  it('reconnects when the server or proxy closed the connection', async () => {
    const t = new TcpTransport({ host: '127.0.0.1', port: port2 }, open, 'test', { maxConnections: 1 });
    for (let i = 0; i < 3; i++) {
      const a = await t.query(buildQuery(1, `again${i}.test`, 1), AbortSignal.timeout(2000));
      assert.ok(a.includes(Buffer.from(`again${i}`)));
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(closing.connections, 3);
    t.close();
  });

  it('a refused connection rejects with TG_ERR_DNS, at once', async () => {
    const t = new TcpTransport({ host: '127.0.0.1', port: 1 }, open, 'test');
    await assert.rejects(t.query(buildQuery(1, 'x.test', 1), AbortSignal.timeout(2000)), { code: 'TG_ERR_DNS' });
    t.close();
  });
});

describe('dns configuration', () => {
  const cfg = (args: string[], env: Record<string, string> = {}) => buildConfig(parseArgs(args).values, env);

  it('on by default; private domains default to no_proxy domains; --no-dns turns it off', () => {
    const c = cfg([], { no_proxy: '.corp.example,10.0.0.0/8,intranet.test' });
    assert.deepEqual(c.dns?.privateDomains, ['corp.example', 'intranet.test']);
    assert.equal(c.dns?.listenPort, 3153);
    assert.equal(c.dns?.timeoutMs, 2000);
    assert.equal(cfg(['--no-dns']).dns, undefined);
  });

  it('server addresses: ADDR, ADDR:PORT, [v6]:PORT; bad ones fail with TG_ERR_CONFIG', () => {
    assert.deepEqual(cfg(['--private-dns', '10.0.0.53']).dns?.privateDns, { host: '10.0.0.53', port: 53 });
    assert.deepEqual(cfg(['--public-dns', '10.0.0.53:5353']).dns?.publicDns, { host: '10.0.0.53', port: 5353 });
    assert.deepEqual(cfg(['--public-dns', '[2001:db8::53]:54']).dns?.publicDns, { host: '2001:db8::53', port: 54 });
    assert.deepEqual(cfg(['--public-dns', '2001:db8::53']).dns?.publicDns, { host: '2001:db8::53', port: 53 });
    assert.throws(() => cfg(['--private-dns', 'dns.corp']), { code: 'TG_ERR_CONFIG' });
    assert.throws(() => cfg(['--public-dns', '10.0.0.1:99999']), { code: 'TG_ERR_CONFIG' });
    assert.throws(() => cfg(['--dns-over-https-enabled', '--doh-url', 'http://x/dns-query']), { code: 'TG_ERR_CONFIG' });
    assert.throws(() => cfg(['--dns-proxy-listen', '3180']), { code: 'TG_ERR_CONFIG' });
  });
});

describe('dns routes', () => {
  const settings = (over: Partial<DnsSettings> = {}): DnsSettings =>
    dnsSettings({ privateDomains: ['corp.test'], privateDns: { host: '198.51.100.53', port: 53 }, ...over });

  // Routes only: nothing is opened through it.
  const proxy = { open: () => Promise.reject(new Error('not opened in these tests')), display: 'http://198.51.100.2:3128' };
  const svc = (over: Record<string, unknown> = {}, withProxy = true) =>
    new DnsService({
      dns: settings(over),
      proxy: withProxy ? proxy : undefined,
      connectTimeoutMs: 1000,
      fallbackServer: undefined,
      log: new Logger('error'),
    });
  const asked = { host: '203.0.113.53', port: 53 };

  it('private names to the private server, public names through the proxy to the server asked', () => {
    const s = svc();
    assert.deepEqual(
      [s.route('git.corp.test', asked)?.kind, s.route('git.corp.test', asked)?.upstream],
      ['private', 'udp 198.51.100.53:53'],
    );
    assert.deepEqual(
      [s.route('www.example.test', asked)?.kind, s.route('www.example.test', asked)?.upstream],
      ['proxy', 'tcp 203.0.113.53:53'],
    );
    s.close();
  });

  it('a public name asked of the private server is never sent to it', () => {
    const s = svc();
    assert.equal(s.route('www.example.test', { host: '198.51.100.53', port: 53 }), undefined);
    s.close();
    const withPublic = svc({ publicDns: { host: '203.0.113.53', port: 53 } });
    assert.equal(withPublic.route('www.example.test', { host: '198.51.100.53', port: 53 })?.upstream, 'tcp 203.0.113.53:53');
    withPublic.close();
  });

  it('no proxy or --dns-over-tcp-disabled: direct; DoH when enabled', () => {
    assert.equal(svc({}, false).route('www.example.test', asked)?.kind, 'direct');
    assert.equal(svc({ overTcpDisabled: true }).route('www.example.test', asked)?.kind, 'direct');
    const doh = svc({ dohEnabled: true, dohUrl: new URL('https://dns.example/dns-query') });
    assert.equal(doh.route('www.example.test', asked)?.kind, 'doh');
    assert.equal(doh.route('x.corp.test', asked)?.kind, 'private');
  });
});

describe('dns over UDP transport (pooled sockets)', () => {
  it('answers by ID over a few sockets, ignores other senders, and asks again over TCP when truncated', async () => {
    const { UdpTransport } = await import('../../src/dns/transports/udp');
    const dgram = await import('node:dgram');
    const srv = dgram.createSocket('udp4');
    await new Promise<void>((r) => srv.bind(0, '127.0.0.1', () => r()));
    const port = srv.address().port;
    const spoofer = dgram.createSocket('udp4');
    const sources = new Set<number>();
    srv.on('message', (m, rinfo) => {
      sources.add(rinfo.port);
      const a = Buffer.from(m);
      // "big" names come back truncated: the client must retry over TCP.
      a.writeUInt16BE(0x8180 | (m.includes(Buffer.from('big')) ? 0x0200 : 0), 2);
      // A forged answer from another port arrives first; it must be ignored.
      const forged = Buffer.from(a);
      forged.writeUInt16BE(0x8183, 2);
      spoofer.send(forged, rinfo.port, rinfo.address, () => srv.send(a, rinfo.port, rinfo.address));
    });
    const tcpSrv = net.createServer((sock) => {
      let buf: Buffer = Buffer.alloc(0);
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        const { messages, rest } = unframe(buf);
        buf = rest;
        for (const m of messages) {
          const a = Buffer.from(m);
          a.writeUInt16BE(0x8180, 2);
          sock.write(frame(Buffer.concat([a, Buffer.from('tcp-extra')])));
        }
      });
    });
    await new Promise<void>((r) => tcpSrv.listen(port, '127.0.0.1', () => r()));
    const open = (host: string, p: number): Promise<net.Socket> =>
      new Promise((resolve, reject) => {
        const s = net.connect({ host, port: p }, () => resolve(s));
        s.once('error', reject);
      });
    const server = { host: '127.0.0.1', port };
    const t = new UdpTransport(server, new TcpTransport(server, open, 'tcp'));
    const answers = await Promise.all(
      Array.from({ length: 60 }, (_, i) => t.query(buildQuery(i, `q${i}.test`, 1), AbortSignal.timeout(2000))),
    );
    answers.forEach((a, i) => {
      assert.equal(a.readUInt16BE(2) & 0xf, 0, 'forged NXDOMAIN ignored');
      assert.ok(a.includes(Buffer.from(`q${i}`)));
    });
    assert.ok(sources.size <= 8, `${sources.size} source ports`);
    const big = await t.query(buildQuery(1, 'big.test', 1), AbortSignal.timeout(2000));
    assert.ok(big.includes(Buffer.from('tcp-extra')), 'truncated over UDP, full answer over TCP');
    t.close();
    srv.close();
    spoofer.close();
    tcpSrv.close();
  });
});

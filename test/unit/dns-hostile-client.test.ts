/**
 * The DNS gateway against a hostile client on the LAN: names that are not
 * host names, private names aimed at a server of the client's choosing,
 * predictable IDs, floods; and a server that closes TCP connections under
 * load (the SERVFAILs seen at 3,000 queries/s).
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { describe, it } from 'node:test';
import { Logger } from '../../src/core/log';
import type { Datagram } from '../../src/inbound/udp-listener';
import { ClientRateLimiter, InflightLimit } from '../../src/dns/client-limit';
import { HEADER_LEN, buildQuery, parseMessage } from '../../src/dns/message';
import { NameMap } from '../../src/dns/name-map';
import { DnsResolver, presentName, type DnsRoute } from '../../src/dns/resolver';
import { DnsService } from '../../src/dns/service';
import { frame, unframe, type DnsTransport } from '../../src/dns/transports/shared';
import { TcpTransport } from '../../src/dns/transports/tcp';
import { UdpTransport } from '../../src/dns/transports/udp';
import { dnsSettings } from './dns-settings';

const CLIENT = { address: '192.0.2.2', port: 5353, family: 4 as const };
const DST = { address: '203.0.113.53', port: 53, family: 4 as const };
/** The label of the name that once wrote headers into squid's request line. */
const CRLF_LABEL = 'x HTTP/1.1\r\nVia: 1.1 x\r\n\r\nGET /\x1b[31m\x7f';

/** Answers every query with one A record 203.0.113.2 (TTL 300). */
class OneAddress implements DnsTransport {
  readonly description = 'fixture';
  queries = 0;
  query(msg: Buffer): Promise<Buffer> {
    this.queries++;
    const out = Buffer.concat([Buffer.from(msg), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 203, 0, 113, 2])]);
    out.writeUInt16BE(0x8180, 2);
    out.writeUInt16BE(1, 6);
    return Promise.resolve(out);
  }
  close(): void {}
}

function resolverWith(names: NameMap, log = new Logger('error')): DnsResolver {
  const route: DnsRoute = { kind: 'proxy', transport: new OneAddress(), upstream: 'fixture' };
  return new DnsResolver({ router: { route: () => route }, timeoutMs: 500, cacheSize: 100, names, log });
}

/** A query whose first label has a '.' inside it (a.b) followed by example.test. */
function dottedLabelQuery(id: number): Buffer {
  const q = buildQuery(id, 'example.test', 1);
  return Buffer.concat([q.subarray(0, HEADER_LEN), Buffer.from([3, 0x61, 0x2e, 0x62]), q.subarray(HEADER_LEN)]);
}

describe('dns question names are validated where they enter', () => {
  it('regression: a name with CR LF and control bytes is answered but never remembered (it became CONNECT name:22 on the wire)', async () => {
    const names = new NameMap(100);
    const r = resolverWith(names);
    const out = await r.handle(buildQuery(1, `${CRLF_LABEL}.example.test`, 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(parseMessage(out!).header.ancount, 1, 'forwarded and answered as asked');
    assert.equal(names.lookup(CLIENT.address, '203.0.113.2'), undefined);
    assert.equal(names.size, 0);
    assert.equal(r.stats.notHostnames, 1);
  });

  it('host names with _ (service labels) and upper case are remembered, lowercased', async () => {
    const names = new NameMap(100);
    const r = resolverWith(names);
    await r.handle(buildQuery(1, '_ssh._tcp.Git.Example.test', 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(names.lookup(CLIENT.address, '203.0.113.2'), '_ssh._tcp.git.example.test');
    assert.equal(r.stats.notHostnames, 0);
  });

  it('a label with a dot inside does not read as two labels (a\\.b.example.test is not a.b.example.test)', async () => {
    const q = parseMessage(dottedLabelQuery(1)).question!;
    assert.equal(q.name, 'a\\.b.example.test');
    const names = new NameMap(100);
    await resolverWith(names).handle(dottedLabelQuery(2), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(names.size, 0);
  });

  it('NameMap.remember refuses what is not a host name by itself (defence in depth)', () => {
    const m = new NameMap(100);
    for (const bad of [`${CRLF_LABEL}.example.test`, 'a b.test', 'a\\.b.test', 'x\x00.test', '', '0x7f000001', 'caf\xe9.test']) {
      assert.equal(m.remember(CLIENT.address, '203.0.113.2', bad, 300), false, JSON.stringify(bad));
    }
    assert.equal(m.size, 0);
    assert.equal(m.remember(CLIENT.address, '203.0.113.2', 'WWW.Example.Test.', 300), true);
    assert.equal(m.lookup(CLIENT.address, '203.0.113.2'), 'www.example.test');
  });

  it('the query log line carries no raw control bytes: names that are not host names are \\DDD-escaped', async () => {
    const lines: string[] = [];
    const log = new Logger('debug', (chunk) => lines.push(...chunk.split('\n')));
    const r = resolverWith(new NameMap(10), log);
    await r.handle(buildQuery(1, `${CRLF_LABEL}.example.test`, 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    log.flush();
    const line = lines.find((l) => l.includes('dns client='));
    assert.ok(line, lines.join('\n'));
    assert.doesNotMatch(line.trimEnd(), /[\x00-\x1f\x7f-\xff]/);
    assert.ok(
      line.includes(String.raw`name=x\032HTTP\0471.1\013\010Via\058\0321.1\032x\013\010\013\010GET\032\047\027\09131m\127.example.test `),
      line,
    );
    assert.equal(presentName('a\\.b.example.test'), 'a\\046b.example.test');
    assert.equal(presentName('www.Example.test'), 'www.Example.test');
    assert.equal(presentName(''), '.');
  });
});

describe('dns routes of private names without --private-dns', () => {
  const settings = dnsSettings({ privateDomains: ['corp.test'] });

  // Routes only: nothing is opened through it.
  const proxy = { open: () => Promise.reject(new Error('not opened in these tests')), display: 'http://198.51.100.2:3128' };
  const classify = (a: string): 'local' | 'internal' | 'public' =>
    a === '192.0.2.1' ? 'local' : a.startsWith('10.') ? 'internal' : 'public';
  const svc = (own: { host: string; port: number } | undefined) =>
    new DnsService({
      dns: settings,
      proxy,
      connectTimeoutMs: 1000,
      fallbackServer: undefined,
      ownResolver: own,
      classify,
      log: new Logger('error'),
    });

  it("regression: a private name asked of a public server goes to the gateway's own resolver, not to that server (it left by UDP, outside the proxy)", () => {
    const s = svc({ host: '198.51.100.53', port: 53 });
    assert.equal(s.route('secret.corp.test', { host: '203.0.113.53', port: 53 })?.upstream, 'udp 198.51.100.53:53');
    assert.equal(s.route('secret.corp.test', { host: '192.0.2.1', port: 53 })?.upstream, 'udp 198.51.100.53:53', 'asked of the gateway');
    assert.equal(s.route('secret.corp.test', undefined)?.upstream, 'udp 198.51.100.53:53', 'destination unknown (UDP after REDIRECT)');
    assert.equal(
      s.route('secret.corp.test', { host: '10.0.0.53', port: 53 })?.upstream,
      'udp 10.0.0.53:53',
      'an internal server asked: as without the gateway',
    );
    s.close();
  });

  it("with no resolver of its own, the gateway answers SERVFAIL (no route) rather than ask the client's public server", () => {
    const s = svc(undefined);
    assert.equal(s.route('secret.corp.test', { host: '203.0.113.53', port: 53 }), undefined);
    s.close();
  });
});

describe('dns IDs of upstream queries', () => {
  it("regression: IDs are not Math.random's (RFC 5452): with Math.random stuck, they still vary", async () => {
    const srv = dgram.createSocket('udp4');
    await new Promise<void>((r) => srv.bind(0, '127.0.0.1', () => r()));
    const ids: number[] = [];
    srv.on('message', (m, rinfo) => {
      ids.push(m.readUInt16BE(0));
      const a = Buffer.from(m);
      a.writeUInt16BE(0x8180, 2);
      srv.send(a, rinfo.port, rinfo.address);
    });
    const server = { host: '127.0.0.1', port: srv.address().port };
    const t = new UdpTransport(server, new TcpTransport(server, () => Promise.reject(new Error('no tcp')), 'tcp'));
    const random = Math.random;
    Math.random = () => 0.5;
    try {
      // One at a time: the old code drew 0x8000 for each, and no collision check could help.
      for (let i = 0; i < 20; i++) await t.query(buildQuery(1, `id${i}.test`, 1), AbortSignal.timeout(2000));
    } finally {
      Math.random = random;
      t.close();
      srv.close();
    }
    assert.equal(ids.length, 20);
    assert.ok(new Set(ids).size >= 18, `IDs ${ids.join(',')}`);
  });
});

/** A DNS-over-TCP server that, like dnsmasq, answers `perConnection` queries on a connection and then closes it, unread queries and all. */
function limitedServer(perConnection: number) {
  const state = { connections: 0, answered: 0, server: undefined as unknown as net.Server };
  state.server = net.createServer((sock) => {
    state.connections++;
    let buf: Buffer = Buffer.alloc(0);
    let n = 0;
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const { messages, rest } = unframe(buf);
      buf = rest;
      for (const m of messages) {
        if (n >= perConnection) break;
        n++;
        state.answered++;
        const a = Buffer.from(m);
        a.writeUInt16BE(a.readUInt16BE(2) | 0x8000, 2);
        sock.write(frame(a));
      }
      // Closed with queries unread: the kernel sends a reset, and what the client wrote after is lost.
      if (n >= perConnection) sock.end(() => sock.destroy());
    });
  });
  return state;
}

describe('dns over TCP under load: the server closes connections', () => {
  it('regression: queries on a connection the server closed are sent again, not SERVFAIL; the per-connection limit is learned', async () => {
    const s = limitedServer(20);
    await new Promise<void>((r) => s.server.listen(0, '127.0.0.1', () => r()));
    const port = (s.server.address() as net.AddressInfo).port;
    const open = (host: string, p: number): Promise<net.Socket> =>
      new Promise((resolve, reject) => {
        const c = net.connect({ host, port: p }, () => resolve(c));
        c.once('error', reject);
      });
    const t = new TcpTransport({ host: '127.0.0.1', port }, open, 'test', { maxConnections: 4, perConnection: 64 });
    try {
      // Three waves, as a client at a steady rate sends them.
      for (let wave = 0; wave < 3; wave++) {
        const results = await Promise.allSettled(
          Array.from({ length: 150 }, (_, i) => t.query(buildQuery(i, `w${wave}q${i}.test`, 1), AbortSignal.timeout(3000))),
        );
        const failed = results.filter((x) => x.status === 'rejected');
        assert.equal(failed.length, 0, `wave ${wave}: ${failed.length} failed: ${failed[0]?.reason}`);
      }
      assert.equal(t.learnedLimit, 20);
      // Once learned, no connection is given more than the server answers: no more retries.
      const retries = t.retries;
      await Promise.all(Array.from({ length: 100 }, (_, i) => t.query(buildQuery(i, `late${i}.test`, 1), AbortSignal.timeout(3000))));
      assert.equal(t.retries, retries, 'queries sent again after the limit was learned');
    } finally {
      t.close();
      s.server.close();
    }
  });
});

describe('dns over TCP: a server that closes every connection unanswered', () => {
  it('is not dialled in a loop until the timeout: the query fails after a few connections', async () => {
    let connections = 0;
    const server = net.createServer((sock) => {
      connections++;
      sock.on('error', () => undefined);
      sock.on('data', () => sock.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    const open = (host: string, p: number): Promise<net.Socket> =>
      new Promise((resolve, reject) => {
        const c = net.connect({ host, port: p }, () => resolve(c));
        c.once('error', reject);
      });
    const t = new TcpTransport({ host: '127.0.0.1', port }, open, 'test');
    try {
      const t0 = Date.now();
      await assert.rejects(t.query(buildQuery(1, 'x.test', 1), AbortSignal.timeout(2000)), { code: 'TG_ERR_DNS' });
      assert.ok(Date.now() - t0 < 1000, 'failed at once, not at the timeout');
      assert.ok(connections <= 4, `${connections} connections for one query`);
      await assert.rejects(t.query(buildQuery(2, 'y.test', 1), AbortSignal.timeout(2000)), { code: 'TG_ERR_DNS' });
      assert.ok(connections <= 5, `${connections} connections for two queries`);
    } finally {
      t.close();
      server.close();
    }
  });
});

function datagram(data: Buffer, client: string, replies: Buffer[]): Datagram {
  return { data, client: { address: client, port: 5353, family: 4 }, destination: DST, reply: (b) => replies.push(b) };
}

describe('dns per-client protection', () => {
  it('token bucket: bursts of twice the rate, then the rate; clients apart; bounded map', () => {
    let now = 0;
    const l = new ClientRateLimiter(10, 3, () => now);
    let ok = 0;
    for (let i = 0; i < 50; i++) if (l.take('a')) ok++;
    assert.equal(ok, 20, 'burst of 2 x rate');
    assert.equal(l.take('b'), true, 'another client has its own bucket');
    now += 500;
    ok = 0;
    for (let i = 0; i < 50; i++) if (l.take('a')) ok++;
    assert.equal(ok, 5, 'half a second at 10/s');
    l.take('c');
    l.take('d');
    assert.ok(l.size <= 3);
    assert.equal(new ClientRateLimiter(0).take('a'), true, '0: no limit');
  });

  it('in flight: per client and in total; entries leave with their queries', () => {
    const f = new InflightLimit(2, 3);
    assert.equal(f.enter('a'), undefined);
    assert.equal(f.enter('a'), undefined);
    assert.equal(f.enter('a'), 'clientBusy');
    assert.equal(f.enter('b'), undefined);
    assert.equal(f.enter('c'), 'overloaded');
    f.leave('a');
    assert.equal(f.enter('c'), undefined);
    f.leave('a');
    f.leave('b');
    f.leave('c');
    assert.equal(f.size, 0);
  });

  const settings = dnsSettings({ cacheSize: 100 });

  /** A service whose upstream is OneAddress (its route() replaced), with the given protection options. */
  function service(over: Partial<ConstructorParameters<typeof DnsService>[0]> = {}): DnsService {
    const s = new DnsService({
      dns: settings,
      proxy: undefined,
      connectTimeoutMs: 1000,
      fallbackServer: undefined,
      log: new Logger('error'),
      ...over,
    });
    const route: DnsRoute = { kind: 'direct', transport: new OneAddress(), upstream: 'fixture' };
    s.route = () => route;
    return s;
  }

  it('a flood beyond --dns-client-rate is dropped and counted; another client is still answered', async () => {
    const s = service({ clientRate: 50 });
    const flood: Buffer[] = [];
    const other: Buffer[] = [];
    for (let i = 0; i < 1000; i++) s.onDatagram(datagram(buildQuery(i, 'same.example.test', 1), '192.0.2.2', flood));
    for (let i = 0; i < 10; i++) s.onDatagram(datagram(buildQuery(i, 'same.example.test', 1), '192.0.2.3', other));
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(flood.length >= 100 && flood.length <= 110, `${flood.length} answers to the flooder (burst 100)`);
    assert.equal(other.length, 10);
    assert.ok(s.stats.rateLimited >= 890, `rateLimited ${s.stats.rateLimited}`);
    s.close();
  });

  it('queries in flight are bounded per client and in total (dropped, counted)', async () => {
    const s = service({ maxInflightPerClient: 5, maxInflight: 8 });
    const a: Buffer[] = [];
    const b: Buffer[] = [];
    for (let i = 0; i < 20; i++) s.onDatagram(datagram(buildQuery(i, `a${i}.example.test`, 1), '192.0.2.2', a));
    for (let i = 0; i < 20; i++) s.onDatagram(datagram(buildQuery(i, `b${i}.example.test`, 1), '192.0.2.3', b));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(a.length, 5);
    assert.equal(b.length, 3, 'the rest of the total');
    assert.equal(s.stats.clientBusy, 15);
    assert.equal(s.stats.overloaded, 17);
    // Answered queries leave: the client may ask again.
    s.onDatagram(datagram(buildQuery(1, 'again.example.test', 1), '192.0.2.2', a));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(a.length, 6);
    s.close();
  });

  it('a client allowClient refuses gets no answer over UDP, and its TCP connection is closed', async () => {
    const s = service({ allowClient: (address) => address !== '192.0.2.66' });
    const refused: Buffer[] = [];
    const ok: Buffer[] = [];
    s.onDatagram(datagram(buildQuery(1, 'x.example.test', 1), '192.0.2.66', refused));
    s.onDatagram(datagram(buildQuery(1, 'x.example.test', 1), '192.0.2.2', ok));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(refused.length, 0);
    assert.equal(ok.length, 1);
    const sock = new net.Socket();
    s.acceptTcp(sock, { client: { address: '192.0.2.66', port: 4000, family: 4 }, destination: DST } as never);
    assert.equal(sock.destroyed, true);
    assert.equal(s.stats.refused, 2);
    s.close();
  });
});

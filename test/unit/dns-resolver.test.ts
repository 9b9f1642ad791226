import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Logger } from '../../src/core/log';
import { buildQuery, parseMessage } from '../../src/dns/message';
import { NameMap } from '../../src/dns/name-map';
import { DnsResolver, isPrivateName, type DnsRoute } from '../../src/dns/resolver';
import { frame, unframe, type DnsTransport } from '../../src/dns/transports/shared';

const CLIENT = { address: '192.0.2.2', port: 5353, family: 4 as const };
const DST = { address: '203.0.113.53', port: 53, family: 4 as const };

/** Answers every A query with `count` addresses 203.0.113.1.. (TTL 300), after `delayMs`. Counts what reaches it. */
class FixtureServer implements DnsTransport {
  readonly description = 'fixture';
  queries = 0;
  constructor(private readonly opts: { count?: number; delayMs?: number; silent?: boolean; otherName?: boolean } = {}) {}
  query(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    this.queries++;
    return new Promise((resolve, reject) => {
      signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
      if (this.opts.silent) return;
      setTimeout(() => {
        const q = parseMessage(msg).question!;
        const head = buildQuery(msg.readUInt16BE(0), this.opts.otherName ? 'other.test' : q.name, q.type);
        const n = this.opts.count ?? 1;
        const rrs = Array.from({ length: n }, (_, i) => Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 203, 0, 113, 1 + i]));
        const out = Buffer.concat([head, ...rrs]);
        out.writeUInt16BE(0x8180, 2);
        out.writeUInt16BE(n, 6);
        resolve(out);
      }, this.opts.delayMs ?? 0);
    });
  }
  close(): void {}
}

function resolver(t: DnsTransport, timeoutMs = 500, names = new NameMap(100)): DnsResolver {
  const route: DnsRoute = { kind: 'proxy', transport: t, upstream: 'fixture' };
  return new DnsResolver({ router: { route: () => route }, timeoutMs, cacheSize: 100, names, log: new Logger('error') });
}

describe('dns resolver', () => {
  it('answers from the upstream, then from the cache; identical concurrent queries share one upstream query', async () => {
    const t = new FixtureServer({ delayMs: 20 });
    const r = resolver(t);
    const q = buildQuery(0x4242, 'www.example.test', 1);
    const [a, b] = await Promise.all([
      r.handle(q, { client: CLIENT, destination: DST, protocol: 'udp' }),
      r.handle(q, { client: CLIENT, destination: DST, protocol: 'udp' }),
    ]);
    assert.equal(t.queries, 1);
    assert.equal(a!.readUInt16BE(0), 0x4242);
    assert.deepEqual(a, b);
    await r.handle(buildQuery(7, 'WWW.example.test', 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(t.queries, 1, 'cache hit, any case');
    assert.equal(r.stats.cacheHits, 1);
    assert.equal(r.stats.shared, 1);
  });

  it('remembers the addresses it answered for name recovery', async () => {
    const names = new NameMap(100);
    const r = resolver(new FixtureServer(), 500, names);
    await r.handle(buildQuery(1, 'git.example.test', 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(names.lookup(CLIENT.address, '203.0.113.1'), 'git.example.test');
    assert.equal(names.lookup('192.0.2.99', '203.0.113.1'), undefined);
  });

  it('a silent upstream: SERVFAIL at the timeout, not later', async () => {
    const r = resolver(new FixtureServer({ silent: true }), 150);
    const t0 = Date.now();
    const out = await r.handle(buildQuery(9, 'slow.test', 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    const ms = Date.now() - t0;
    assert.equal(out!.readUInt16BE(2) & 0xf, 2);
    assert.ok(ms >= 140 && ms < 400, `${ms} ms`);
  });

  it('an answer to another question is never passed on (SERVFAIL)', async () => {
    const r = resolver(new FixtureServer({ otherName: true }));
    const out = await r.handle(buildQuery(9, 'asked.test', 1), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(out!.readUInt16BE(2) & 0xf, 2);
  });

  it('UDP answers larger than the client takes are truncated with TC; TCP gets them whole', async () => {
    const r = resolver(new FixtureServer({ count: 40 }));
    const q = buildQuery(3, 'many.test', 1);
    const udp = await r.handle(q, { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.ok(udp!.length <= 512);
    assert.equal(parseMessage(udp!).header.tc, true);
    const tcp = await r.handle(q, { client: CLIENT, destination: DST, protocol: 'tcp' });
    assert.equal(parseMessage(tcp!).header.ancount, 40);
    const edns = await r.handle(buildQuery(4, 'many.test', 1, { ednsSize: 4096 }), { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(parseMessage(edns!).header.ancount, 40, 'fits the EDNS size');
  });

  it('garbage: dropped or FORMERR, never thrown, never sent upstream', async () => {
    const t = new FixtureServer();
    const r = resolver(t);
    assert.equal(await r.handle(Buffer.from([1, 2, 3]), { client: CLIENT, destination: DST, protocol: 'udp' }), undefined);
    const bad = Buffer.concat([buildQuery(5, 'x.test', 1), Buffer.from([0xc0])]);
    const out = await r.handle(bad, { client: CLIENT, destination: DST, protocol: 'udp' });
    assert.equal(out!.readUInt16BE(2) & 0xf, 1);
    assert.equal(t.queries, 0);
  });
});

describe('dns routing and framing', () => {
  it('private names match on label boundaries only', () => {
    assert.equal(isPrivateName('git.corp.test', ['corp.test']), true);
    assert.equal(isPrivateName('CORP.TEST.', ['corp.test']), true);
    assert.equal(isPrivateName('notcorp.test', ['corp.test']), false);
    assert.equal(isPrivateName('corp.test.evil.example', ['corp.test']), false);
  });

  it('TCP framing: split reads and several messages per read', () => {
    const a = buildQuery(1, 'a.test', 1);
    const b = buildQuery(2, 'b.test', 28);
    const stream = Buffer.concat([frame(a), frame(b)]);
    const first = unframe(stream.subarray(0, 5));
    assert.equal(first.messages.length, 0);
    const all = unframe(stream);
    assert.deepEqual(all.messages, [a, b]);
    assert.equal(all.rest.length, 0);
    const partial = unframe(stream.subarray(0, frame(a).length + 3));
    assert.deepEqual(partial.messages, [a]);
    assert.equal(partial.rest.length, 3);
  });
});

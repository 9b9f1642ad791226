import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DnsCache } from '../../src/dns/cache';
import { parseMessage } from '../../src/dns/message';
import { NameMap } from '../../src/dns/name-map';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const ANSWER = hex(`
  1234 8180 0001 0001 0000 0000
  01 61 00 0001 0001
  c00c 0001 0001 0000003c 0004 cb007102`);

describe('dns cache', () => {
  it('serves an entry until its TTL, reporting its age in whole seconds', () => {
    let now = 1_000_000;
    const c = new DnsCache(10, () => now);
    c.set('k', ANSWER, parseMessage(ANSWER), 60);
    now += 59_999;
    assert.equal(c.get('k')?.age, 59);
    now += 1;
    assert.equal(c.get('k'), undefined, 'expired at the TTL');
    assert.equal(c.size, 0, 'expired entries are dropped');
    assert.equal(c.hits, 1);
    assert.equal(c.misses, 1);
  });

  it('is bounded: the least recently used entry goes first', () => {
    const c = new DnsCache(2);
    const p = parseMessage(ANSWER);
    c.set('a', ANSWER, p, 60);
    c.set('b', ANSWER, p, 60);
    assert.ok(c.get('a'));
    c.set('c', ANSWER, p, 60);
    assert.ok(c.get('a'));
    assert.equal(c.get('b'), undefined);
    assert.ok(c.get('c'));
    assert.equal(c.size, 2);
  });

  it('size 0 or TTL 0: nothing is kept', () => {
    const p = parseMessage(ANSWER);
    const off = new DnsCache(0);
    off.set('a', ANSWER, p, 60);
    assert.equal(off.size, 0);
    const c = new DnsCache(5);
    c.set('a', ANSWER, p, 0);
    assert.equal(c.get('a'), undefined);
  });
});

describe('dns name map', () => {
  it('per client: the name each client resolved, the latest one where names share an address', () => {
    let now = 0;
    const m = new NameMap(100, 0, () => now);
    m.remember('192.0.2.2', '203.0.113.2', 'www.example.test', 300);
    m.remember('192.0.2.3', '203.0.113.2', 'api.example.test', 300);
    m.remember('192.0.2.2', '203.0.113.2', 'Git.Example.Test', 300);
    assert.equal(m.lookup('192.0.2.2', '203.0.113.2'), 'git.example.test');
    assert.equal(m.lookup('192.0.2.3', '203.0.113.2'), 'api.example.test');
    assert.equal(m.lookup('192.0.2.4', '203.0.113.2'), undefined);
    now = 300_000;
    assert.equal(m.lookup('192.0.2.2', '203.0.113.2'), undefined, 'gone after the TTL');
  });

  it('keeps entries at least minTtlSeconds and stays bounded', () => {
    let now = 0;
    const m = new NameMap(2, 60, () => now);
    m.remember('c', '2001:DB8::1', 'a.test', 0);
    now = 59_000;
    assert.equal(m.lookup('c', '2001:db8::1'), 'a.test');
    m.remember('c', '2', 'b.test', 10);
    m.remember('c', '3', 'c.test', 10);
    assert.equal(m.size, 2);
    assert.equal(m.lookup('c', '2001:db8::1'), undefined, 'oldest evicted');
  });
});

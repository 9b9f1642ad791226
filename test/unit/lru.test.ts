import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Lru } from '../../src/core/lru';

const keys = (l: Lru<string, number>): string[] => [...l].map(([k]) => k);

describe('lru', () => {
  it('evicts the least recently used first, in order', () => {
    const evicted: string[] = [];
    const l = new Lru<string, number>(3, (k) => evicted.push(k));
    for (const [i, k] of ['a', 'b', 'c', 'd', 'e'].entries()) l.set(k, i);
    assert.deepEqual(evicted, ['a', 'b']);
    assert.deepEqual(keys(l), ['c', 'd', 'e'], 'iteration: oldest first');
    assert.equal(l.size, 3);
  });

  it('get refreshes recency; peek and has do not', () => {
    const l = new Lru<string, number>(2);
    l.set('a', 1);
    l.set('b', 2);
    assert.equal(l.get('a'), 1);
    l.set('c', 3);
    assert.equal(l.peek('b'), undefined, 'b was the least recently used once a was read');
    assert.deepEqual(keys(l), ['a', 'c']);
    assert.equal(l.peek('a'), 1);
    assert.equal(l.has('a'), true);
    l.set('d', 4);
    assert.deepEqual(keys(l), ['c', 'd'], 'peek and has left a the oldest');
  });

  it('set of a present key makes it the youngest, evicts nothing, and hands the replaced value to onEvict', () => {
    const evicted: Array<[string, number]> = [];
    const l = new Lru<string, number>(2, (k, v) => evicted.push([k, v]));
    l.set('a', 1);
    l.set('b', 2);
    l.set('a', 10);
    assert.deepEqual(keys(l), ['b', 'a']);
    assert.deepEqual(evicted, [['a', 1]], 'an fd-owning caller must close what it replaced');
    l.set('a', 10);
    assert.equal(evicted.length, 1, 'the same value again is not handed back');
    l.set('c', 3);
    assert.deepEqual(evicted, [
      ['a', 1],
      ['b', 2],
    ]);
  });

  it('onEvict sees the cache without the evicted entry; delete and clear call no onEvict', () => {
    let seen: number | undefined;
    const l = new Lru<string, number>(1, (k) => (seen = l.has(k) ? -1 : l.size));
    l.set('a', 1);
    l.set('b', 2);
    assert.equal(seen, 0);
    seen = undefined;
    assert.equal(l.delete('b'), true);
    assert.equal(l.delete('b'), false);
    l.set('c', 3);
    l.clear();
    assert.equal(seen, undefined);
    assert.equal(l.size, 0);
  });

  it('capacity 1 keeps the latest; capacity 0 (or less) keeps nothing and calls no onEvict', () => {
    const one = new Lru<string, number>(1);
    one.set('a', 1);
    one.set('b', 2);
    assert.deepEqual(keys(one), ['b']);
    for (const cap of [0, -1]) {
      let evictions = 0;
      const none = new Lru<string, number>(cap, () => evictions++);
      none.set('a', 1);
      assert.equal(none.size, 0);
      assert.equal(none.get('a'), undefined);
      assert.equal(evictions, 0, 'the caller still owns a value that was never stored');
    }
  });

  it('works again after clear (its cursor into the map is dropped with it)', () => {
    const l = new Lru<string, number>(2);
    for (let i = 0; i < 5; i++) l.set(`k${i}`, i);
    l.clear();
    for (let i = 0; i < 5; i++) l.set(`n${i}`, i);
    assert.deepEqual(keys(l), ['n3', 'n4']);
  });

  // The LRU keeps one Map iterator as its pointer to the oldest entry (a fresh
  // keys() walks every deleted slot). This compares it against an array model
  // through get/set/delete churn, across the Map's rehashes.
  it('matches a reference model through random get/set/delete', () => {
    let seed = 12345;
    const rand = (n: number): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
    for (const cap of [1, 2, 7, 64]) {
      const evicted: string[] = [];
      const l = new Lru<string, number>(cap, (k) => evicted.push(k));
      const model: string[] = [];
      const modelEvicted: string[] = [];
      for (let i = 0; i < 20_000; i++) {
        const k = `k${rand(cap * 3)}`;
        const op = rand(10);
        const at = model.indexOf(k);
        if (op < 4) {
          const got = l.get(k);
          assert.equal(got !== undefined, at >= 0);
          if (at >= 0) model.push(...model.splice(at, 1));
        } else if (op < 9) {
          l.set(k, i);
          if (at >= 0) {
            model.splice(at, 1);
            modelEvicted.push(k); // replaced value
          } else if (model.length >= cap) modelEvicted.push(model.shift()!);
          model.push(k);
        } else {
          assert.equal(l.delete(k), at >= 0);
          if (at >= 0) model.splice(at, 1);
        }
      }
      assert.deepEqual(keys(l), model, `capacity ${cap}: order`);
      assert.deepEqual(evicted, modelEvicted, `capacity ${cap}: evictions`);
    }
  });
});

import assert from 'node:assert/strict';
import { Socks5Reader } from '../../src/outbound/socks5';
import type { Rng, Target } from './harness';

const stats = { done: 0, fail: 0, needMore: 0 };

/** A proxy's answer: method, maybe the user/password status, a CONNECT reply of some address type, and trailing bytes. */
function answer(r: Rng): Buffer {
  const auth = r.chance(0.5);
  const parts: Buffer[] = [Buffer.from([r.chance(0.95) ? 5 : r.int(256), r.chance(0.9) ? (auth ? 2 : 0) : r.int(256)])];
  if (auth) parts.push(Buffer.from([r.chance(0.95) ? 1 : r.int(256), r.chance(0.9) ? 0 : r.int(256)]));
  const atyp = r.pick([1, 3, 4, r.int(256)]);
  const addr =
    atyp === 1
      ? r.bytes(4)
      : atyp === 4
        ? r.bytes(16)
        : atyp === 3
          ? Buffer.concat([Buffer.from([r.int(20)]), r.bytes(r.int(20))])
          : r.bytes(r.int(8));
  parts.push(Buffer.from([5, r.chance(0.9) ? 0 : r.int(10), r.chance(0.95) ? 0 : r.int(256), atyp]), addr, r.bytes(2), r.bytes(r.int(10)));
  return Buffer.concat(parts).subarray(0, r.chance(0.8) ? undefined : r.int(40));
}

/**
 * The proxy's bytes: whatever they are, feed() says need-more, done within
 * the bytes given, or fail; and a prefix of an answer that is done is never
 * done nor failed differently (a split read changes nothing).
 */
export const socks5Target: Target = {
  name: 'socks5',
  stats,
  generate: answer,
  fixtures: [Buffer.from('05020100' + '05000001cb0071070016', 'hex'), Buffer.from('0500050003046162636400501122', 'hex')],
  check(input: Buffer): void {
    for (const auth of [false, true]) {
      const step = new Socks5Reader(auth).feed(input);
      if (step.kind === 'done') {
        stats.done++;
        assert.ok(step.consumed >= 7 && step.consumed <= input.length);
        for (let n = 0; n < step.consumed; n++) {
          const early = new Socks5Reader(auth).feed(input.subarray(0, n));
          assert.equal(early.kind, 'need-more', `a prefix of ${n} bytes of a complete answer`);
        }
      } else if (step.kind === 'fail') {
        stats.fail++;
        assert.ok(step.reason.length > 0);
      } else stats.needMore++;
    }
  },
};

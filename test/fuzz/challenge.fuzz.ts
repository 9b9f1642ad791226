import assert from 'node:assert/strict';
import { parseChallenges } from '../../src/outbound/auth/challenge';
import { digestAuthorization, digestUsable } from '../../src/outbound/auth/digest';
import type { Rng, Target } from './harness';

const stats = { challenges: 0, digest: 0, token68: 0 };

function value(r: Rng): string {
  const parts: string[] = [];
  for (let i = r.range(1, 4); i > 0; i--) {
    const scheme = r.pick(['Basic', 'Digest', 'NTLM', 'Negotiate', 'x-Custom', '']);
    if (r.chance(0.3)) {
      parts.push(`${scheme} ${r.pick(['TlRMTVNTUAACAAAA==', 'YII=', 'abc', '='])}`);
      continue;
    }
    const params: string[] = [];
    for (let j = r.int(5); j > 0; j--) {
      const name = r.pick(['realm', 'nonce', 'qop', 'algorithm', 'opaque', 'stale', 'charset']);
      const v = r.chance(0.6)
        ? `"${r.pick(['a,b', 'auth', 'auth-int', 'x\\"y', '', 'MD5'])}"`
        : r.pick(['MD5', 'SHA-256', 'MD5-sess', 'true', 'x']);
      params.push(`${name}=${v}`);
    }
    parts.push(`${scheme} ${params.join(r.pick([', ', ',', ' ,  ']))}`);
  }
  return parts.join(', ');
}

/** Proxy-Authenticate values come from the proxy: the parser never throws, and what it keeps is well formed. */
export const challengeTarget: Target = {
  name: 'challenge',
  stats,
  generate: (r) => Buffer.from(value(r), 'latin1'),
  fixtures: ['Digest realm="r", nonce="n", qop="auth"', 'Negotiate, NTLM', 'NTLM TlRMTVNTUAACAAAA==, Basic realm="x"'].map((s) =>
    Buffer.from(s, 'latin1'),
  ),
  check(input: Buffer): void {
    const list = parseChallenges([input.toString('latin1')]);
    assert.ok(list.length <= 16);
    for (const c of list) {
      stats.challenges++;
      assert.match(c.scheme, /^[!#$%&'*+.^_`|~0-9a-z-]+$/);
      if (c.token68 !== undefined) {
        stats.token68++;
        assert.equal(Object.keys(c.params).length, 0);
      }
      if (digestUsable(c)) {
        stats.digest++;
        assert.match(digestAuthorization(c, { user: 'u', password: 'p' }, 'CONNECT', 'a.test:443'), /^Digest username="u", /);
      }
    }
  },
};

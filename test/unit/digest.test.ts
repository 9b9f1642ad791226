import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseChallenges } from '../../src/outbound/auth/challenge';
import { digestAuthorization, digestStale, digestUsable } from '../../src/outbound/auth/digest';

describe('Proxy-Authenticate challenges', () => {
  it('several challenges in one value and across values, params unquoted, token68 kept', () => {
    const c = parseChallenges([
      'Negotiate, NTLM',
      'Digest realm="corp \\"lab\\"", nonce="abc,def", qop="auth,auth-int", algorithm=SHA-256, Basic realm=x',
      'NTLM TlRMTVNTUAACAAAA==',
    ]);
    assert.deepEqual(
      c.map((x) => x.scheme),
      ['negotiate', 'ntlm', 'digest', 'basic', 'ntlm'],
    );
    assert.deepEqual(c[2]!.params, { realm: 'corp "lab"', nonce: 'abc,def', qop: 'auth,auth-int', algorithm: 'SHA-256' });
    assert.deepEqual(c[3]!.params, { realm: 'x' });
    assert.equal(c[4]!.token68, 'TlRMTVNTUAACAAAA==');
  });

  it('what cannot be read is dropped, what came before it is kept; bounded', () => {
    assert.deepEqual(
      parseChallenges(['Basic realm="open']).map((x) => x.scheme),
      ['basic'],
    );
    assert.deepEqual(parseChallenges(['"quoted"', '', ' , ,']), []);
    assert.equal(parseChallenges([Array.from({ length: 100 }, (_, i) => `S${i}`).join(', ')]).length, 16);
    assert.deepEqual(parseChallenges(['x'.repeat(9000)]), []);
  });
});

// RFC 7616 3.9.1: the same request answered with SHA-256 and with MD5.
describe('Digest (RFC 7616 3.9.1)', () => {
  const creds = { user: 'Mufasa', password: 'Circle of Life' };
  const challenge = (algorithm: string) =>
    parseChallenges([
      `Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=${algorithm}, ` +
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
    ])[0]!;
  const cnonce = 'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ';

  it('MD5', () => {
    const v = digestAuthorization(challenge('MD5'), creds, 'GET', '/dir/index.html', 1, cnonce);
    assert.match(v, /response="8ca523f5e9506fed4657c9700eebdbec"/);
    assert.match(v, /^Digest username="Mufasa", realm="http-auth@example.org", /);
    assert.match(v, /opaque="FQhe\/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", qop=auth, nc=00000001, cnonce="f2\//);
  });

  it('SHA-256', () => {
    const v = digestAuthorization(challenge('SHA-256'), creds, 'GET', '/dir/index.html', 1, cnonce);
    assert.match(v, /response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"/);
  });

  it('what can be answered: a known algorithm, qop auth or none; stale', () => {
    assert.equal(digestUsable(challenge('MD5')), true);
    assert.equal(digestUsable(challenge('SHA-512-256')), false);
    assert.equal(digestUsable(parseChallenges(['Digest realm="r", nonce="n", qop="auth-int"'])[0]!), false);
    assert.equal(digestUsable(parseChallenges(['Digest realm="r", nonce="n"'])[0]!), true);
    assert.equal(digestStale(parseChallenges(['Digest realm="r", nonce="n", stale=TRUE'])[0]!), true);
  });

  it('RFC 2069 form (no qop): response over nonce and HA2 only', () => {
    // RFC 2617 3.5's example less qop, recomputed: MD5(HA1:nonce:HA2).
    const c = parseChallenges(['Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'])[0]!;
    const v = digestAuthorization(c, { user: 'Mufasa', password: 'Circle Of Life' }, 'GET', '/dir/index.html');
    assert.match(v, /response="670fd8c2df070c60b045671b8b24ff02"/);
    assert.doesNotMatch(v, /qop=|nc=|cnonce=/);
  });
});

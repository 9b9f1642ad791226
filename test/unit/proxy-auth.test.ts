import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { ProxyAuthenticator, readAnswerHead, type AnswerHead } from '../../src/outbound/auth/proxy-auth';

/** The head of `text` (a whole answer head), read as the executors read it. */
function head(text: string): AnswerHead {
  const h = readAnswerHead(Buffer.from(text, 'latin1'));
  assert.ok(h !== undefined && h !== 'invalid' && h !== 'oversized', text);
  return h;
}

const SQUID_CHALLENGE = Buffer.from(
  '4e544c4d535350000200000009000900aeaaaaaa06820800bae005bca2ed85480000000000003a00574f524b47524f5550',
  'hex',
).toString('base64');

describe('readAnswerHead', () => {
  it('status, every Proxy-Authenticate value, Content-Length and keep-alive', () => {
    const h = head(
      'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM\r\nProxy-Authenticate: Basic realm="x"\r\n' +
        'Content-Length: 3095\r\n\r\nbody',
    );
    assert.equal(h.status, 407);
    assert.deepEqual(h.fields.get('proxy-authenticate'), ['NTLM', 'Basic realm="x"']);
    assert.equal(h.bodyLength, 3095);
    assert.equal(h.headLength, h.headLength > 0 ? h.headLength : -1);
    assert.equal(h.keepAlive, true);
  });

  it('not kept: Connection: close, HTTP/1.0 without keep-alive, a body without a length', () => {
    assert.equal(head('HTTP/1.1 407 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n').keepAlive, false);
    assert.equal(head('HTTP/1.0 407 X\r\nContent-Length: 0\r\n\r\n').keepAlive, false);
    assert.equal(head('HTTP/1.0 407 X\r\nProxy-Connection: keep-alive\r\nContent-Length: 0\r\n\r\n').keepAlive, true);
    assert.equal(head('HTTP/1.1 407 X\r\n\r\n').keepAlive, false);
  });

  it('incomplete, not HTTP, conflicting lengths, too long', () => {
    assert.equal(readAnswerHead(Buffer.from('HTTP/1.1 407 X\r\n')), undefined);
    assert.equal(readAnswerHead(Buffer.from('SSH-2.0-x\r\n\r\n')), 'invalid');
    assert.equal(readAnswerHead(Buffer.from('HTTP/1.1 407 X\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n')), 'invalid');
    assert.equal(readAnswerHead(Buffer.alloc(17 * 1024, 0x61)), 'oversized');
  });
});

describe('ProxyAuthenticator', () => {
  const proxy = parseProxyUrl('http://CORP%5Calice:pw@proxy.test:3128');

  it('Basic up front; NTLM offered: NEGOTIATE, then AUTHENTICATE on that connection; a 407 after it is a rejection', () => {
    const a = new ProxyAuthenticator(proxy, 'CONNECT', 'a.test:443', 'WS');
    assert.match(a.initial ?? '', /^Basic /);
    const l1 = a.answer(
      head('HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM\r\nProxy-Authenticate: Basic realm="r"\r\nContent-Length: 0\r\n\r\n').fields,
    );
    assert.deepEqual([l1?.scheme, l1?.sameConnection], ['ntlm', false]);
    assert.match(l1!.authorization, /^NTLM TlRMTVNTUAAB/);
    const l2 = a.answer(head(`HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM ${SQUID_CHALLENGE}\r\nContent-Length: 0\r\n\r\n`).fields);
    assert.deepEqual([l2?.scheme, l2?.sameConnection], ['ntlm', true]);
    const type3 = Buffer.from(l2!.authorization.slice(5), 'base64');
    assert.equal(type3.readUInt32LE(8), 3);
    const at = (o: number): string =>
      type3.toString('latin1', type3.readUInt32LE(o + 4), type3.readUInt32LE(o + 4) + type3.readUInt16LE(o));
    // The challenge did not offer Unicode (ntlm_fake_auth's flags say OEM): the names go as OEM text.
    assert.deepEqual([at(28), at(36), at(44)], ['CORP', 'alice', 'WS']);
    assert.equal(a.answer(head('HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n').fields), undefined);
    assert.equal(a.current, 'ntlm');
  });

  it('Digest: answered; again only when the nonce is stale; a plain 407 after it is a rejection', () => {
    const a = new ProxyAuthenticator(parseProxyUrl('http://alice:pw@proxy.test:3128'), 'CONNECT', 'a.test:443');
    const ch = (extra = '') =>
      head(`HTTP/1.1 407 X\r\nProxy-Authenticate: Digest realm="r", nonce="n1", qop="auth"${extra}\r\nContent-Length: 0\r\n\r\n`);
    const l1 = a.answer(ch().fields);
    assert.match(l1?.authorization ?? '', /^Digest username="alice", realm="r", nonce="n1", uri="a\.test:443"/);
    assert.match(a.answer(ch(', stale=true').fields)?.authorization ?? '', /nc=00000002/);
    assert.equal(a.answer(ch().fields), undefined);
  });

  it('Basic refused and nothing else offered, an unknown scheme, no credentials: no leg', () => {
    const basicOnly = head('HTTP/1.1 407 X\r\nProxy-Authenticate: Basic realm="r"\r\nContent-Length: 0\r\n\r\n');
    assert.equal(new ProxyAuthenticator(proxy, 'CONNECT', 'a.test:443').answer(basicOnly.fields), undefined);
    const neg = new ProxyAuthenticator(proxy, 'CONNECT', 'a.test:443');
    assert.equal(neg.answer(head('HTTP/1.1 407 X\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n').fields), undefined);
    assert.deepEqual(neg.offered, ['negotiate']);
    const none = new ProxyAuthenticator(parseProxyUrl('http://proxy.test:3128'), 'CONNECT', 'a.test:443');
    assert.equal(none.initial, undefined);
    assert.equal(none.answer(head('HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n').fields), undefined);
  });

  it('later connections start with the scheme the proxy accepted: NTLM at once, Digest without Basic up front', () => {
    const ntlmProxy = parseProxyUrl('http://CORP%5Cbob:pw@ntlm.test:3128');
    const a = new ProxyAuthenticator(ntlmProxy, 'CONNECT', 'a.test:443');
    a.answer(head('HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n').fields);
    a.answer(head(`HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM ${SQUID_CHALLENGE}\r\nContent-Length: 0\r\n\r\n`).fields);
    a.succeeded();
    const b = new ProxyAuthenticator(ntlmProxy, 'CONNECT', 'b.test:443');
    assert.match(b.initial ?? '', /^NTLM TlRMTVNTUAAB/);
    assert.equal(
      b.answer(head(`HTTP/1.1 407 X\r\nProxy-Authenticate: NTLM ${SQUID_CHALLENGE}\r\nContent-Length: 0\r\n\r\n`).fields)?.sameConnection,
      true,
    );

    const digestProxy = parseProxyUrl('http://bob:pw@digest.test:3128');
    const d = new ProxyAuthenticator(digestProxy, 'CONNECT', 'a.test:443');
    d.answer(head('HTTP/1.1 407 X\r\nProxy-Authenticate: Digest realm="r", nonce="n"\r\nContent-Length: 0\r\n\r\n').fields);
    d.succeeded();
    assert.equal(new ProxyAuthenticator(digestProxy, 'CONNECT', 'b.test:443').initial, undefined, 'no password in Basic to a Digest proxy');
    assert.match(new ProxyAuthenticator(proxy, 'CONNECT', 'b.test:443').initial ?? '', /^Basic /, 'other proxies as before');
  });

  it('a proxy that keeps asking gets at most four legs', () => {
    const a = new ProxyAuthenticator(parseProxyUrl('http://alice:pw@proxy.test:3128'), 'CONNECT', 'a.test:443');
    const stale = head('HTTP/1.1 407 X\r\nProxy-Authenticate: Digest realm="r", nonce="n", stale=true\r\nContent-Length: 0\r\n\r\n');
    let legs = 0;
    while (a.answer(stale.fields) !== undefined) legs++;
    assert.equal(legs, 4);
  });
});

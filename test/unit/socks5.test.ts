import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Socks5Reader, socks5ReplyText, socks5Request } from '../../src/outbound/socks5';

const hex = (b: Buffer): string => b.toString('hex');

describe('SOCKS5 request', () => {
  it('no credentials: greeting with method 0, then CONNECT to a name (socks5h)', () => {
    assert.equal(
      hex(socks5Request({ host: 'a.test', port: 443 })),
      '050100' + '050100' + '0306' + Buffer.from('a.test').toString('hex') + '01bb',
    );
  });

  it('user/password (RFC 1929) between greeting and CONNECT; IPv4 and IPv6 literals as addresses', () => {
    const r = socks5Request({ host: '203.0.113.7', port: 22 }, { user: 'alice', password: 'pw' });
    assert.equal(
      hex(r),
      '050102' +
        '0105' +
        Buffer.from('alice').toString('hex') +
        '02' +
        Buffer.from('pw').toString('hex') +
        '050100' +
        '01cb007107' +
        '0016',
    );
    assert.equal(
      hex(socks5Request({ host: '2001:db8::1', port: 80 })).slice(6),
      '050100' + '04' + '20010db8000000000000000000000001' + '0050',
    );
  });

  it('names and credentials over 255 bytes are refused before anything is sent', () => {
    assert.throws(() => socks5Request({ host: 'a'.repeat(256), port: 1 }));
    assert.throws(() => socks5Request({ host: 'a.test', port: 1 }, { user: '', password: 'x' }));
  });
});

describe('SOCKS5 answers', () => {
  const ok4 = Buffer.from('05000001cb0071070016', 'hex');
  it('method, status and reply, whole or byte by byte; the bytes after the reply are the destination', () => {
    const answer = Buffer.concat([Buffer.from('0502' + '0100', 'hex'), ok4, Buffer.from('SSH-2.0')]);
    for (let n = 0; n < 14; n++) assert.equal(new Socks5Reader(true).feed(answer.subarray(0, n)).kind, 'need-more', `${n} bytes`);
    assert.deepEqual(new Socks5Reader(true).feed(answer), { kind: 'done', consumed: 14 });
    const name = Buffer.from('0500' + '050000030461626364' + '0050', 'hex');
    assert.deepEqual(new Socks5Reader(false).feed(name), { kind: 'done', consumed: name.length });
  });

  it('refusals: not SOCKS5, no acceptable method, bad credentials, a refused CONNECT (known from its second byte)', () => {
    const r = (hexs: string, auth = false) => new Socks5Reader(auth).feed(Buffer.from(hexs, 'hex'));
    assert.deepEqual(r('4854'), { kind: 'fail', reason: 'the proxy did not answer as SOCKS5', proxyDown: true });
    assert.equal(r('05ff').kind, 'fail');
    assert.equal(r('0500', true).kind, 'fail', 'a proxy that skips the credentials we sent is out of step');
    assert.deepEqual(r('05020101', true), { kind: 'fail', reason: 'the proxy rejected the user/password', proxyDown: false });
    assert.deepEqual(r('05000502'), { kind: 'fail', reason: 'connection not allowed by ruleset', proxyDown: false });
    assert.equal(r('050000050102030400').kind, 'fail', 'address type 5');
    assert.equal(socks5ReplyText(99), 'reply 99');
  });
});

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import fs from 'node:fs';
import { describe, it } from 'node:test';
import * as native from '../../src/native/index';

const root = typeof process.getuid === 'function' && process.getuid() === 0;

describe('native udp (native/udp.c)', { skip: native.isNativeAvailable() ? false : 'addon not built (npm install)' }, () => {
  it('delivers datagrams with the client and original destination, on the event loop', async () => {
    const got: Array<[string, string, number, string, number]> = [];
    let wake: () => void = () => undefined;
    const h = native.udpListen({ host: '127.0.0.1', port: 0 }, (data, ch, cp, dh, dp) => {
      got.push([data.toString(), ch, cp, dh, dp]);
      wake();
    });
    const port = native.udpListenerPort(h);
    const client = dgram.createSocket('udp4');
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
    const arrived = new Promise<void>((r) => (wake = r));
    client.send('ping', port, '127.0.0.1');
    await arrived;
    assert.deepEqual(got[0], ['ping', '127.0.0.1', client.address().port, '127.0.0.1', port]);

    if (root) {
      // The reply path: a transparent socket bound to the destination the client asked.
      const fd = native.udpReplySocket('127.0.0.1', port);
      const reply = new Promise<Buffer>((r) => client.once('message', (m, rinfo) => (assert.equal(rinfo.port, port), r(m))));
      assert.equal(native.udpSend(fd, Buffer.from('pong'), '127.0.0.1', client.address().port), 4);
      assert.equal((await reply).toString(), 'pong');
      fs.closeSync(fd);
    }
    client.close();
    native.udpClose(h);
    native.udpClose(h); // idempotent
  });

  it('IPv6 too, and bad arguments are TypeErrors, not crashes', async () => {
    let wake: (v: string) => void = () => undefined;
    const h = native.udpListen({ host: '::1', port: 0 }, (_d, _ch, _cp, dh) => wake(dh));
    const port = native.udpListenerPort(h);
    const c = dgram.createSocket('udp6');
    const dst = new Promise<string>((r) => (wake = r));
    c.send('x', port, '::1');
    assert.equal(await dst, '::1');
    c.close();
    native.udpClose(h);
    assert.throws(() => native.udpListen({ host: 'nope', port: 0 }, () => undefined), TypeError);
    assert.throws(() => native.udpSend(-1, Buffer.alloc(1), '127.0.0.1', 1), TypeError);
    assert.throws(() => native.udpReplySocket('127.0.0.1', 70000), TypeError);
    assert.throws(() => native.udpListen({ host: '127.0.0.1', port: 0 }, 'x' as never), TypeError);
  });
});

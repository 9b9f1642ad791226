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

  // Regression: udp.c freed the listener in its uv_close callback while the JS handle still pointed
  // at it, so a second udpClose or a udpListenerPort after the close read freed memory. malloc hands
  // freed blocks to the next listeners of the same size, and the stale handles then closed those
  // (19 of 32 here); the sanitizer build (scripts/native-sanitize.sh) reports the read itself.
  it('a closed handle answers later calls (double close, port query) and leaves other listeners alone', async () => {
    const N = 32;
    const closed = Array.from({ length: N }, () => native.udpListen({ host: '127.0.0.1', port: 0 }, () => undefined));
    for (const h of closed) native.udpClose(h);
    await new Promise((r) => setTimeout(r, 20)); // the close callbacks have run
    const got: string[] = [];
    let wake: () => void = () => undefined;
    const open = Array.from({ length: N }, () => native.udpListen({ host: '127.0.0.1', port: 0 }, (d) => (got.push(d.toString()), wake())));
    const ports = open.map((h) => native.udpListenerPort(h));

    for (const h of closed) {
      native.udpClose(h); // harmless
      assert.throws(() => native.udpListenerPort(h), { code: 'EBADF', syscall: 'getsockname' });
    }
    await new Promise((r) => setTimeout(r, 20));
    for (const h of closed) native.udpClose(h);

    // The listeners opened meanwhile still listen.
    assert.deepEqual(
      open.map((h) => native.udpListenerPort(h)),
      ports,
    );
    const client = dgram.createSocket('udp4');
    const all = new Promise<void>((r) => (wake = () => got.length === N && r()));
    for (const port of ports) client.send(String(port), port, '127.0.0.1');
    await all;
    assert.deepEqual(got.sort(), ports.map(String).sort());
    client.close();
    for (const h of open) native.udpClose(h);
  });

  it('refuses handles that are not udpListen handles (a tunnelListen handle is an external too)', () => {
    const fd = native.listenTcp({ host: '127.0.0.1', port: 0 });
    const tunnel = native.tunnelListen(
      { fd, sniff: false, redirect: false, sniffMaxBytes: 16, sniffTimeoutMs: 100, connectTimeoutMs: 100, idleTimeoutMs: 0 },
      () => [0],
      () => undefined,
      () => undefined,
    );
    const udp = native.udpListen({ host: '127.0.0.1', port: 0 }, () => undefined);
    try {
      const wrong = { code: 'ERR_INVALID_ARG_TYPE', name: 'TypeError' };
      assert.throws(() => native.udpClose(tunnel as unknown as native.UdpHandle), wrong);
      assert.throws(() => native.udpListenerPort(tunnel as unknown as native.UdpHandle), wrong);
      assert.throws(() => native.udpClose({} as native.UdpHandle), wrong);
      assert.throws(() => native.tunnelClose(udp as unknown as native.TunnelHandle), wrong);
      assert.ok(native.udpListenerPort(udp) > 0);
    } finally {
      native.udpClose(udp);
      native.tunnelClose(tunnel);
    }
  });
});

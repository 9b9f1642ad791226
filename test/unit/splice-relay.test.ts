/**
 * Both relays on loopback sockets (no namespaces): the same cases must hold
 * for the splice relay (native/splice.c) and the JS relay.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { describe, it } from 'node:test';
import { hasSplice, spliceActive, spliceRelay } from '../../src/native';
import { JsRelay } from '../../src/relay/js-relay';
import type { Relay, RelayResult } from '../../src/relay/relay';
import { SpliceRelay } from '../../src/relay/splice-relay';

interface Rig {
  /** The test's client end (what a LAN client holds). */
  peer: net.Socket;
  /** The test's origin end (what the destination server holds). */
  origin: net.Socket;
  result: Promise<RelayResult>;
}

function listen(onConn: (s: net.Socket) => void): Promise<net.Server> {
  const srv = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConn);
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

/**
 * peer -> [client | relay | upstream] -> origin. `early` is sent by the peer
 * and `earlyDown` by the origin before the relay starts, so that Node has
 * them buffered at hand-over.
 */
async function rig(relay: Relay, idleTimeoutMs = 0, early?: Buffer, earlyDown?: Buffer): Promise<Rig> {
  let accepted!: (s: net.Socket) => void;
  const gotClient = new Promise<net.Socket>((r) => (accepted = r));
  const front = await listen((s) => accepted(s));
  let originAccepted!: (s: net.Socket) => void;
  const gotOrigin = new Promise<net.Socket>((r) => (originAccepted = r));
  const back = await listen((s) => originAccepted(s));
  const peer = net.connect({ port: (front.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const client = await gotClient;
  const upstream = net.connect({ port: (back.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  await new Promise((r) => upstream.once('connect', r));
  const origin = await gotOrigin;
  origin.resume();
  origin.pause();
  front.close();
  back.close();
  if (early) {
    peer.write(early);
    client.resume(); // let Node read it into its buffer, as a sniffer would
    await new Promise((r) =>
      client.once('data', (d: Buffer) => {
        client.pause();
        client.unshift(d);
        r(undefined);
      }),
    );
  }
  if (earlyDown) {
    origin.write(earlyDown);
    upstream.resume();
    await new Promise((r) =>
      upstream.once('data', (d: Buffer) => {
        upstream.pause();
        upstream.unshift(d);
        r(undefined);
      }),
    );
  }
  const result = relay.run(client, upstream, { idleTimeoutMs });
  return { peer, origin, result };
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function collect(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.resume();
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

function errorOf(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    s.once('close', () => resolve('closed-without-error'));
    s.resume();
  });
}

const relays: Array<[string, () => Relay]> = [['js', () => new JsRelay()]];
if (hasSplice()) relays.unshift(['splice', () => new SpliceRelay()]);

for (const [name, make] of relays) {
  describe(`${name} relay`, () => {
    it('carries 8 MiB each way, byte-exact, and counts them', async () => {
      const up = randomBytes(8 << 20);
      const down = randomBytes(8 << 20);
      const r = await rig(make());
      const gotUp = collect(r.origin);
      const gotDown = collect(r.peer);
      r.peer.end(up);
      r.origin.end(down);
      assert.equal(sha(await gotUp), sha(up));
      assert.equal(sha(await gotDown), sha(down));
      const res = await r.result;
      assert.deepEqual(res, { up: up.length, down: down.length, outcome: 'ok' });
    });

    it('passes on bytes Node had already buffered at hand-over, in order', async () => {
      const early = Buffer.from('early-client-bytes|');
      const earlyDown = Buffer.from('server-greeting|');
      const r = await rig(make(), 0, early, earlyDown);
      const gotUp = collect(r.origin);
      const gotDown = collect(r.peer);
      r.peer.end('rest');
      r.origin.end('bye');
      assert.equal((await gotUp).toString(), 'early-client-bytes|rest');
      assert.equal((await gotDown).toString(), 'server-greeting|bye');
      const res = await r.result;
      assert.equal(res.up, early.length + 4);
      assert.equal(res.down, earlyDown.length + 3);
    });

    it('half-close: the client ends its side and still receives the answer', async () => {
      const r = await rig(make());
      const gotUp = collect(r.origin);
      r.peer.end('question');
      assert.equal((await gotUp).toString(), 'question'); // the origin saw EOF
      const gotDown = collect(r.peer);
      r.origin.end('answer after EOF');
      assert.equal((await gotDown).toString(), 'answer after EOF');
      assert.equal((await r.result).outcome, 'ok');
    });

    it('a reset from the origin reaches the client as a reset', async () => {
      const r = await rig(make());
      const clientSaw = errorOf(r.peer);
      r.origin.write('x');
      await new Promise((res) => setTimeout(res, 50));
      r.origin.resetAndDestroy();
      assert.equal(await clientSaw, 'ECONNRESET');
      assert.match((await r.result).outcome, /^upstream (ECONNRESET|EPIPE)$/);
    });

    it('a reset from the client reaches the origin as a reset', async () => {
      const r = await rig(make());
      const originSaw = errorOf(r.origin);
      r.peer.resetAndDestroy();
      assert.equal(await originSaw, 'ECONNRESET');
      assert.match((await r.result).outcome, /^client (ECONNRESET|EPIPE)$/);
    });

    it('a reset after 3 MiB (a long transfer, past the set-up phase) still reaches the client', async () => {
      const r = await rig(make());
      const bulk = randomBytes(3 << 20);
      let got = 0;
      const clientSaw = new Promise<string>((resolve) => {
        r.peer.on('data', (c: Buffer) => (got += c.length));
        r.peer.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
        r.peer.once('close', () => resolve('closed-without-error'));
      });
      r.origin.write(bulk);
      while (got < bulk.length) await new Promise((res) => setTimeout(res, 10));
      r.origin.resetAndDestroy();
      assert.equal(await clientSaw, 'ECONNRESET');
      const res = await r.result;
      assert.match(res.outcome, /^upstream (ECONNRESET|EPIPE)$/);
      assert.equal(res.down, bulk.length);
    });

    it('200 short relays at once: every byte arrives, every relay ends ok', async () => {
      const rigs = await Promise.all(Array.from({ length: 200 }, () => rig(make())));
      const checks = rigs.map(async (r, i) => {
        const gotUp = collect(r.origin);
        const gotDown = collect(r.peer);
        r.peer.end(`hello ${i}`);
        r.origin.end(`answer ${i}`);
        assert.equal((await gotUp).toString(), `hello ${i}`);
        assert.equal((await gotDown).toString(), `answer ${i}`);
        assert.deepEqual(await r.result, { up: `hello ${i}`.length, down: `answer ${i}`.length, outcome: 'ok' });
      });
      await Promise.all(checks);
    });

    // Gateway.close() awaits relay.close(). The JS relay had none: the upstream sockets it carried closed a loop
    // turn after the gateway's close() had resolved (test/e2e/close.test.ts found them still open).
    it('close() ends every running relay and resolves after each run() has', async () => {
      const relay = make();
      const rigs = await Promise.all([rig(relay), rig(relay)]);
      let settled = 0;
      for (const r of rigs) void r.result.then(() => settled++);
      const ended = (s: net.Socket): Promise<unknown> =>
        new Promise((resolve) => {
          for (const ev of ['end', 'error', 'close']) s.once(ev, resolve);
          s.resume();
        });
      const ends = rigs.flatMap((r) => [ended(r.peer), ended(r.origin)]);
      try {
        assert.equal(typeof relay.close, 'function', `the ${name} relay has no close()`);
        await relay.close?.();
        assert.equal(settled, rigs.length, 'a run() had not resolved when close() did');
        await Promise.all(ends);
      } finally {
        // A failure leaves the relays running: the test process would never end.
        for (const r of rigs) for (const s of [r.peer, r.origin]) s.destroy();
      }
    });

    it('idle timeout closes both sides', async () => {
      const t0 = Date.now();
      const r = await rig(make(), 300);
      const a = collect(r.peer).catch(() => Buffer.alloc(0));
      const b = collect(r.origin).catch(() => Buffer.alloc(0));
      const res = await r.result;
      await Promise.all([a, b]);
      assert.equal(res.outcome, 'idle-timeout');
      assert.ok(Date.now() - t0 >= 280, 'not before the timeout');
    });
  });
}

describe('native splice relay arguments', { skip: hasSplice() ? false : 'addon without splice' }, () => {
  it('refuses bad arguments with TypeErrors and non-sockets with ENOTSOCK', async () => {
    const cb = (): void => undefined;
    assert.throws(() => spliceRelay(-1, 5, { idleTimeoutMs: 0 }, cb), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => spliceRelay(5, 5, { idleTimeoutMs: 0 }, cb), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => spliceRelay(5, 6, { idleTimeoutMs: 1.5 }, cb), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => spliceRelay(5, 6, { idleTimeoutMs: 0 }, 'x' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    const file = fs.openSync('/dev/null', 'r');
    const file2 = fs.openSync('/dev/null', 'r');
    try {
      assert.throws(() => spliceRelay(file, file2, { idleTimeoutMs: 0 }, cb), { code: 'ENOTSOCK' });
    } finally {
      fs.closeSync(file);
      fs.closeSync(file2);
    }
    assert.throws(() => spliceRelay(100000, 100001, { idleTimeoutMs: 0 }, cb), { code: 'EBADF' });
    assert.equal(spliceActive(), 0);
  });
});

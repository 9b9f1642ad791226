/**
 * The addon in two Node.js environments at once: the main thread and a
 * worker_thread, each with its own event loop. Each must see only its own
 * listeners, connections and relays (native/common.h, tg_env), and a worker
 * that ends with some still open must not take the process down.
 *
 * This file is also the worker: loaded with workerData.rig it opens a rig
 * and answers the main thread's messages instead of declaring tests.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { test } from 'node:test';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  isNativeAvailable,
  listenTcp,
  localPort,
  spliceAbortAll,
  spliceActive,
  tunnelAbortAll,
  tunnelClose,
  tunnelListen,
  tunnelPending,
  udpClose,
  udpListen,
  udpListenerPort,
} from '../../src/native';

function noop(): void {}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(what: string, fn: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(5);
  }
}

function firstData(s: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.once('error', reject);
  });
}

interface Rig {
  /** Sends a byte through the relayed connection and returns what came back. */
  echo(): Promise<string>;
  /** The UDP listener's port (throws once it is closed). */
  udpPort(): number;
  close(): Promise<void>;
}

/**
 * One of everything the addon keeps per environment: a sniffing listener
 * with a connection parked on its first bytes (tunnelPending 1), a listener
 * whose connection is relaying to an echo server (spliceActive 1), and a
 * UDP listener.
 */
async function openRig(): Promise<Rig> {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
  const echoPort = (echo.address() as net.AddressInfo).port;
  const front = (sniff: boolean) => ({
    fd: listenTcp({ host: '127.0.0.1', port: 0 }),
    sniff,
    redirect: false,
    sniffMaxBytes: 64,
    sniffTimeoutMs: 30_000,
    connectTimeoutMs: 2_000,
    idleTimeoutMs: 0,
  });
  const parkOpts = front(true);
  const park = tunnelListen(parkOpts, (_id, _fd, _ci, _cp, _di, _dp, _head, final) => (final ? [0] : null), noop, noop);
  const relayOpts = front(false);
  const relay = tunnelListen(relayOpts, () => [1, '127.0.0.1', echoPort, undefined], noop, noop);
  const udp = udpListen({ host: '127.0.0.1', port: 0 }, noop);

  const before = { pending: tunnelPending(), active: spliceActive() };
  const parked = net.connect(localPort(parkOpts.fd), '127.0.0.1'); // says nothing: stays in the sniff
  const relayed = net.connect(localPort(relayOpts.fd), '127.0.0.1');
  for (const s of [parked, relayed]) s.on('error', noop); // abortAll resets them
  relayed.write('a');
  assert.equal(await firstData(relayed), 'a');
  await waitFor(
    'the parked connection and the relay',
    () => tunnelPending() === before.pending + 1 && spliceActive() === before.active + 1,
  );
  return {
    async echo() {
      const got = firstData(relayed);
      relayed.write('b');
      return got;
    },
    udpPort: () => udpListenerPort(udp),
    async close() {
      parked.destroy();
      relayed.destroy();
      tunnelClose(park);
      tunnelClose(relay);
      udpClose(udp);
      await new Promise((r) => echo.close(r));
    },
  };
}

type Counts = { pending: number; active: number };

/** The worker side: opens a rig, says its counts, then does what the main thread asks. */
async function serveRig(): Promise<void> {
  const port = parentPort!;
  const rig = await openRig();
  port.postMessage({ pending: tunnelPending(), active: spliceActive() });
  port.on('message', (m: string) => {
    void (async () => {
      if (m === 'check')
        port.postMessage({ pending: tunnelPending(), active: spliceActive(), echo: await rig.echo(), udp: rig.udpPort() > 0 });
      if (m === 'close') {
        tunnelAbortAll();
        spliceAbortAll();
        await rig.close();
        port.postMessage({ pending: tunnelPending(), active: spliceActive() });
        port.close();
      }
      if (m === 'exit') process.exit(0); // ends this worker only, with everything still open
    })();
  });
}

function next<T>(w: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
}

if (!isMainThread && (workerData as { rig?: boolean } | null)?.rig) {
  void serveRig();
} else {
  const skip = isNativeAvailable() ? false : 'addon not built (npm install)';

  // Regression: tunnel.c's connection list and splice.c's relay list were globals, so the main
  // thread counted (and tunnelAbortAll/spliceAbortAll ended, from the wrong thread) a worker's
  // connections, and the pipe pool and receive buffer were shared by two loops without a lock.
  test('the main thread and a worker each see and end only their own connections and relays', { skip, timeout: 20_000 }, async () => {
    const w = new Worker(__filename, { workerData: { rig: true } });
    const exited = new Promise<number>((r) => w.once('exit', r));
    try {
      assert.deepEqual(await next<Counts>(w), { pending: 1, active: 1 });
      const mine = await openRig();
      try {
        assert.equal(tunnelPending(), 1);
        assert.equal(spliceActive(), 1);
        assert.equal(tunnelAbortAll(), 1);
        assert.equal(spliceAbortAll(), 1);
        await waitFor('the main thread to be empty', () => tunnelPending() === 0 && spliceActive() === 0);
      } finally {
        await mine.close();
      }
      // The worker's connection is still parked and its relay still carries bytes.
      w.postMessage('check');
      assert.deepEqual(await next(w), { pending: 1, active: 1, echo: 'b', udp: true });
      w.postMessage('close');
      assert.deepEqual(await next<Counts>(w), { pending: 0, active: 0 });
      assert.equal(await exited, 0);
    } finally {
      await w.terminate();
    }
  });

  // Regression: a worker that ended with addon handles on its loop (a listener, a connection
  // being sniffed, a relay, a UDP socket) aborted the whole process: Node's uv_loop_close check
  // found them open ("uv_loop_close() while having open handles"). In a child, since that is an abort.
  test(
    'a worker that ends with listeners, connections, relays and UDP sockets open leaves the process running',
    { skip, timeout: 20_000 },
    () => {
      const child = String.raw`
      const { Worker } = require('node:worker_threads');
      const file = process.argv[1];
      const once = (w, ev) => new Promise((r) => w.once(ev, r));
      (async () => {
        const ends = [];
        for (const how of ['terminate', 'exit', 'terminate', 'exit']) {
          const w = new Worker(file, { workerData: { rig: true } });
          const exit = once(w, 'exit');
          await once(w, 'message');
          if (how === 'terminate') await w.terminate();
          else w.postMessage('exit');
          ends.push(how + ' ' + (await exit));
        }
        console.log(JSON.stringify(ends));
      })();
    `;
      const r = spawnSync(process.execPath, ['-e', child, __filename], { encoding: 'utf8', timeout: 15_000 });
      assert.equal(r.signal, null, `the process died of ${r.signal}: ${r.stderr}`);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout.trim()), ['terminate 1', 'exit 0', 'terminate 1', 'exit 0']);
      assert.doesNotMatch(r.stderr, /open handles/);
    },
  );
}

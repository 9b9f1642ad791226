/**
 * The native stream front end (native/tunnel.c) driven directly over
 * loopback: the addon accepts on a listenTcp fd, asks decide(), dials an
 * in-process "origin" or fake HTTP proxy, and hands over to the splice
 * relay. No namespaces, no root-only features (transparent: false,
 * redirect: false), so the destination is the listener's own address.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { parseProxyUrl } from '../../src/config/proxy-url';
import type { GatewayError } from '../../src/core/errors';
import { hostPort } from '../../src/core/types';
import { outcomeError } from '../../src/outbound/failures';
import { connectRequest, openTunnel } from '../../src/outbound/http-connect';
import {
  Outcomes,
  hasTunnel,
  listenTcp,
  outcomeText,
  loadNative,
  localPort,
  socketFd,
  spliceAbortAll,
  spliceActive,
  tunnelAbortAll,
  tunnelClose,
  tunnelListen,
  tunnelPending,
  type Outcome,
  type TunnelDecide,
  type TunnelDone,
  type TunnelHandle,
  type TunnelUnusable,
  type TunnelNext,
  type TunnelUpstream,
  tunnelResume,
} from '../../src/native';

const T = { timeout: 8_000 };
const REQ = 'CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n';
const OK = 'HTTP/1.1 200 OK\r\n\r\n';

// ---- bookkeeping --------------------------------------------------------------

/** Undone in reverse order after every test, whatever its result. */
const cleanups: Array<() => void> = [];

function noop(): void {}

/** After every test: a failed one may leave connections behind, which the next test (and the exit) must not wait on. */
async function cleanUp(): Promise<void> {
  tunnelAbortAll();
  while (cleanups.length > 0) {
    try {
      cleanups.pop()!();
    } catch {
      // already closed
    }
  }
  spliceAbortAll();
  await delay(5); // the closes above take effect on the next loop turns
}

/**
 * How long a "nothing more happens" check waits (a second done(), a request
 * before the final answer): an absence cannot be waited for, only given
 * time, so it is kept short. Everything else waits for its event (waitFor).
 */
const QUIET_MS = 30;

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns something (not undefined/null/false); fails after `ms`. */
async function waitFor<T>(what: string, fn: () => T | undefined | null | false, ms = 3_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(5);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

// ---- the front end under test -------------------------------------------------

interface DecideCall {
  id: number;
  fd: number;
  clientIp: string;
  clientPort: number;
  dstIp: string;
  dstPort: number;
  head: Buffer | undefined;
  final: boolean;
  eof: boolean;
  at: number;
}

interface DoneCall {
  id: number;
  up: number;
  down: number;
  outcome: string;
  status: number;
  reason: string;
}

/** What a test answers; `unknown` so that nonsense can be answered too. */
type Decider = (call: DecideCall, n: number) => unknown;

interface UpCall {
  id: number;
  outcome: string;
  bytes: Buffer;
  eof: boolean;
}

type Upstreamer = (call: UpCall, n: number) => unknown;

interface Front {
  port: number;
  handle: TunnelHandle;
  decides: DecideCall[];
  dones: DoneCall[];
  /** done()'s outcome and detail as the addon sent them, by id. */
  raw: Map<number, { outcome: Outcome; detail: string }>;
  unusable: Array<[string | null, number, string]>;
  /** upstream()'s calls, when the front has one. */
  ups: UpCall[];
  close(): void;
}

interface FrontOptions {
  sniff?: boolean;
  speculate?: boolean;
  sniffMaxBytes?: number;
  sniffTimeoutMs?: number;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  headTimeoutMs?: number;
  upstream?: Upstreamer;
}

function openFront(o: FrontOptions, decider: Decider): Front {
  const fd = listenTcp({ host: '127.0.0.1', port: 0, transparent: false });
  const decides: DecideCall[] = [];
  const dones: DoneCall[] = [];
  const raw = new Map<number, { outcome: Outcome; detail: string }>();
  const unusable: Array<[string | null, number, string]> = [];
  const decide = ((id, cfd, clientIp, clientPort, dstIp, dstPort, head, final, eof) => {
    const call: DecideCall = {
      id,
      fd: cfd,
      clientIp,
      clientPort,
      dstIp,
      dstPort,
      head: head === undefined ? undefined : Buffer.from(head),
      final,
      eof,
      at: Date.now(),
    };
    decides.push(call);
    return decider(call, decides.length);
  }) as TunnelDecide;
  // The log's text of the typed outcome: what these tests compare (a number that is not an Outcome would not read so).
  const done: TunnelDone = (id, up, down, outcome, detail, status, reason) => {
    raw.set(id, { outcome, detail });
    dones.push({ id, up, down, outcome: outcomeText(outcome, detail), status, reason });
  };
  const onUnusable: TunnelUnusable = (ip, port, errno) => {
    unusable.push([ip, port, errno]);
  };
  const ups: UpCall[] = [];
  const upstream = o.upstream;
  const onUpstream = upstream
    ? (((id, outcome, detail, bytes, eof) => {
        const call: UpCall = { id, outcome: outcomeText(outcome, detail), bytes: Buffer.from(bytes), eof };
        ups.push(call);
        return upstream(call, ups.length);
      }) as TunnelUpstream)
    : undefined;
  let handle: TunnelHandle;
  try {
    handle = tunnelListen(
      {
        fd,
        sniff: o.sniff ?? false,
        redirect: false,
        sniffMaxBytes: o.sniffMaxBytes ?? 4096,
        speculate: o.speculate ?? false,
        sniffTimeoutMs: o.sniffTimeoutMs ?? 2_000,
        connectTimeoutMs: o.connectTimeoutMs ?? 2_000,
        idleTimeoutMs: o.idleTimeoutMs ?? 0,
        ...(onUpstream ? { upstream: onUpstream } : {}),
      },
      decide,
      done,
      onUnusable,
    );
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  let open = true;
  const front: Front = {
    port: localPort(fd),
    handle,
    decides,
    dones,
    raw,
    unusable,
    ups,
    close() {
      if (!open) return;
      open = false;
      tunnelClose(handle);
    },
  };
  cleanups.push(() => front.close());
  return front;
}

function doneOf(front: Front, id: number, ms = 3_000): Promise<DoneCall> {
  return waitFor(`done(${id})`, () => front.dones.find((d) => d.id === id), ms);
}

/** The only done() of `id`, after giving a second call a moment to show up. */
async function onlyDoneOf(front: Front, id: number, ms = 3_000): Promise<DoneCall> {
  const d = await doneOf(front, id, ms);
  await delay(QUIET_MS);
  assert.equal(front.dones.filter((x) => x.id === id).length, 1, `done(${id}) called more than once`);
  return d;
}

// ---- loopback peers -----------------------------------------------------------

interface Server {
  port: number;
  sockets: net.Socket[];
}

async function listenServer(onConn: (s: net.Socket) => void, opts: net.ServerOpts = {}): Promise<Server> {
  const sockets: net.Socket[] = [];
  const server = net.createServer(opts, (s) => {
    sockets.push(s);
    s.on('error', noop);
    onConn(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  cleanups.push(() => {
    server.close();
    for (const s of sockets) s.destroy();
  });
  return { port: (server.address() as net.AddressInfo).port, sockets };
}

function echoServer(): Promise<Server> {
  return listenServer((s) => s.pipe(s));
}

interface ProxyConn {
  sock: net.Socket;
  request?: string;
  ended: boolean;
  closed: boolean;
}

interface FakeProxy {
  port: number;
  conns: ProxyConn[];
  requests: string[];
}

/**
 * An HTTP proxy that reads a request head and then hands the socket (paused)
 * and whatever came behind the head to `onRequest`.
 */
async function fakeProxy(onRequest: (c: ProxyConn, rest: Buffer) => void): Promise<FakeProxy> {
  const p: FakeProxy = { port: 0, conns: [], requests: [] };
  const srv = await listenServer((sock) => {
    const c: ProxyConn = { sock, ended: false, closed: false };
    p.conns.push(c);
    sock.on('end', () => (c.ended = true));
    sock.on('close', () => (c.closed = true));
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      sock.off('data', onData);
      sock.pause();
      c.request = buf.subarray(0, i + 4).toString('latin1');
      p.requests.push(c.request);
      onRequest(c, buf.subarray(i + 4));
    };
    sock.on('data', onData);
  });
  p.port = srv.port;
  return p;
}

/** A proxy that answers `answer` and then echoes. */
function echoProxy(answer = OK): Promise<FakeProxy> {
  return fakeProxy(({ sock }, rest) => {
    sock.write(answer);
    if (rest.length > 0) sock.write(rest);
    sock.pipe(sock);
  });
}

/** A port nothing listens on (right now). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/**
 * A client socket, returned at once: for connections the addon resets
 * within the same loop turn it accepts them, before Node has seen the
 * connect complete ('error' ECONNRESET from connect then).
 */
function dialClient(port: number): net.Socket {
  const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  s.on('error', noop); // the tests' own listeners are once(): a late EPIPE must not crash the file
  cleanups.push(() => s.destroy());
  return s;
}

function connectClient(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    s.on('error', noop); // as in dialClient
    cleanups.push(() => s.destroy());
    s.once('error', reject);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
  });
}

/** Everything `s` receives until EOF. */
function collect(s: net.Socket, ms = 5_000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  return withTimeout(
    new Promise<Buffer>((resolve, reject) => {
      s.once('end', () => resolve(Buffer.concat(chunks)));
      s.once('error', reject);
      s.resume();
    }),
    ms,
    'EOF from the tunnel',
  );
}

/** How the other side ended `s`: an errno code ('ECONNRESET'), 'end' (a FIN), or 'close'. */
function closedHow(s: net.Socket, ms = 3_000): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      s.on('data', noop);
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      s.once('end', () => {
        resolve('end');
        s.end();
      });
      s.once('close', () => resolve('close'));
      s.resume();
    }),
    ms,
    'the client to be closed',
  );
}

/** Reads from `s` until `n` bytes came (for tests that must not wait for EOF). */
function readBytes(s: net.Socket, n: number, ms = 3_000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let have = 0;
  return withTimeout(
    new Promise<Buffer>((resolve, reject) => {
      const onData = (c: Buffer): void => {
        chunks.push(c);
        have += c.length;
        if (have >= n) {
          s.off('data', onData);
          s.pause();
          resolve(Buffer.concat(chunks));
        }
      };
      s.on('data', onData);
      s.once('error', reject);
      s.resume();
    }),
    ms,
    `${n} bytes`,
  );
}

const skip = hasTunnel() ? false : 'the native addon (with tunnelListen) is not built: run `npm run install`';

/** One client per case, in order: its connection ends with the case's outcome, and the client is reset. */
async function eachResets(front: Front, cases: ReadonlyArray<readonly [unknown, string]>): Promise<void> {
  for (const [i, [answer, outcome]] of cases.entries()) {
    const client = dialClient(front.port);
    const how = closedHow(client);
    const call = await waitFor('decide', () => front.decides[i]);
    const d = await onlyDoneOf(front, call.id);
    assert.equal(d.outcome, outcome, `answer ${JSON.stringify(answer)}`);
    assert.equal(await how, 'ECONNRESET', `answer ${JSON.stringify(answer)}`);
  }
}

describe('native tunnel front end (native/tunnel.c)', { skip }, () => {
  afterEach(cleanUp);

  // ---- 1. plain TCP ----------------------------------------------------------

  it('TCP listener: decide once with the endpoints, then relays 1 MiB both ways and reports the bytes', T, async () => {
    const echo = await echoServer();
    const front = openFront({ sniff: false }, () => [1, '127.0.0.1', echo.port, undefined]);
    const client = await connectClient(front.port);
    const clientPort = client.localPort;
    const data = randomBytes(1 << 20);
    const got = collect(client);
    client.end(data);
    const back = await got;
    assert.equal(back.length, data.length);
    assert.equal(sha(back), sha(data));

    assert.equal(front.decides.length, 1);
    const call = front.decides[0]!;
    assert.equal(call.head, undefined);
    assert.equal(call.final, true);
    assert.equal(call.eof, false);
    assert.equal(call.clientIp, '127.0.0.1');
    assert.equal(call.clientPort, clientPort);
    assert.equal(call.dstIp, '127.0.0.1', 'not transparent: the destination is the listener itself');
    assert.equal(call.dstPort, front.port);
    assert.ok(Number.isInteger(call.fd) && call.fd > 2, `fd ${call.fd}`);

    const d = await onlyDoneOf(front, call.id);
    assert.deepEqual(d, { id: call.id, up: data.length, down: data.length, outcome: 'ok', status: 0, reason: '' });
    assert.equal(tunnelPending(), 0);
    await waitFor('the relay to finish', () => spliceActive() === 0);
    assert.deepEqual(front.unusable, []);
  });

  it('20 concurrent connections through one listener: each its own id, bytes and done', T, async () => {
    const proxy = await echoProxy();
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const payloads = Array.from({ length: 20 }, (_, i) => randomBytes(16 * 1024 + i));
    const echoed = await Promise.all(
      payloads.map(async (data) => {
        const client = await connectClient(front.port);
        const got = collect(client);
        client.end(data);
        return got;
      }),
    );
    echoed.forEach((b, i) => assert.equal(sha(b), sha(payloads[i]!), `connection ${i}`));
    const ids = front.decides.map((c) => c.id);
    assert.equal(new Set(ids).size, 20, 'ids are distinct');
    await waitFor('20 done() calls', () => front.dones.length === 20);
    const byId = new Map(front.dones.map((d) => [d.id, d]));
    for (const call of front.decides) {
      const d = byId.get(call.id)!;
      assert.ok(d, `done(${call.id})`);
      assert.equal(d.outcome, 'ok');
      assert.equal(d.up, d.down);
    }
    assert.deepEqual(
      front.dones.map((d) => d.up).sort((a, b) => a - b),
      payloads.map((p) => p.length),
    );
    assert.equal(proxy.conns.length, 20);
    assert.ok(proxy.requests.every((r) => r === REQ));
    assert.equal(tunnelPending(), 0);
  });

  // ---- 2-6. through a fake HTTP proxy -------------------------------------------

  it('via a proxy: sends exactly the CONNECT request, relays after 200, counts only client bytes', T, async () => {
    const proxy = await echoProxy();
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const msg = Buffer.from('ping through the proxy, and back');
    const got = collect(client);
    client.end(msg);
    assert.equal((await got).toString(), msg.toString());
    assert.deepEqual(proxy.requests, [REQ]);
    assert.equal(proxy.conns.length, 1);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual(d, { id: front.decides[0]!.id, up: msg.length, down: msg.length, outcome: 'ok', status: 0, reason: '' });
  });

  it('server bytes in the same write as the 200 reach the client, the answer head does not', T, async () => {
    const greeting = 'SSH-2.0-test\r\n';
    const proxy = await fakeProxy(({ sock }) => {
      sock.write(OK + greeting); // one write: one segment on loopback
      sock.resume(); // allowHalfOpen is off: the client's EOF ends this side too
    });
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const chunks: Buffer[] = [];
    let have = 0;
    client.on('data', (c: Buffer) => {
      chunks.push(c);
      have += c.length;
      if (have >= greeting.length) client.end();
    });
    await withTimeout(new Promise((r) => client.once('end', r)), 3_000, 'EOF');
    assert.equal(Buffer.concat(chunks).toString('latin1'), greeting);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.equal(d.outcome, 'ok');
    assert.equal(d.up, 0);
    assert.equal(d.down, greeting.length);
  });

  it('a 407 answer: answer-status with status and reason, and the client is reset', T, async () => {
    const proxy = await fakeProxy(({ sock }) => {
      sock.write('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n');
    });
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const d = await onlyDoneOf(front, await waitFor('decide', () => front.decides[0]?.id));
    assert.deepEqual(d, {
      id: front.decides[0]!.id,
      up: 0,
      down: 0,
      outcome: 'answer-status',
      status: 407,
      reason: 'Proxy Authentication Required',
    });
    assert.equal(await how, 'ECONNRESET');
    await waitFor('the proxy connection to be closed', () => proxy.conns[0]?.closed);
  });

  it('an answer that is not HTTP: answer-protocol', T, async () => {
    const proxy = await fakeProxy(({ sock }) => sock.write('SSH-2.0-x\r\n\r\n'));
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    const d = await onlyDoneOf(front, id);
    assert.deepEqual(d, { id, up: 0, down: 0, outcome: 'answer-protocol', status: 0, reason: '' });
    assert.equal(await how, 'ECONNRESET');
  });

  it('a proxy that closes without answering: answer-closed', T, async () => {
    const proxy = await fakeProxy(({ sock }) => sock.end());
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    assert.equal((await onlyDoneOf(front, id)).outcome, 'answer-closed');
    assert.deepEqual(proxy.requests, [REQ]);
    assert.equal(await how, 'ECONNRESET');
  });

  it('an answer head over 16 KiB: answer-oversized', T, async () => {
    const proxy = await fakeProxy(({ sock }) => sock.write(Buffer.alloc(17 * 1024, 'a'))); // and stays open
    const front = openFront({}, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    assert.equal((await onlyDoneOf(front, id)).outcome, 'answer-oversized');
    assert.equal(await how, 'ECONNRESET');
  });

  it('a proxy that never answers: answer-timeout after connectTimeoutMs', T, async () => {
    const proxy = await fakeProxy(noop);
    const front = openFront({ connectTimeoutMs: 300 }, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const call = await waitFor('decide', () => front.decides[0]);
    const d = await onlyDoneOf(front, call.id);
    const elapsed = Date.now() - call.at;
    assert.equal(d.outcome, 'answer-timeout');
    assert.ok(elapsed >= 250 && elapsed < 2_500, `answer-timeout after ${elapsed} ms, expected ~300`);
    assert.deepEqual(proxy.requests, [REQ]);
    assert.equal(await how, 'ECONNRESET');
  });

  it('nothing listening on the target: connect ECONNREFUSED, the client is reset', T, async () => {
    const port = await freePort();
    const front = openFront({}, () => [1, '127.0.0.1', port, undefined]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    const d = await onlyDoneOf(front, id);
    assert.deepEqual(d, { id, up: 0, down: 0, outcome: 'connect ECONNREFUSED', status: 0, reason: '' });
    assert.equal(await how, 'ECONNRESET');
  });

  // ---- 6b. one error table for both executors ----------------------------------------

  /**
   * The same proxy behaviour met by the addon (done()'s outcome through
   * outbound/failures.ts) and by the JS CONNECT client (openTunnel): the
   * client's page and the log line must not depend on which executor ran.
   * Before the shared table, openTunnel said `proxy …: read ECONNRESET`
   * where the addon said `proxy …: ECONNRESET`.
   */
  async function bothExecutors(
    behave: (c: ProxyConn) => void,
    target = { host: 'a.example', port: 22 },
    timeoutMs = 300,
  ): Promise<{ native: GatewayError | undefined; js: GatewayError | undefined; outcome: Outcome }> {
    const proxy = await fakeProxy((c) => behave(c));
    const endpoint = parseProxyUrl(`http://127.0.0.1:${proxy.port}`);
    const front = openFront({ connectTimeoutMs: timeoutMs }, () => [
      1,
      '127.0.0.1',
      proxy.port,
      connectRequest(endpoint, target.host, target.port),
    ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    const d = await onlyDoneOf(front, id);
    await how;
    const { outcome, detail } = front.raw.get(id)!;
    const authority = hostPort(target.host, target.port);
    const native = outcomeError(
      outcome,
      detail,
      { proxy: endpoint, via: hostPort(endpoint.host, endpoint.port), authority, port: target.port, timeoutMs },
      { status: d.status, reason: d.reason },
    );
    let js: GatewayError | undefined;
    await openTunnel({ proxy: endpoint, host: target.host, port: target.port, timeoutMs }).then(
      (s) => s.destroy(),
      (err: GatewayError) => (js = err),
    );
    return { native, js, outcome };
  }

  function sameError(r: { native: GatewayError | undefined; js: GatewayError | undefined }): GatewayError {
    assert.ok(r.native && r.js, `both executors failed (native ${r.native?.message}, js ${r.js?.message})`);
    assert.deepEqual(
      { code: r.js.code, status: r.js.status, message: r.js.message },
      { code: r.native.code, status: r.native.status, message: r.native.message },
    );
    return r.native;
  }

  it('a 403 to CONNECT: the same code, status and message from the addon and from openTunnel', T, async () => {
    const r = await bothExecutors(({ sock }) => sock.write('HTTP/1.1 403 Forbidden\r\n\r\n'));
    assert.equal(r.outcome, Outcomes.ANSWER_STATUS);
    const e = sameError(r);
    assert.equal(e.code, 'TG_ERR_UPSTREAM_403');
    assert.equal(e.status, 403);
    assert.match(e.message, /answered 403 Forbidden to CONNECT a\.example:22: .*port 22 refused/);
  });

  it('a 407 to CONNECT: the same error from both executors', T, async () => {
    const r = await bothExecutors(({ sock }) => sock.write('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n'));
    assert.equal(sameError(r).code, 'TG_ERR_UPSTREAM_407');
  });

  it('a proxy that closes before answering: the same error from both executors', T, async () => {
    const r = await bothExecutors(({ sock }) => sock.end());
    assert.equal(r.outcome, Outcomes.ANSWER_CLOSED);
    assert.equal(sameError(r).code, 'TG_ERR_UPSTREAM_CLOSED');
  });

  it('a proxy that stays silent: the same timeout error from both executors', T, async () => {
    const r = await bothExecutors(noop);
    assert.equal(r.outcome, Outcomes.ANSWER_TIMEOUT);
    const e = sameError(r);
    assert.equal(e.code, 'TG_ERR_UPSTREAM_TIMEOUT');
    assert.match(e.message, /within 300 ms/);
  });

  it('an answer that is not HTTP: the same error from both executors', T, async () => {
    const r = await bothExecutors(({ sock }) => sock.write('SSH-2.0-x\r\n\r\n'));
    assert.equal(r.outcome, Outcomes.ANSWER_PROTOCOL);
    assert.equal(sameError(r).code, 'TG_ERR_UPSTREAM_PROTOCOL');
  });

  it('a proxy that resets instead of answering: the same errno message from both executors', T, async () => {
    const r = await bothExecutors(({ sock }) => sock.resetAndDestroy());
    assert.equal(r.outcome, Outcomes.ANSWER);
    const e = sameError(r);
    assert.equal(e.code, 'TG_ERR_UPSTREAM_UNREACHABLE');
    assert.match(e.message, /: ECONNRESET$/);
  });

  // ---- 7. sniffing ------------------------------------------------------------------

  it('sniffing: null asks again with the longer head; the head goes upstream once, in order', T, async () => {
    const originGot: Buffer[] = [];
    let originEnded!: () => void;
    const originEnd = new Promise<void>((r) => (originEnded = r));
    const origin = await listenServer(
      (s) => {
        s.on('data', (c: Buffer) => originGot.push(c));
        s.on('end', () => {
          originEnded();
          s.end('pong');
        });
      },
      { allowHalfOpen: true },
    );
    const front = openFront({ sniff: true, speculate: false }, (call) =>
      call.head!.toString() === 'hello world' ? [1, '127.0.0.1', origin.port, undefined] : null,
    );
    const client = await connectClient(front.port);
    const got = collect(client);
    client.write('hello ');
    await waitFor('the first decide', () => front.decides.length === 1);
    client.write('world');
    await waitFor('the origin connection', () => origin.sockets.length === 1);
    client.end('|later');
    await withTimeout(originEnd, 3_000, 'EOF at the origin');
    assert.equal(Buffer.concat(originGot).toString(), 'hello world|later');
    assert.equal((await got).toString(), 'pong');

    assert.deepEqual(
      front.decides.map((c) => [c.head?.toString(), c.final, c.eof]),
      [
        ['hello ', false, false],
        ['hello world', false, false],
      ],
    );
    assert.equal(front.decides[0]!.id, front.decides[1]!.id);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual(d, { id: d.id, up: 'hello world|later'.length, down: 4, outcome: 'ok', status: 0, reason: '' });
  });

  it('sniffing: a head that reaches sniffMaxBytes is final; the bytes behind it follow in order', T, async () => {
    const origin = await echoServer();
    const front = openFront({ sniff: true, sniffMaxBytes: 8 }, () => [1, '127.0.0.1', origin.port, undefined]);
    const client = await connectClient(front.port);
    const got = collect(client);
    client.end('0123456789abcdef');
    assert.equal((await got).toString(), '0123456789abcdef');
    assert.equal(front.decides.length, 1);
    assert.equal(front.decides[0]!.head!.toString(), '01234567');
    assert.equal(front.decides[0]!.final, true);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.up, d.down, d.outcome], [16, 16, 'ok']);
  });

  it('sniffing: a silent client gets a final decide with an empty head after sniffTimeoutMs', T, async () => {
    const front = openFront({ sniff: true, sniffTimeoutMs: 200 }, () => [0]);
    const t0 = Date.now();
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const call = await waitFor('decide', () => front.decides[0], 2_000);
    const elapsed = call.at - t0;
    assert.ok(elapsed >= 150 && elapsed < 1_500, `decided after ${elapsed} ms, expected ~200`);
    assert.equal(call.head?.length, 0);
    assert.equal(call.final, true);
    assert.equal(call.eof, false);
    assert.equal(await how, 'end'); // [0]: closed, not reset
    assert.equal(front.decides.length, 1);
  });

  // A refused client (over its limit, a trickle, a forbidden SNI) got a FIN and could go on sending for as long as it liked.
  it('[5] resets the client at once and reports nothing', T, async () => {
    const front = openFront({ sniff: true, sniffTimeoutMs: 200 }, () => [5]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    await waitFor('decide', () => front.decides[0], 2_000);
    assert.equal(await how, 'ECONNRESET');
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
    assert.equal(tunnelPending(), 0);
  });

  it('sniffing: a client that closes before sending gets a final decide with eof', T, async () => {
    const front = openFront({ sniff: true }, () => [0]);
    const client = await connectClient(front.port);
    client.end();
    const call = await waitFor('decide', () => front.decides[0]);
    assert.deepEqual([call.head?.length, call.final, call.eof], [0, true, true]);
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
  });

  it('sniffing: a client that sends its head and EOF is decided with eof, and the EOF reaches the origin', T, async () => {
    const origin = await echoServer();
    const front = openFront({ sniff: true }, (call) => (call.final ? [1, '127.0.0.1', origin.port, undefined] : null));
    const client = await connectClient(front.port);
    const got = collect(client);
    client.end('hello');
    assert.equal((await got).toString(), 'hello');
    const last = front.decides[front.decides.length - 1]!;
    assert.deepEqual([last.head?.toString(), last.final, last.eof], ['hello', true, true]);
    const d = await onlyDoneOf(front, last.id);
    assert.deepEqual([d.up, d.down, d.outcome], [5, 5, 'ok']);
  });

  it('sniffing: a client reset before its first bytes gets a final decide with eof', T, async () => {
    const front = openFront({ sniff: true }, () => [0]);
    const client = await connectClient(front.port);
    client.resetAndDestroy();
    const call = await waitFor('decide', () => front.decides[0]);
    assert.deepEqual([call.head?.length, call.final, call.eof], [0, true, true]);
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
    assert.equal(tunnelPending(), 0);
  });

  it('sniffTimeoutMs bounds the whole sniff, not each gap between bytes (as readFirstBytes does)', T, async () => {
    const front = openFront({ sniff: true, sniffTimeoutMs: 300 }, (call) => (call.final ? [0] : null));
    const t0 = Date.now();
    const client = await connectClient(front.port);
    const how = closedHow(client, 3_000);
    // One byte every 100 ms for a second: never a 300 ms gap.
    for (let i = 0; i < 10 && !client.destroyed && front.decides.every((c) => !c.final); i++) {
      client.write('x');
      await delay(100); // the trickle under test, not a wait
    }
    const last = await waitFor('the final decide', () => front.decides.find((c) => c.final), 2_000);
    const elapsed = last.at - t0;
    await how;
    assert.ok(elapsed < 800, `final decide after ${elapsed} ms with sniffTimeoutMs 300`);
  });

  // ---- 8. speculation -----------------------------------------------------------------

  it('speculate: dials the proxy before the first bytes and uses that one connection', T, async () => {
    const proxy = await echoProxy();
    const front = openFront({ sniff: true, speculate: true }, (call) =>
      call.head!.length === 0 ? [3, '127.0.0.1', proxy.port] : [1, '127.0.0.1', proxy.port, REQ],
    );
    const client = await connectClient(front.port);
    const first = await waitFor('the speculative decide', () => front.decides[0]);
    assert.deepEqual([first.head?.length, first.final, first.eof], [0, false, false]);
    await waitFor('the speculative connection at the proxy', () => proxy.conns.length === 1);
    await delay(QUIET_MS); // a request sent on connect would reach the proxy meanwhile
    assert.deepEqual(proxy.requests, [], 'no request before the final answer');
    client.write('hello');
    assert.equal((await readBytes(client, 5)).toString(), 'hello');
    const got = collect(client);
    client.end(' world');
    assert.equal((await got).toString(), ' world');
    assert.equal(proxy.conns.length, 1, 'only the speculative connection reached the proxy');
    assert.deepEqual(proxy.requests, [REQ]);
    assert.deepEqual(
      front.decides.map((c) => [c.head?.toString(), c.final]),
      [
        ['', false],
        ['hello', false],
      ],
    );
    const d = await onlyDoneOf(front, first.id);
    assert.deepEqual([d.up, d.down, d.outcome], [11, 11, 'ok']);
  });

  it('speculate: a final answer elsewhere closes the speculative connection and dials the other', T, async () => {
    const wrong = await echoProxy();
    const right = await echoProxy();
    const front = openFront({ sniff: true, speculate: true }, (call) =>
      call.head!.length === 0 ? [3, '127.0.0.1', wrong.port] : [1, '127.0.0.1', right.port, REQ],
    );
    const client = await connectClient(front.port);
    await waitFor('the speculative connection', () => wrong.conns.length === 1);
    await delay(QUIET_MS); // not observable from JS: that the addon has seen the connect complete, so that a connected one is closed
    client.write('hi');
    assert.equal((await readBytes(client, 2)).toString(), 'hi');
    await waitFor('the speculative connection to be closed', () => wrong.conns[0]!.ended);
    assert.deepEqual(wrong.requests, []);
    assert.deepEqual(right.requests, [REQ]);
    assert.equal(right.conns.length, 1);
    const got = collect(client);
    client.end();
    assert.equal((await got).length, 0);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.up, d.down, d.outcome], [2, 2, 'ok']);
  });

  it('speculate: a silent client is decided after sniffTimeoutMs and the speculative connection is used', T, async () => {
    const greeting = 'SSH-2.0-server-first\r\n';
    const proxy = await fakeProxy(({ sock }) => {
      sock.write(OK + greeting);
      sock.resume();
    });
    const front = openFront({ sniff: true, speculate: true, sniffTimeoutMs: 200 }, (call) =>
      call.final ? [1, '127.0.0.1', proxy.port, REQ] : [3, '127.0.0.1', proxy.port],
    );
    const client = await connectClient(front.port);
    assert.equal((await readBytes(client, greeting.length)).toString(), greeting);
    assert.deepEqual(
      front.decides.map((c) => [c.head?.length, c.final]),
      [
        [0, false],
        [0, true],
      ],
    );
    const waited = front.decides[1]!.at - front.decides[0]!.at;
    assert.ok(waited >= 150 && waited < 1_500, `final decide after ${waited} ms, expected ~200`);
    assert.equal(proxy.conns.length, 1);
    assert.deepEqual(proxy.requests, [REQ]);
    const got = collect(client);
    client.end();
    assert.equal((await got).length, 0);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.up, d.down, d.outcome], [0, greeting.length, 'ok']);
  });

  it('speculate: a refused speculative connection is dialled again for the final answer and reported', T, async () => {
    const port = await freePort();
    const front = openFront({ sniff: true, speculate: true }, (call) =>
      call.head!.length === 0 ? [3, '127.0.0.1', port] : [1, '127.0.0.1', port, REQ],
    );
    const client = await connectClient(front.port);
    await waitFor('the speculative decide', () => front.decides.length === 1);
    await delay(QUIET_MS); // not observable from JS (no done() by design): the refusal comes back meanwhile
    assert.equal(front.dones.length, 0, 'a failed speculation alone does not end the connection');
    const how = closedHow(client);
    client.write('hello');
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.equal(d.outcome, 'connect ECONNREFUSED');
    assert.equal(await how, 'ECONNRESET');
  });

  it('speculate: [0] after a speculative dial closes both the client and the speculative connection', T, async () => {
    const proxy = await fakeProxy(noop);
    const front = openFront({ sniff: true, speculate: true }, (call) => (call.head!.length === 0 ? [3, '127.0.0.1', proxy.port] : [0]));
    const client = await connectClient(front.port);
    await waitFor('the speculative connection', () => proxy.conns.length === 1);
    const how = closedHow(client);
    client.write('hello');
    assert.equal(await how, 'end'); // 'hello' was read as the head: a plain close, not a reset
    await waitFor('the speculative connection to be closed', () => proxy.conns[0]!.ended);
    assert.deepEqual(proxy.requests, []);
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
    assert.equal(tunnelPending(), 0);
  });

  it('idleTimeoutMs reaches the relay: a silent tunnel ends with idle-timeout', T, async () => {
    const echo = await echoServer();
    const front = openFront({ idleTimeoutMs: 200 }, () => [1, '127.0.0.1', echo.port, undefined]);
    const client = await connectClient(front.port);
    client.write('x');
    assert.equal((await readBytes(client, 1)).toString(), 'x');
    const t0 = Date.now();
    const how = closedHow(client);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    const elapsed = Date.now() - t0;
    assert.deepEqual([d.up, d.down, d.outcome], [1, 1, 'idle-timeout']);
    assert.ok(elapsed >= 150 && elapsed < 2_000, `idle-timeout after ${elapsed} ms, expected ~200`);
    assert.equal(await how, 'end');
  });

  it('speculate: a speculative connection the proxy closed meanwhile is not used for the tunnel', T, async () => {
    let n = 0;
    let finSent = false;
    const proxy = await listenServer((sock) => {
      if (++n === 1) {
        sock.end(() => (finSent = true)); // e.g. the proxy's own idle limit
        return;
      }
      sock.once('data', () => {
        sock.write(OK);
        sock.pipe(sock);
      });
    });
    const front = openFront({ sniff: true, speculate: true }, (call) =>
      call.head!.length === 0 ? [3, '127.0.0.1', proxy.port] : [1, '127.0.0.1', proxy.port, REQ],
    );
    const client = await connectClient(front.port);
    // The addon does not poll a connected speculative connection: it peeks
    // at it when the final answer comes. Once shutdown(2) has returned, the
    // FIN is in the addon's receive queue (loopback delivers it within the call).
    await waitFor('the FIN of the speculative connection', () => finSent);
    client.write('hello');
    const echoed = await readBytes(client, 5).then(
      (b) => b.toString(),
      (e: Error) => e.message,
    );
    assert.equal(
      echoed,
      'hello',
      `the tunnel failed: done ${JSON.stringify(front.dones[0])} decides ${JSON.stringify(front.decides.map((c) => [c.head?.toString(), c.final]))}`,
    );
  });

  // ---- 9. close and hand-over --------------------------------------------------------

  it('[0] closes the client and done() is never called', T, async () => {
    const front = openFront({}, () => [0]);
    const client = await connectClient(front.port);
    assert.equal(await closedHow(client), 'end');
    assert.equal(front.decides.length, 1);
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
    assert.equal(tunnelPending(), 0);
  });

  it('[2] leaves the fd to JS: a net.Socket on it reads and writes the client', T, async () => {
    let taken: net.Socket | undefined;
    const front = openFront({}, (call) => {
      taken = new net.Socket({ fd: call.fd, readable: true, writable: true, pauseOnCreate: true } as net.SocketConstructorOpts);
      taken.on('error', noop);
      cleanups.push(() => taken?.destroy());
      return [2];
    });
    const client = await connectClient(front.port);
    const sock = await waitFor('the hand-over', () => taken);
    const gotUp = readBytes(sock, 'after hand-over'.length);
    client.write('after hand-over');
    assert.equal((await gotUp).toString(), 'after hand-over');
    const gotDown = collect(client);
    sock.end('written by JS');
    assert.equal((await gotDown).toString(), 'written by JS');
    await delay(QUIET_MS);
    assert.deepEqual(front.dones, []);
    assert.equal(tunnelPending(), 0);
  });

  // ---- 10. shutdown -------------------------------------------------------------------

  it('tunnelAbortAll ends a connection waiting for the proxy with done(aborted)', T, async () => {
    const proxy = await fakeProxy(noop);
    const front = openFront({ connectTimeoutMs: 10_000 }, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    await waitFor('the request at the proxy', () => proxy.requests.length === 1);
    assert.ok(tunnelPending() >= 1, `tunnelPending() = ${tunnelPending()}`);
    const n = tunnelAbortAll();
    assert.ok(n >= 1, `tunnelAbortAll() = ${n}`);
    const id = front.decides[0]!.id;
    // done() runs inside tunnelAbortAll.
    assert.deepEqual(front.dones, [{ id, up: 0, down: 0, outcome: 'aborted', status: 0, reason: '' }]);
    assert.equal(tunnelPending(), 0);
    assert.equal(await how, 'ECONNRESET');
    await waitFor('the proxy connection to be closed', () => proxy.conns[0]!.closed);
    await delay(QUIET_MS);
    assert.equal(front.dones.length, 1);
  });

  it('tunnelAbortAll from inside decide(): done(aborted) once, the answer is ignored', T, async () => {
    const echo = await echoServer();
    let n = -1;
    const front = openFront({}, () => {
      n = tunnelAbortAll();
      return [1, '127.0.0.1', echo.port, undefined];
    });
    const client = dialClient(front.port);
    assert.equal(await closedHow(client), 'ECONNRESET');
    assert.equal(n, 1);
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.equal(d.outcome, 'aborted');
    await delay(QUIET_MS);
    assert.equal(echo.sockets.length, 0, 'nothing dialled');
  });

  it('tunnelClose refuses new connections; a relaying one goes on', T, async () => {
    const echo = await echoServer();
    const front = openFront({}, () => [1, '127.0.0.1', echo.port, undefined]);
    const client = await connectClient(front.port);
    client.write('one');
    assert.equal((await readBytes(client, 3)).toString(), 'one');
    front.close();
    tunnelClose(front.handle); // idempotent
    await assert.rejects(connectClient(front.port), { code: 'ECONNREFUSED' });
    const got = collect(client);
    client.end('two');
    assert.equal((await got).toString(), 'two');
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.up, d.down, d.outcome], [6, 6, 'ok']);
    assert.equal(front.decides.length, 1);
  });

  // ---- 11. bad arguments and bad answers ----------------------------------------

  it('tunnelListen refuses callbacks that are not functions (wrapper and addon)', T, () => {
    const fd = listenTcp({ host: '127.0.0.1', port: 0 });
    try {
      const opts = { fd, sniff: false, redirect: false, sniffMaxBytes: 16, sniffTimeoutMs: 100, connectTimeoutMs: 100, idleTimeoutMs: 0 };
      const fn = (() => null) as TunnelDecide;
      assert.throws(() => tunnelListen(opts, 'nope' as unknown as TunnelDecide, noop, noop), {
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_TYPE',
      });
      assert.throws(() => tunnelListen(opts, fn, undefined as unknown as TunnelDone, noop), {
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_TYPE',
      });
      const raw = loadNative();
      const args = (decide: unknown, done: unknown, unusable: unknown, next?: unknown, upstream?: unknown) => () =>
        raw.tunnelListen(
          fd,
          false,
          false,
          undefined,
          16,
          100,
          100,
          0,
          decide as TunnelDecide,
          done as TunnelDone,
          unusable as TunnelUnusable,
          false,
          next as TunnelNext | undefined,
          false,
          0,
          upstream as TunnelUpstream | undefined,
        );
      assert.throws(args('nope', noop, noop), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: 'decide must be a function' });
      assert.throws(args(fn, 42, noop), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: 'done must be a function' });
      assert.throws(args(fn, noop, null), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: 'unusable must be a function' });
      assert.throws(args(fn, noop, noop, 7), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: 'next must be a function' });
      assert.throws(args(fn, noop, noop, undefined, 'x'), {
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_TYPE',
        message: 'upstream must be a function',
      });
      // The fd was not taken: it still is an open socket of ours.
      assert.ok(fs.fstatSync(fd).isSocket());
    } finally {
      fs.closeSync(fd);
    }
  });

  it('tunnelListen on an fd that is no socket throws the libuv error', T, () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      const opts = { fd, sniff: false, redirect: false, sniffMaxBytes: 16, sniffTimeoutMs: 100, connectTimeoutMs: 100, idleTimeoutMs: 0 };
      assert.throws(() => tunnelListen(opts, () => null, noop, noop), { code: 'EPERM', syscall: 'uv_poll_init_socket' });
    } finally {
      fs.closeSync(fd);
    }
  });

  // A libuv failure after the listener was allocated (the fd is already watched by this loop):
  // thrown, with nothing of the failed listener left behind, and the first one unharmed.
  it('tunnelListen on an fd another listener polls throws EEXIST and leaves that listener working', T, async () => {
    const fd = listenTcp({ host: '127.0.0.1', port: 0 });
    const opts = { fd, sniff: false, redirect: false, sniffMaxBytes: 16, sniffTimeoutMs: 100, connectTimeoutMs: 100, idleTimeoutMs: 0 };
    const decided: number[] = [];
    const first = tunnelListen(opts, (id) => (decided.push(id), [0]), noop, noop);
    cleanups.push(() => tunnelClose(first));
    assert.throws(() => tunnelListen(opts, () => [0], noop, noop), { code: 'EEXIST', syscall: 'uv_poll_init_socket' });
    const client = dialClient(localPort(fd));
    const how = closedHow(client);
    await waitFor('decide on the first listener', () => decided.length === 1);
    assert.equal(await how, 'end');
  });

  it('nonsense from decide() ends the connection without crashing', T, async () => {
    const cases: Array<[unknown, string]> = [
      ['x', 'internal-error'],
      [null, 'internal-error'], // null on a final call
      [[7], 'internal-error'],
      [[4], 'internal-error'], // "read on" is the addon's own, not an answer
      [[1, '127.0.0.1', 0, undefined], 'internal-error'],
      [[1, '127.0.0.1', 70000, undefined], 'internal-error'],
      [[1, '127.0.0.1', 1, 42], 'internal-error'],
      [[3, '127.0.0.1', 1], 'internal-error'], // speculation only before the final call
      [[1, 'not-an-ip', 1, undefined], 'socket EINVAL'],
    ];
    const front = openFront({}, (_call, n) => cases[n - 1]![0]);
    await eachResets(front, cases);
    assert.equal(front.decides.length, cases.length);
    assert.equal(tunnelPending(), 0);
  });
});

// ---- upstream(): failover, handshakes, pending answers (native/tunnel.c) ----------------

/** A 407 whose body the next leg's reader must skip: what squid sends before an NTLM challenge is answered. */
function answer407(challenge: string, body = 'x'.repeat(300)): string {
  return (
    `HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: ${challenge}\r\n` +
    `Content-Length: ${body.length}\r\nConnection: keep-alive\r\n\r\n${body}`
  );
}

/** Bytes of a 407 head and its Content-Length body, once all of them are in `b`; else undefined. */
function whole407(b: Buffer): number | undefined {
  const end = b.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const length = Number(/Content-Length: (\d+)/i.exec(b.subarray(0, end).toString('latin1'))?.[1] ?? 0);
  return b.length >= end + 4 + length ? end + 4 + length : undefined;
}

describe('native upstream(): failover, exchanges and pending answers', { skip }, () => {
  afterEach(cleanUp);

  it('a refused connect goes to upstream(), whose redial to the next proxy carries the connection', T, async () => {
    const dead = await freePort();
    const proxy = await echoProxy();
    const front = openFront({ upstream: () => [2, '127.0.0.1', proxy.port, REQ, false] }, () => [1, '127.0.0.1', dead, REQ]);
    const client = await connectClient(front.port);
    const got = collect(client);
    client.end('over the second proxy');
    assert.equal((await got).toString(), 'over the second proxy');
    assert.deepEqual(
      front.ups.map((u) => [u.outcome, u.bytes.length]),
      [['connect ECONNREFUSED', 0]],
    );
    assert.deepEqual(proxy.requests, [REQ]);
    assert.equal((await onlyDoneOf(front, front.decides[0]!.id)).outcome, 'ok');
  });

  it('a proxy that closes before answering, then null from upstream(): done(answer-closed), as without it', T, async () => {
    const proxy = await fakeProxy(({ sock }) => sock.destroy());
    const front = openFront({ upstream: () => null }, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const d = await onlyDoneOf(front, await waitFor('decide', () => front.decides[0]?.id));
    assert.equal(d.outcome, 'answer-closed');
    assert.deepEqual(
      front.ups.map((u) => u.outcome),
      ['answer-closed'],
    );
    assert.equal(await how, 'ECONNRESET');
  });

  it('a 407 shows its head; CONTINUE sends the next leg on the same connection, whose exchange skips the body', T, async () => {
    let legs = 0;
    const proxy = await fakeProxy(({ sock }) => {
      // After the first head, the fake reads the next ones itself.
      let buf = Buffer.alloc(0);
      sock.write(answer407('NTLM'));
      legs = 1;
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end + 4).toString('latin1');
        buf = buf.subarray(end + 4);
        legs++;
        if (head.includes('leg=2')) sock.write(answer407('NTLM challenge-bytes'));
        else if (head.includes('leg=3')) {
          sock.write(OK);
          sock.removeAllListeners('data');
          if (buf.length > 0) sock.write(buf);
          sock.pipe(sock);
        }
      });
      sock.resume();
    });
    const up: Upstreamer = ({ outcome, bytes }) => {
      if (outcome === 'answer-status') return [0, 'CONNECT x:1 HTTP/1.1\r\nleg=2\r\n\r\n', bytes.length];
      // The first 407's body, then the second 407 whole, then the 200.
      const n = whole407(bytes);
      if (bytes.toString('latin1').startsWith('HTTP/1.1 200')) return [1, bytes.indexOf('\r\n\r\n') + 4];
      if (n === undefined) return bytes.length < 300 ? [0, '', bytes.length] : null;
      if (bytes.includes('challenge-bytes')) return [0, 'CONNECT x:1 HTTP/1.1\r\nleg=3\r\n\r\n', n];
      return null;
    };
    const front = openFront({ upstream: up }, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const got = collect(client);
    client.end('authenticated');
    assert.equal((await got).toString(), 'authenticated');
    assert.equal(legs, 3);
    assert.equal(proxy.conns.length, 1, 'every leg on one connection');
    assert.equal(front.ups[0]!.outcome, 'answer-status');
    assert.match(front.ups[0]!.bytes.toString('latin1'), /^HTTP\/1\.1 407 [^]*\r\n\r\n$/, 'the head only, not its body');
    assert.ok(
      front.ups.slice(1).every((u) => u.outcome === 'ok'),
      'the legs after are exchanges',
    );
    assert.equal((await onlyDoneOf(front, front.decides[0]!.id)).outcome, 'ok');
  });

  it('[7] exchange: the answer comes split, null reads on, and bytes behind the handshake reach the client first', T, async () => {
    const greeting = 'SERVER-SPEAKS-FIRST\n';
    const srv = await listenServer((sock) => {
      let buf = '';
      sock.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf === 'HELLO') {
          sock.write('OK');
          setTimeout(() => sock.write('1'), 30);
        } else if (buf === 'HELLOREQ') {
          sock.removeAllListeners('data');
          sock.write('DONE' + greeting); // the reply and the destination's first bytes in one segment
          sock.pipe(sock);
        }
      });
    });
    const up: Upstreamer = ({ bytes }) => {
      const text = bytes.toString('latin1');
      if (text === 'OK') return null;
      if (text === 'OK1') return [0, 'REQ', 3];
      if (text.startsWith('DONE')) return [1, 4];
      return [3, Outcomes.ANSWER_PROTOCOL, '', 0, ''];
    };
    const front = openFront({ upstream: up }, () => [7, '127.0.0.1', srv.port, 'HELLO']);
    const client = await connectClient(front.port);
    const chunks: Buffer[] = [];
    client.on('data', (c: Buffer) => chunks.push(c));
    await waitFor('the greeting', () => Buffer.concat(chunks).toString() === greeting);
    client.end('echo me');
    await withTimeout(new Promise((r) => client.once('end', r)), 3_000, 'EOF');
    assert.equal(Buffer.concat(chunks).toString(), greeting + 'echo me');
    assert.deepEqual(
      front.ups.map((u) => u.bytes.toString('latin1')),
      ['OK', 'OK1', 'DONE' + greeting],
    );
    const d = await onlyDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.up, d.down], ['ok', 7, greeting.length + 7]);
  });

  it('[8] pending: tunnelResume brings the action later; an unknown or settled id is refused', T, async () => {
    const proxy = await echoProxy();
    const front = openFront({}, () => [8]);
    const client = await connectClient(front.port);
    const got = collect(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    await delay(50);
    assert.equal(tunnelPending(), 1);
    assert.equal(tunnelResume(id, [1, '127.0.0.1', proxy.port, REQ]), true);
    assert.equal(tunnelResume(id, [1, '127.0.0.1', proxy.port, REQ]), false, 'it waits no more');
    assert.equal(tunnelResume(id + 1000, [0]), false);
    client.end('resumed');
    assert.equal((await got).toString(), 'resumed');
    assert.equal((await onlyDoneOf(front, id)).outcome, 'ok');
  });

  it('[8] never resumed: done(pending-timeout) after connectTimeoutMs, the client is reset', T, async () => {
    const front = openFront({ connectTimeoutMs: 150 }, () => [8]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const call = await waitFor('decide', () => front.decides[0]);
    const d = await onlyDoneOf(front, call.id);
    assert.equal(d.outcome, 'pending-timeout');
    assert.ok(Date.now() - call.at >= 140, `ended after ${Date.now() - call.at} ms`);
    assert.equal(await how, 'ECONNRESET');
    assert.equal(tunnelResume(call.id, [0]), false);
  });

  it('upstream() pending, then resumed with a redial: the failover may wait for a lookup', T, async () => {
    const dead = await freePort();
    const proxy = await echoProxy();
    const front = openFront({ upstream: () => [4] }, () => [1, '127.0.0.1', dead, REQ]);
    const client = await connectClient(front.port);
    const got = collect(client);
    const id = await waitFor('decide', () => front.decides[0]?.id);
    await waitFor('upstream()', () => front.ups[0]);
    await delay(30);
    assert.equal(tunnelResume(id, [2, '127.0.0.1', proxy.port, REQ, false]), true);
    client.end('after the lookup');
    assert.equal((await got).toString(), 'after the lookup');
    assert.equal((await onlyDoneOf(front, id)).outcome, 'ok');
  });

  it('a proxy that answers 407 for ever: the 17th leg ends the connection with done(handshake)', T, async () => {
    const proxy = await fakeProxy(({ sock }) => {
      sock.write(answer407('NTLM', ''));
      sock.on('data', () => sock.write(answer407('NTLM', '')));
      sock.resume();
    });
    const up: Upstreamer = ({ outcome, bytes }) =>
      outcome === 'answer-status' || whole407(bytes) !== undefined ? [0, REQ, whole407(bytes) ?? bytes.length] : null;
    const front = openFront({ upstream: up }, () => [1, '127.0.0.1', proxy.port, REQ]);
    const client = await connectClient(front.port);
    const how = closedHow(client);
    const d = await onlyDoneOf(front, await waitFor('decide', () => front.decides[0]?.id));
    assert.equal(d.outcome, 'handshake');
    assert.equal(front.ups.length, 17);
    assert.equal(await how, 'ECONNRESET');
  });

  it('[3] fail from upstream() ends with that outcome; nonsense ends with internal-error; neither crashes', T, async () => {
    const dead = await freePort();
    const cases: Array<[unknown, string]> = [
      [[3, Outcomes.ANSWER_STATUS, '', 502, 'Bad Gateway'], 'answer-status'],
      [[3, Outcomes.CONNECT, 'EHOSTUNREACH', 0, ''], 'connect EHOSTUNREACH'],
      [[1, 0], 'internal-error'], // established after a failure: nothing was shown
      [[0, 'x', 5], 'internal-error'], // consumes more than it was shown
      [[2, 'nope', 1, REQ, false], 'socket EINVAL'], // as from decide()
      [[3, 0, '', 0, ''], 'internal-error'], // "fail" with OK
      [[9], 'internal-error'],
      ['x', 'internal-error'],
    ];
    const front = openFront({ upstream: (_c, n) => cases[n - 1]![0] }, () => [1, '127.0.0.1', dead, REQ]);
    await eachResets(front, cases);
    assert.equal(tunnelPending(), 0);
  });
});

// ---- plain HTTP: the framed client direction (native/splice.c) --------------------

interface FullDone extends DoneCall {
  fd: number;
  rest: Buffer | undefined;
}

interface NextCall {
  id: number;
  bytes: Buffer;
  eof: boolean;
}

interface HttpFront {
  port: number;
  decides: DecideCall[];
  nexts: NextCall[];
  dones: FullDone[];
  /** A net.Socket on a client fd done() gave up (the test then owns it). */
  take(d: FullDone): net.Socket;
}

/** What next() answers; `unknown` so that nonsense can be answered too. */
type Nexter = (call: NextCall, n: number) => unknown;

/**
 * A listener with next() (an HTTP port): it sniffs, so decide() sees the
 * first request's head. Client fds that done() gives up are closed after the
 * test unless the test took them.
 */
function openHttpFront(o: FrontOptions, decider: Decider, nexter: Nexter): HttpFront {
  const fd = listenTcp({ host: '127.0.0.1', port: 0, transparent: false });
  const decides: DecideCall[] = [];
  const nexts: NextCall[] = [];
  const dones: FullDone[] = [];
  const untaken = new Set<number>();
  const decide = ((id, cfd, clientIp, clientPort, dstIp, dstPort, head, final, eof) => {
    const call: DecideCall = {
      id,
      fd: cfd,
      clientIp,
      clientPort,
      dstIp,
      dstPort,
      head: head === undefined ? undefined : Buffer.from(head),
      final,
      eof,
      at: Date.now(),
    };
    decides.push(call);
    return decider(call, decides.length);
  }) as TunnelDecide;
  const next = ((id, bytes, eof) => {
    const call: NextCall = { id, bytes: Buffer.from(bytes), eof };
    nexts.push(call);
    return nexter(call, nexts.length);
  }) as TunnelNext;
  const done: TunnelDone = (id, up, down, outcome, detail, status, reason, dfd, rest) => {
    if (dfd >= 0) untaken.add(dfd);
    dones.push({
      id,
      up,
      down,
      outcome: outcomeText(outcome, detail),
      status,
      reason,
      fd: dfd,
      rest: rest === undefined ? undefined : Buffer.from(rest),
    });
  };
  let handle: TunnelHandle;
  try {
    handle = tunnelListen(
      {
        fd,
        sniff: true,
        redirect: false,
        sniffMaxBytes: o.sniffMaxBytes ?? 16 * 1024,
        sniffTimeoutMs: o.sniffTimeoutMs ?? 2_000,
        connectTimeoutMs: o.connectTimeoutMs ?? 2_000,
        idleTimeoutMs: o.idleTimeoutMs ?? 0,
        headTimeoutMs: o.headTimeoutMs ?? 0,
        next,
      },
      decide,
      done,
      noop,
    );
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  cleanups.push(() => {
    tunnelClose(handle);
    for (const f of untaken) fs.closeSync(f);
    untaken.clear();
  });
  return {
    port: localPort(fd),
    decides,
    nexts,
    dones,
    take(d) {
      assert.ok(d.fd >= 0 && untaken.delete(d.fd), `done(${d.id}) gave no fd of its own (${d.fd})`);
      const s = new net.Socket({ fd: d.fd, readable: true, writable: true });
      s.on('error', noop);
      cleanups.push(() => s.destroy());
      return s;
    },
  };
}

function httpDoneOf(front: HttpFront, id: number, ms = 3_000): Promise<FullDone> {
  return waitFor(`done(${id})`, () => front.dones.find((d) => d.id === id), ms);
}

async function onlyHttpDoneOf(front: HttpFront, id: number, ms = 3_000): Promise<FullDone> {
  const d = await httpDoneOf(front, id, ms);
  await delay(QUIET_MS);
  assert.equal(front.dones.filter((x) => x.id === id).length, 1, `done(${id}) called more than once`);
  return d;
}

interface OriginConn {
  sock: net.Socket;
  chunks: Buffer[];
  ended: boolean;
  closed: boolean;
}

/** An origin (or proxy) that keeps what it receives and answers only when the test says. Half-open: a FIN is seen as `ended`. */
async function recordingOrigin(): Promise<{ port: number; conns: OriginConn[] }> {
  const conns: OriginConn[] = [];
  const srv = await listenServer(
    (sock) => {
      const c: OriginConn = { sock, chunks: [], ended: false, closed: false };
      conns.push(c);
      sock.on('data', (d: Buffer) => c.chunks.push(d));
      sock.on('end', () => (c.ended = true));
      sock.on('close', () => (c.closed = true));
    },
    { allowHalfOpen: true },
  );
  return { port: srv.port, conns };
}

const got = (c: OriginConn): Buffer => Buffer.concat(c.chunks);

/** The length of the request head at the start of `b` (with its CRLFCRLF), or -1 when it is not whole yet. */
function headLength(b: Buffer): number {
  const i = b.indexOf('\r\n\r\n');
  return i < 0 ? -1 : i + 4;
}

/** The head as the framer would send it on: absolute form, so that the test can tell it from the client's. */
const rewrite = (head: string): string => head.replace(/^(\S+) \//, '$1 http://origin.test/');

function contentLength(head: string): number {
  const m = /\r\ncontent-length: *(\d+)/i.exec(head);
  return m ? Number(m[1]) : 0;
}

/** decide() of an HTTP port: read on until the head is whole, then [6] to `port` with the rewritten head and its body as budget. */
function httpDecider(port: number): Decider {
  return (call) => {
    const n = headLength(call.head!);
    if (n < 0) return call.final ? [0] : null;
    const head = call.head!.toString('latin1', 0, n);
    return [6, '127.0.0.1', port, rewrite(head), n, contentLength(head)];
  };
}

/** next() of a Content-Length framer: read on until a head is whole, then forward it rewritten with its body. */
const headNexter: Nexter = ({ bytes, eof }) => {
  const n = headLength(bytes);
  if (n < 0) return eof ? [2] : null;
  const head = bytes.toString('latin1', 0, n);
  return [0, rewrite(head), n, contentLength(head)];
};

function response(body: Buffer | string, status = '200 OK', extra = ''): Buffer {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1');
  return Buffer.concat([Buffer.from(`HTTP/1.1 ${status}\r\nContent-Length: ${b.length}\r\n${extra}\r\n`, 'latin1'), b]);
}

/** Sockets this process has open (/proc/self/fd links named socket:[inode]). */
function openSockets(): number {
  let n = 0;
  for (const f of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${f}`).startsWith('socket:')) n++;
    } catch {
      // the fd of readdir itself, closed meanwhile
    }
  }
  return n;
}

describe('native plain HTTP relay in frames (native/splice.c)', { skip }, () => {
  afterEach(cleanUp);

  it(
    'one request: out replaces the head, the body passes verbatim (part with the head, the rest in pieces), the response comes back unchanged',
    T,
    async () => {
      const origin = await recordingOrigin();
      const front = openHttpFront({}, httpDecider(origin.port), () => assert.fail('no boundary after the only request'));
      const body = randomBytes(40);
      const head = `POST /upload HTTP/1.1\r\nHost: origin.test\r\nContent-Length: ${body.length}\r\n\r\n`;
      const out = rewrite(head);
      const client = await connectClient(front.port);
      client.write(Buffer.concat([Buffer.from(head, 'latin1'), body.subarray(0, 7)]));
      const up = await waitFor('the origin connection', () => origin.conns[0]);
      await waitFor('the head and the first body bytes', () => got(up).length === out.length + 7);
      // The rest in 3-byte pieces, each sent once the one before has arrived: each is its own segment.
      for (let at = 7; at < body.length; at += 3) {
        const piece = body.subarray(at, at + 3);
        client.write(piece);
        await waitFor(`body up to ${at + piece.length}`, () => got(up).length === out.length + at + piece.length);
      }
      assert.equal(got(up).toString('latin1'), out + body.toString('latin1'));
      const res = response(randomBytes(64 * 1024));
      const back = readBytes(client, res.length);
      up.sock.write(res);
      assert.equal(sha(await back), sha(res));

      const all = collect(client);
      client.end();
      await waitFor('the FIN at the origin', () => up.ended);
      up.sock.end();
      assert.equal((await all).length, 0);
      const d = await onlyHttpDoneOf(front, front.decides[front.decides.length - 1]!.id);
      assert.deepEqual(
        { ...d, id: 0 },
        { id: 0, up: out.length + body.length, down: res.length, outcome: 'ok', status: 200, reason: '', fd: -1, rest: undefined },
      );
      assert.equal(front.nexts.length, 0);
    },
  );

  it('keep-alive: next() at each boundary, pipelined requests in one segment, forward steps in order, bodies between', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), headNexter);
    const req1 = 'GET /one HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const req2 = 'POST /two HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\n\r\n';
    const req3 = 'GET /three HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.write(req1);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length === rewrite(req1).length);
    const res1 = response('first');
    const back1 = readBytes(client, res1.length);
    up.sock.write(res1);
    assert.equal((await back1).toString(), res1.toString());
    assert.equal(front.nexts.length, 0, 'no boundary before the client sent more');

    client.write(req2 + 'abcd' + req3); // pipelined: one write, one segment
    const expected = rewrite(req1) + rewrite(req2) + 'abcd' + rewrite(req3);
    await waitFor('the pipelined requests', () => got(up).length === expected.length);
    assert.equal(got(up).toString('latin1'), expected);
    const id = front.decides[0]!.id;
    assert.deepEqual(
      front.nexts.map((n) => [n.id, n.bytes.toString('latin1'), n.eof]),
      [
        [id, req2 + 'abcd' + req3, false],
        [id, req3, false],
      ],
    );
    const res23 = Buffer.concat([response('second'), response(randomBytes(3000))]);
    const back23 = readBytes(client, res23.length);
    up.sock.write(res23);
    assert.equal(sha(await back23), sha(res23));

    const rest = collect(client);
    client.end();
    await waitFor('the FIN at the origin', () => up.ended);
    up.sock.end();
    await rest;
    const d = await onlyHttpDoneOf(front, id);
    assert.deepEqual([d.up, d.down, d.outcome, d.status, d.fd], [expected.length, res1.length + res23.length, 'ok', 200, -1]);
    assert.equal(front.nexts.length, 2, 'EOF at a boundary with nothing read asks nothing');
  });

  // Two requests in one write, the second going another way: the hand-over waited only for upstream to be quiet, which
  // it was before the first answer had even begun, and that answer was lost. With `head` marked, the next request is
  // not looked at until the last one's answer begins.
  it('head marked: the next pipelined request is not read before the answer to the last one begins', T, async () => {
    const origin = await recordingOrigin();
    const decider: Decider = (call) => {
      const n = headLength(call.head!);
      if (n < 0) return call.final ? [0] : null;
      return [6, '127.0.0.1', origin.port, rewrite(call.head!.toString('latin1', 0, n)), n, 0, true];
    };
    const nexter: Nexter = ({ bytes }) => {
      const n = headLength(bytes);
      if (n < 0) return null;
      const head = bytes.toString('latin1', 0, n);
      return head.includes('/other') ? [1] : [0, rewrite(head), n, 0, true];
    };
    const front = openHttpFront({}, decider, nexter);
    const req1 = 'GET /one HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const req2 = 'GET /two HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const req3 = 'GET /other HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.write(req1 + req2 + req3);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length === rewrite(req1).length);
    // No answer yet: the second request waits in the relay, unread by next().
    await new Promise((r) => setTimeout(r, QUIET_MS));
    assert.equal(front.nexts.length, 0, 'next() before the first answer began');
    assert.equal(got(up).toString('latin1'), rewrite(req1));
    const res1 = response('first');
    const res2 = response('second');
    const back = readBytes(client, res1.length + res2.length);
    up.sock.write(res1);
    await waitFor('the second request', () => got(up).length === rewrite(req1).length + rewrite(req2).length);
    assert.equal(front.nexts.length, 1, 'the second request was read once the first answer began');
    // The third goes elsewhere: hand-over, but not before the second answer (owed, not begun) has come and gone out.
    await new Promise((r) => setTimeout(r, QUIET_MS));
    assert.equal(front.dones.length, 0, 'handed over before the second answer began');
    up.sock.write(res2);
    assert.equal((await back).toString('latin1'), res1.toString('latin1') + res2.toString('latin1'));
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.equal(d.outcome, 'handed-over');
    assert.equal(d.rest?.toString('latin1'), req3);
    assert.ok(d.fd >= 0);
    front.take(d).destroy();
    client.destroy();
  });

  // An origin that answers at once (nginx on the next veth): its answer was already in the socket when the relay
  // started, was moved there, and nothing looked at the client side after it. The pipelined request behind, routed
  // elsewhere, waited for the client's next packet (its FIN, a second later in the e2e suite) to be handed over.
  it('an answer already waiting when the relay starts: the pipelined request behind it is still looked at at once', T, async () => {
    const res1 = response('first');
    // Another process, so that it can accept and answer while this loop is held (below).
    const origin = spawn(
      process.execPath,
      [
        '-e',
        `const net = require('net');
         const srv = net.createServer((s) => { s.write(Buffer.from(process.argv[1], 'base64')); s.on('data', () => {}); s.on('error', () => {}); });
         srv.listen(0, '127.0.0.1', () => console.log(srv.address().port));`,
        res1.toString('base64'),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    cleanups.push(() => origin.kill());
    const port = Number(await new Promise<string>((resolve) => origin.stdout.once('data', (d: Buffer) => resolve(d.toString()))));
    const decider: Decider = (call) => {
      const n = headLength(call.head!);
      if (n < 0) return call.final ? [0] : null;
      // Held once the connect is under way: when the loop looks again, the connection is up and its answer is there.
      setImmediate(() => {
        const until = Date.now() + 200;
        while (Date.now() < until);
      });
      return [6, '127.0.0.1', port, rewrite(call.head!.toString('latin1', 0, n)), n, 0, true];
    };
    const nexter: Nexter = ({ bytes }) => (headLength(bytes) < 0 ? null : [1]);
    const front = openHttpFront({}, decider, nexter);
    const req1 = 'GET /one HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const req2 = 'GET /other HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n';
    const client = await connectClient(front.port);
    const back = readBytes(client, res1.length);
    client.write(req1 + req2);
    assert.equal((await back).toString('latin1'), res1.toString('latin1'));
    // Well before the client does anything more (it never does here).
    const d = await onlyHttpDoneOf(front, (await waitFor('decide()', () => front.decides[0])).id, 1_000);
    assert.equal(d.outcome, 'handed-over');
    assert.equal(d.rest?.toString('latin1'), req2);
    front.take(d).destroy();
    client.destroy();
  });

  // A head sent a few bytes at a time asked next() once per piece: a head trickled a byte at a time cost a call into
  // JS and a copy of everything so far per byte (60 KB: about a second of the loop). A frame ends with a LF, so
  // next() is asked about the first bytes after a boundary and then only when a LF came.
  it(
    'read more: next() answers null until the head is whole, sent a few bytes at a time, asked only when a LF came; nothing goes upstream before',
    T,
    async () => {
      const origin = await recordingOrigin();
      const front = openHttpFront({}, httpDecider(origin.port), headNexter);
      const req1 = 'GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n';
      const req2 = 'GET /b HTTP/1.1\r\nHost: origin.test\r\nX-Long: ' + 'y'.repeat(40) + '\r\n\r\n';
      const client = await connectClient(front.port);
      client.write(req1);
      const up = await waitFor('the origin connection', () => origin.conns[0]);
      await waitFor('the first request', () => got(up).length === rewrite(req1).length);
      const pieces: string[] = [];
      for (let at = 0; at < req2.length; at += 5) pieces.push(req2.slice(at, at + 5));
      let asked = 0;
      for (const [i, piece] of pieces.entries()) {
        client.write(piece);
        if (i > 0 && !piece.includes('\n')) continue;
        asked++;
        await waitFor(`next() on piece ${i}`, () => front.nexts.length === asked);
        assert.equal(
          front.nexts[asked - 1]!.bytes.toString('latin1'),
          pieces.slice(0, i + 1).join(''),
          `piece ${i}: all bytes since the boundary`,
        );
        if (i < pieces.length - 1) assert.equal(got(up).length, rewrite(req1).length, `piece ${i}: nothing of a partial head upstream`);
      }
      await waitFor('the second request', () => got(up).length === rewrite(req1).length + rewrite(req2).length);
      assert.equal(got(up).toString('latin1'), rewrite(req1) + rewrite(req2));
      assert.ok(asked < pieces.length / 2, `${asked} of ${pieces.length} pieces asked about`);
      assert.equal(front.nexts.length, asked, 'next() asked about a piece without a LF');
      client.end();
      await waitFor('the FIN at the origin', () => up.ended);
      up.sock.end();
      const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
      assert.deepEqual([d.up, d.down, d.outcome], [rewrite(req1).length + rewrite(req2).length, 0, 'ok']);
    },
  );

  // Slowloris on a kept-alive connection: the first head had the sniff deadline, a later one none on the fast path
  // (the Node path's headersTimeout did not apply there): a byte now and then, each resetting the idle timer, held
  // the connection for ever.
  it('a later head trickled in is cut at headTimeoutMs from its first bytes: done(head-timeout) with the client fd', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({ headTimeoutMs: 300, idleTimeoutMs: 5_000 }, httpDecider(origin.port), headNexter);
    const req1 = 'GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.write(req1);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length === rewrite(req1).length);
    const res1 = response('first');
    const back = readBytes(client, res1.length);
    up.sock.write(res1);
    await back;
    // An idle kept-alive connection is not a partial head: no deadline runs while nothing came.
    await delay(450);
    assert.equal(front.dones.length, 0, 'cut while idle between requests');
    const started = Date.now();
    const trickle = setInterval(() => client.write('X'), 50);
    cleanups.push(() => clearInterval(trickle));
    client.write('GET /b HTTP/1.1\r\nHost: origin.test\r\n');
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id, 2_000);
    clearInterval(trickle);
    const took = Date.now() - started;
    assert.equal(d.outcome, 'head-timeout');
    assert.ok(d.fd >= 0, 'the client fd comes back for the 408');
    assert.ok(took >= 280 && took < 1_500, `cut after ${took} ms`);
    assert.equal(got(up).toString('latin1'), rewrite(req1), 'nothing of the partial head went upstream');
    front.take(d).destroy();
    client.destroy();
  });

  it('chunked-like: many small forward steps with budgets, each out in place of what it consumed, all from one segment', T, async () => {
    const origin = await recordingOrigin();
    // As src/pipeline/http-framer.ts does per chunk: the chunk line (here normalised to lower case,
    // without its extension) replaces the client's, the data passes as budget, then CRLF, then the last chunk.
    let state: 'line' | 'end' | 'trailers' = 'line';
    const nexter: Nexter = ({ bytes }) => {
      const crlf = bytes.indexOf('\r\n');
      if (state === 'end') {
        if (bytes.length < 2) return null;
        state = 'line';
        return [0, '\r\n', 2, 0];
      }
      if (crlf < 0) return null;
      if (state === 'trailers') return [0, '\r\n', 2, 0];
      const line = bytes.toString('latin1', 0, crlf);
      const size = parseInt(line.split(';')[0]!, 16);
      state = size === 0 ? 'trailers' : 'end';
      return [0, `${size.toString(16)}\r\n`, crlf + 2, size];
    };
    const front = openHttpFront(
      {},
      (call) => {
        const n = headLength(call.head!);
        if (n < 0) return null;
        return [6, '127.0.0.1', origin.port, rewrite(call.head!.toString('latin1', 0, n)), n, 0];
      },
      nexter,
    );
    const head = 'POST /chunks HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n';
    const sent: Buffer[] = [Buffer.from(head, 'latin1')];
    const expected: Buffer[] = [Buffer.from(rewrite(head), 'latin1')];
    for (let i = 0; i < 60; i++) {
      const data = randomBytes(1 + ((i * 37) % 300));
      sent.push(Buffer.from(`${data.length.toString(16).toUpperCase()};ext=${i}\r\n`, 'latin1'), data, Buffer.from('\r\n'));
      expected.push(Buffer.from(`${data.length.toString(16)}\r\n`, 'latin1'), data, Buffer.from('\r\n'));
    }
    sent.push(Buffer.from('0\r\n\r\n'));
    expected.push(Buffer.from('0\r\n\r\n'));
    const want = Buffer.concat(expected);
    const client = await connectClient(front.port);
    client.write(Buffer.concat(sent));
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the whole chunked body', () => got(up).length >= want.length);
    assert.equal(sha(got(up)), sha(want));
    assert.equal(front.nexts.length, 60 * 2 + 2, 'one step per chunk line, per chunk end, for the last chunk and the trailers');
    const res = response('ok');
    const back = readBytes(client, res.length);
    up.sock.write(res);
    assert.equal((await back).toString(), res.toString());
    client.end();
    await waitFor('the FIN at the origin', () => up.ended);
    up.sock.end();
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.up, d.down, d.outcome, d.status], [want.length, res.length, 'ok', 200]);
  });
  it('hand-over while a response is still on its way: done() once it is all out, with the fd and the unread bytes', T, async () => {
    const origin = await recordingOrigin();
    let handOver = false;
    const front = openHttpFront({}, httpDecider(origin.port), (call) => (handOver ? [1] : headNexter(call, 0)));
    const req1 = 'GET /big HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const req2 = 'GET /elsewhere HTTP/1.1\r\nHost: other.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.pause(); // the client does not read yet: the response piles up in the kernel and in the relay's pipe
    client.write(req1);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length === rewrite(req1).length);
    // Written on the fd, not through Node's stream: every byte is then in the kernel (bytes left in
    // Node's own buffer are invisible to the addon, which would see upstream quiet between two
    // writes), and the path is known to be full: the client's queue, the relay's pipe, the sockets.
    const upFd = socketFd(up.sock);
    const sent: Buffer[] = [Buffer.from('HTTP/1.1 200 OK\r\n\r\n')];
    fs.writeSync(upFd, sent[0]!);
    const block = randomBytes(64 * 1024);
    const fill = (): number => {
      let n = 0;
      for (;;) {
        let w: number;
        try {
          w = fs.writeSync(upFd, block);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return n;
          throw e;
        }
        sent.push(block.subarray(0, w));
        n += w;
        if (w < block.length) return n;
      }
    };
    let idle = 0;
    await waitFor('the way to the client to be full', () => (fill() === 0 ? ++idle >= 3 : ((idle = 0), false)), 5_000);
    const res = Buffer.concat(sent);
    handOver = true;
    client.write(req2);
    await waitFor('next() on the second request', () => front.nexts.length === 1);
    assert.equal(front.nexts[0]!.bytes.toString('latin1'), req2);
    await delay(QUIET_MS);
    assert.equal(
      front.dones.length,
      0,
      `no hand-over while response bytes wait for the client: ${JSON.stringify(front.dones)} of ${res.length}`,
    );
    const all: Buffer[] = [];
    client.on('data', (b: Buffer) => all.push(b));
    client.resume();
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual(
      [d.outcome, d.up, d.down, d.status, d.rest?.toString('latin1')],
      ['handed-over', rewrite(req1).length, res.length, 200, req2],
    );
    assert.ok(d.fd >= 0, `fd ${d.fd}`);
    await waitFor('the origin connection to be closed', () => up.ended);
    assert.equal(got(up).toString('latin1'), rewrite(req1), 'the handed-over request never went upstream');
    // The fd is the client's socket: what JS writes comes after the last response byte.
    const sock = front.take(d);
    const fromClient = readBytes(sock, 5);
    client.write('later');
    assert.equal((await fromClient).toString(), 'later');
    const ended = new Promise<void>((r) => client.once('end', r));
    sock.end('HTTP/1.1 502 Bad Gateway\r\n\r\n');
    await withTimeout(ended, 3_000, 'EOF at the client');
    const seen = Buffer.concat(all);
    assert.equal(sha(seen), sha(Buffer.concat([res, Buffer.from('HTTP/1.1 502 Bad Gateway\r\n\r\n')])));
  });

  it('hand-over with upstream quiet: done() at once, rest = what next() saw', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), () => [1]);
    const client = await connectClient(front.port);
    client.write('GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n');
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length > 0);
    const res = response('one');
    const back = readBytes(client, res.length);
    up.sock.write(res);
    await back;
    client.write('PUT /x HTTP/1.1\r\n'); // a partial head is enough for this framer
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.down, d.rest?.toString('latin1')], ['handed-over', res.length, 'PUT /x HTTP/1.1\r\n']);
    const sock = front.take(d);
    const got2 = readBytes(client, 2);
    sock.write('ok');
    assert.equal((await got2).toString(), 'ok');
  });
  // A pipelining client whose next request is handed over while the response before it is still being produced
  // (squid writes a head and its body apart; a slow origin): "quiet" saw only the bytes already in the kernel, so the
  // relay let go between two of the upstream's writes, closed the upstream, and the rest of the response was lost.
  // Now upstream must also have sent nothing for 250 ms; a longer pause still ends the response early (todo).
  for (const [pauseMs, todo] of [
    [100, false],
    [400, 'answers are not parsed: a pause longer than the grace looks like the end'],
  ] as const) {
    it(`hand-over waits for the end of a response whose second half comes ${pauseMs} ms later`, { ...T, todo }, async () => {
      const origin = await recordingOrigin();
      let handOver = false;
      const front = openHttpFront({}, httpDecider(origin.port), (call) => (handOver ? [1] : headNexter(call, 0)));
      const client = await connectClient(front.port);
      client.write('GET /slow HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      const up = await waitFor('the origin connection', () => origin.conns[0]);
      await waitFor('the first request', () => got(up).length > 0);
      const res = response('0123456789'.repeat(10));
      const first = readBytes(client, res.length - 50);
      up.sock.write(res.subarray(0, res.length - 50));
      await first;
      handOver = true;
      client.write('GET /other HTTP/1.1\r\nHost: other.test\r\n\r\n');
      await waitFor('next() on the second request', () => front.nexts.length === 1);
      await delay(pauseMs);
      up.sock.write(res.subarray(res.length - 50));
      const d = await httpDoneOf(front, front.decides[0]!.id);
      assert.equal(d.outcome, 'handed-over');
      assert.equal(d.down, res.length, 'the end of the first response reached the client before the hand-over');
      front.take(d).destroy();
      client.destroy();
    });
  }

  for (const [what, head, stops] of [
    ['407', 'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\nContent-Length: 5\r\n\r\n', true],
    [
      '502 with X-Squid-Error',
      'HTTP/1.1 502 Bad Gateway\r\nServer: squid\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\nContent-Length: 5\r\n\r\n',
      true,
    ],
    [
      '503 with Proxy-Status',
      'HTTP/1.1 503 Service Unavailable\r\nProxy-Status: squid; error=connection_refused\r\nContent-Length: 5\r\n\r\n',
      true,
    ],
    ['502 from the origin', 'HTTP/1.1 502 Bad Gateway\r\nServer: nginx\r\nContent-Length: 5\r\n\r\n', false],
    ['200', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n', false],
  ] as const) {
    it(
      `first response ${what}: ${stops ? 'stops before the client sees a byte, done() gets the fd and the head' : 'passes unchanged, its status reported'}`,
      T,
      async () => {
        const origin = await recordingOrigin();
        const front = openHttpFront({}, httpDecider(origin.port), headNexter);
        const req = 'GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n';
        const client = await connectClient(front.port);
        const seen: Buffer[] = [];
        client.on('data', (b: Buffer) => seen.push(b));
        client.write(req);
        const up = await waitFor('the origin connection', () => origin.conns[0]);
        await waitFor('the request', () => got(up).length === rewrite(req).length);
        up.sock.write(head + 'body!');
        const status = Number(head.slice(9, 12));
        if (!stops) {
          await waitFor('the response at the client', () => Buffer.concat(seen).length === head.length + 5);
          assert.equal(Buffer.concat(seen).toString('latin1'), head + 'body!');
          client.end();
          await waitFor('the FIN at the origin', () => up.ended);
          up.sock.end();
          const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
          assert.deepEqual([d.outcome, d.status, d.reason, d.fd, d.down], ['ok', status, '', -1, head.length + 5]);
          return;
        }
        const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
        assert.deepEqual([d.outcome, d.status, d.up, d.down], ['answer-status', status, rewrite(req).length, 0]);
        assert.equal(d.reason, head, 'reason: the response head');
        await waitFor('the origin connection to be closed', () => up.closed); // a reset: its response was not read
        // The client heard nothing from upstream: the fd is JS's for the gateway's own answer.
        const sock = front.take(d);
        const ended = new Promise<void>((r) => client.once('end', r));
        sock.end('gateway answer');
        await withTimeout(ended, 3_000, 'EOF at the client');
        assert.equal(Buffer.concat(seen).toString('latin1'), 'gateway answer');
      },
    );
  }

  it('connect refused on [6]: done(connect ECONNREFUSED) with the client fd, which still works', T, async () => {
    const port = await freePort();
    const front = openHttpFront({}, httpDecider(port), headNexter);
    const client = await connectClient(front.port);
    client.write('GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n');
    const d = await onlyHttpDoneOf(front, await waitFor('decide', () => front.decides.find((c) => headLength(c.head!) > 0)?.id));
    assert.deepEqual([d.outcome, d.up, d.down, d.status], ['connect ECONNREFUSED', 0, 0, 0]);
    const sock = front.take(d);
    const back = collect(client);
    sock.end('HTTP/1.1 502 Bad Gateway\r\n\r\n');
    assert.equal((await back).toString(), 'HTTP/1.1 502 Bad Gateway\r\n\r\n');
  });

  // A listener whose accept queue is full drops SYNs: the connect hangs until connectTimeoutMs.
  it('connect timeout on [6]: done(connect-timeout) with the client fd', T, async () => {
    const lfd = listenTcp({ host: '127.0.0.1', port: 0, backlog: 1 });
    cleanups.push(() => fs.closeSync(lfd));
    const full = localPort(lfd);
    for (let i = 0; i < 2; i++) await connectClient(full);
    const front = openHttpFront({ connectTimeoutMs: 300 }, httpDecider(full), headNexter);
    const client = await connectClient(front.port);
    client.write('GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n');
    const d = await onlyHttpDoneOf(front, await waitFor('decide', () => front.decides[0]?.id));
    assert.deepEqual([d.outcome, d.up, d.down], ['connect-timeout', 0, 0]);
    const sock = front.take(d);
    const back = readBytes(client, 3);
    sock.write('504');
    assert.equal((await back).toString(), '504');
  });

  it(
    'next() throwing or answering nonsense resets the client (internal-error); [2] resets it (refused); the process goes on',
    T,
    async () => {
      const thrown: unknown[] = [];
      process.setUncaughtExceptionCaptureCallback((e) => thrown.push(e));
      cleanups.push(() => process.setUncaughtExceptionCaptureCallback(null));
      const cases: Array<[unknown, string]> = [
        ['throw', 'internal-error'],
        ['x', 'internal-error'],
        [[7], 'internal-error'],
        [[3], 'internal-error'], // "read on" is null, never a number
        [[0, 42, 0, 0], 'internal-error'],
        [[0, '', 9999, 0], 'internal-error'], // consumes more than it was given
        [[0, '', -1, 0], 'internal-error'],
        [[0, '', 0, 1.5], 'internal-error'],
        [[2], 'refused'],
      ];
      const origin = await recordingOrigin();
      const front = openHttpFront({}, httpDecider(origin.port), (_call, n) => {
        const answer = cases[n - 1]![0];
        if (answer === 'throw') throw new Error('a framer bug');
        return answer;
      });
      for (const [i, [answer, outcome]] of cases.entries()) {
        const client = await connectClient(front.port);
        const how = closedHow(client);
        client.write('GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n');
        const up = await waitFor('the origin connection', () => origin.conns[i]);
        await waitFor('the first request', () => got(up).length > 0);
        client.write('GET /b HTTP/1.1\r\n\r\n');
        const d = await onlyHttpDoneOf(front, front.decides[front.decides.length - 1]!.id);
        assert.deepEqual([d.outcome, d.fd], [outcome, -1], `answer ${JSON.stringify(answer)}`);
        assert.equal(await how, 'ECONNRESET', `answer ${JSON.stringify(answer)}`);
        assert.equal(front.nexts.length, i + 1, `answer ${JSON.stringify(answer)}: next() once`);
      }
      assert.equal(thrown.length, 1);
      assert.match(String(thrown[0]), /a framer bug/);
    },
  );

  it('client EOF mid-body: upstream gets FIN after the last byte; ok once both sides closed', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), headNexter);
    const head = 'POST /p HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n\r\n';
    const client = await connectClient(front.port);
    client.write(head + 'x'.repeat(10));
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the head', () => got(up).length === rewrite(head).length + 10);
    const back = collect(client);
    client.end('y'.repeat(20));
    await waitFor('the FIN at the origin', () => up.ended);
    assert.equal(got(up).toString('latin1'), rewrite(head) + 'x'.repeat(10) + 'y'.repeat(20));
    const res = response('short');
    up.sock.end(res);
    assert.equal((await back).toString(), res.toString());
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.up, d.down, d.fd], ['ok', rewrite(head).length + 30, res.length, -1]);
    assert.equal(front.nexts.length, 0);
  });

  // null even with eof (src/relay/native-executor.ts answers [2] there): the relay drops the partial head itself.
  it('client EOF at a boundary and mid-head: next() hears eof, nothing of the partial head goes up, then FIN', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), ({ bytes }) => (headLength(bytes) < 0 ? null : [2]));
    const req = 'GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.write(req);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the request', () => got(up).length === rewrite(req).length);
    const back = collect(client);
    client.end('GET /half HT'); // a head cut short by EOF: one segment with the FIN, or two
    await waitFor('the FIN at the origin', () => up.ended);
    assert.equal(got(up).toString('latin1'), rewrite(req));
    const last = front.nexts[front.nexts.length - 1]!;
    assert.deepEqual([last.bytes.toString(), last.eof], ['GET /half HT', true]);
    const res = response('bye');
    up.sock.end(res);
    assert.equal((await back).toString(), res.toString());
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.up, d.down], ['ok', rewrite(req).length, res.length]);
  });

  it('client EOF at a boundary with nothing after: FIN upstream, no next()', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), headNexter);
    const req = 'GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n';
    const client = await connectClient(front.port);
    client.end(req);
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the FIN at the origin', () => up.ended);
    assert.equal(got(up).toString('latin1'), rewrite(req));
    const back = collect(client);
    up.sock.end('HTTP/1.1 204 No Content\r\n\r\n');
    assert.equal((await back).toString(), 'HTTP/1.1 204 No Content\r\n\r\n');
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.status], ['ok', 204]);
    assert.equal(front.nexts.length, 0);
  });

  it('tunnelAbortAll and spliceAbortAll during a framed relay: done(aborted) once, no socket left open', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), headNexter);
    const before = openSockets();
    const client = await connectClient(front.port);
    const how = closedHow(client);
    client.write('POST / HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 1000\r\n\r\nhalf a body');
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the body', () => got(up).toString().endsWith('half a body'));
    assert.equal(tunnelAbortAll(), 0, 'a relaying connection is not pending');
    assert.ok(spliceActive() >= 1);
    assert.equal(spliceAbortAll(), 1);
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, d.fd], ['aborted', -1]);
    await how;
    await waitFor('the origin connection to be closed', () => up.ended);
    client.destroy();
    up.sock.destroy();
    const after = await waitFor('the sockets to be closed', () => (openSockets() === before ? before : false)).catch(() => openSockets());
    assert.equal(after, before, 'sockets open before the connection and after it');
  });

  // A shutdown gave the client socket of a framed connection still connecting back to JS (as for a failure), which would
  // have answered it with a 502 page while stopping: it is reset like every other aborted connection.
  it(
    'tunnelAbortAll on a framed connection still connecting: done(aborted) without an fd, the client reset, no socket left',
    T,
    async () => {
      const lfd = listenTcp({ host: '127.0.0.1', port: 0, backlog: 1 });
      cleanups.push(() => fs.closeSync(lfd));
      const full = localPort(lfd);
      const fillers: net.Socket[] = [];
      for (let i = 0; i < 2; i++) fillers.push(await connectClient(full));
      const front = openHttpFront({ connectTimeoutMs: 10_000 }, httpDecider(full), headNexter);
      const before = openSockets();
      const client = await connectClient(front.port);
      client.write('GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      await waitFor('decide', () => front.decides.find((c) => headLength(c.head!) > 0));
      await waitFor('the connection to be pending', () => tunnelPending() === 1);
      assert.equal(tunnelAbortAll(), 1);
      const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
      assert.deepEqual([d.outcome, d.fd], ['aborted', -1]);
      client.destroy();
      const after = await waitFor('the sockets to be closed', () => (openSockets() === before ? before : false)).catch(() => openSockets());
      assert.equal(after, before);
    },
  );
  // A step that consumes nothing, writes nothing and passes nothing leaves the relay where it was:
  // it asked next() again with the same bytes, forever, inside one libuv callback (the whole gateway hung).
  it('a forward step that makes no progress is internal-error, not a loop asking next() forever', T, async () => {
    const origin = await recordingOrigin();
    const front = openHttpFront({}, httpDecider(origin.port), (_call, n) => (n < 1000 ? [0, '', 0, 0] : [2]));
    const client = await connectClient(front.port);
    const how = closedHow(client);
    client.write('GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n');
    const up = await waitFor('the origin connection', () => origin.conns[0]);
    await waitFor('the first request', () => got(up).length > 0);
    client.write('GET /b HTTP/1.1\r\n\r\n');
    const d = await onlyHttpDoneOf(front, front.decides[0]!.id);
    assert.deepEqual([d.outcome, front.nexts.length], ['internal-error', 1]);
    assert.equal(await how, 'ECONNRESET');
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Address } from '../../src/core/types';
import * as native from '../../src/native/index';

const isRoot = process.getuid?.() === 0;
const T = { timeout: 15_000 };

// ---- helpers ---------------------------------------------------------------

/** Asserts a syscall error exactly as the addon builds it. */
function assertSysError(fn: () => unknown, code: string, syscall: string): void {
  const errnum = (os.constants.errno as Record<string, number>)[code];
  assert.ok(errnum !== undefined, `unknown errno ${code}`);
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof Error, 'an Error');
    const e = err as native.NativeSystemError;
    assert.equal(e.code, code);
    assert.equal(e.errno, -errnum);
    assert.equal(e.syscall, syscall);
    assert.equal(e.message, `${syscall}: ${strerror(code)}`);
    return true;
  });
}

// Messages as glibc's strerror() words them, for the errnos asserted here.
function strerror(code: string): string {
  const text: Record<string, string> = {
    EADDRINUSE: 'Address already in use',
    EADDRNOTAVAIL: 'Cannot assign requested address',
    ENOENT: 'No such file or directory',
    ENOTSOCK: 'Socket operation on non-socket',
    EBADF: 'Bad file descriptor',
    EAFNOSUPPORT: 'Address family not supported by protocol',
    ENOPROTOOPT: 'Protocol not available',
    EPERM: 'Operation not permitted',
  };
  const t = text[code];
  assert.ok(t !== undefined, `no strerror text for ${code}`);
  return t;
}

function assertTypeError(fn: () => unknown): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof TypeError, `TypeError expected, got ${String(err)}`);
    assert.match((err as { code?: string }).code ?? '', /^ERR_INVALID_ARG_(TYPE|VALUE)$/);
    return true;
  });
}

/** Hands a listening fd to Node; the fd is closed on failure. */
async function serve(fd: number, onConn: (s: net.Socket) => void = (s) => s.end()): Promise<net.Server> {
  const server = net.createServer(onConn);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return server;
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function portOf(server: net.Server): number {
  const a = server.address();
  assert.ok(a !== null && typeof a === 'object');
  return a.port;
}

/** Connects, waits for the server side, returns both ends. */
async function connectPair(server: net.Server, host: string): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const acceptedP = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(portOf(server), host);
  await once(client, 'connect');
  const [accepted] = await acceptedP;
  return { client, accepted };
}

async function endPair(p: { client: net.Socket; accepted: net.Socket }): Promise<void> {
  p.client.destroy();
  p.accepted.destroy();
  await Promise.all([p.client.closed ? null : once(p.client, 'close'), p.accepted.closed ? null : once(p.accepted, 'close')]);
}

/**
 * A connection that was never redirected: conntrack has no entry and the
 * kernel answers ENOENT. (Should conntrack be tracking in this network
 * namespace, it reports the real, unchanged destination instead.)
 */
function assertNotRedirected(fd: number, local: Address, syscall: string): void {
  let got: unknown;
  try {
    got = native.originalDst(fd);
  } catch {
    assertSysError(() => native.originalDst(fd), 'ENOENT', syscall);
    return;
  }
  assert.deepEqual(got, local);
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

// ---- loading ---------------------------------------------------------------

test('addon loads and exports every function', () => {
  assert.equal(native.isNativeAvailable(), true);
  const raw = native.loadNative();
  for (const name of [
    'listenTcp',
    'createTcpSocket',
    'localPort',
    'socketFamily',
    'originalDst',
    'setMark',
    'getMark',
    'setTransparent',
    'raiseNofileLimit',
  ]) {
    assert.equal(typeof (raw as unknown as Record<string, unknown>)[name], 'function', name);
  }
});

test('without a built addon: importing works, first use says to run npm install', () => {
  // A copy of the compiled module in a tree with no build/ directory.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-native-'));
  // The sanitizer run (scripts/native-sanitize.sh) names its addon; this copy must look for its own.
  const override = process.env.TRANSGATE_ADDON;
  delete process.env.TRANSGATE_ADDON;
  try {
    const distSrc = path.resolve(__dirname, '..', '..', 'src');
    for (const rel of ['native/index.js', 'core/errors.js']) {
      const to = path.join(root, 'dist', 'src', rel);
      fs.mkdirSync(path.dirname(to), { recursive: true });
      fs.copyFileSync(path.join(distSrc, rel), to);
    }
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a second copy of the module, loaded from a path built at run time
    const copy = require(path.join(root, 'dist', 'src', 'native', 'index.js')) as typeof native;
    assert.equal(copy.isNativeAvailable(), false);
    let first: unknown;
    assert.throws(
      () => copy.localPort(0),
      (err: unknown) => {
        first = err;
        assert.ok(err instanceof Error);
        assert.equal((err as { code?: string }).code, 'TG_ERR_NATIVE');
        assert.match(err.message, /npm install/);
        assert.match(err.message, /g\+\+, make and python3/);
        assert.ok(err.message.includes(path.join(root, 'build', 'Release', 'transgate.node')));
        return true;
      },
    );
    assert.throws(
      () => copy.getMark(0),
      (err: unknown) => err === first,
    );
    // Argument checks need no addon.
    assertTypeError(() => copy.localPort(-1));
  } finally {
    if (override !== undefined) process.env.TRANSGATE_ADDON = override;
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** Runs `code` in a fresh node (argv[1]: this native module) with `env` added; its last stdout line, parsed as JSON. */
function nodeJson(code: string, env: Record<string, string | undefined> = {}): unknown {
  const r = spawnSync(process.execPath, ['-e', code, require.resolve('../../src/native/index')], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 10_000,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

test('TRANSGATE_ADDON loads that file and nothing else', () => {
  const probe = `const n = require(process.argv[1]);
    let message = ''; try { n.loadNative(); } catch (e) { message = e.message; }
    console.log(JSON.stringify({ ok: n.isNativeAvailable(), message }));`;
  const built = path.resolve(__dirname, '..', '..', '..', 'build', 'Release', 'transgate.node');
  const missing = path.join(os.tmpdir(), 'tg-no-such-addon', 'transgate.node');
  // No fallback to build/Release: a sanitizer run that silently tested the normal build would prove nothing.
  const gone = nodeJson(probe, { TRANSGATE_ADDON: missing }) as { ok: boolean; message: string };
  assert.equal(gone.ok, false);
  assert.ok(gone.message.includes(`${missing}: not found`), gone.message);
  assert.ok(!gone.message.includes(built), gone.message);
  if (fs.existsSync(built)) assert.deepEqual(nodeJson(probe, { TRANSGATE_ADDON: built }), { ok: true, message: '' });
});

// A build/ left from other sources (a pull without npm install) would have misread every answer of decide().
test('an addon built for another protocol version is refused at load, with what to do', () => {
  const probe = `const n = require(process.argv[1]);
    let message = ''; try { n.loadNative(); } catch (e) { message = e.message; }
    console.log(JSON.stringify({ ok: n.isNativeAvailable(), message }));`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-abi-'));
  try {
    const stale = path.join(dir, 'stale.js');
    fs.writeFileSync(stale, 'module.exports = { abiVersion: () => 1 };');
    const r = nodeJson(probe, { TRANSGATE_ADDON: stale }) as { ok: boolean; message: string };
    assert.equal(r.ok, false);
    assert.match(r.message, /built from other sources \(protocol 1, this transgate speaks \d+\): rebuild it/);
    assert.match(r.message, /npm install/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- raiseNofileLimit --------------------------------------------------------

/** RLIMIT_NOFILE of the calling process as /proc says it, not as the addon does. */
const LIMITS = `const num = (v) => (v === 'unlimited' ? Infinity : Number(v));
  const limits = () => { const m = /^Max open files\\s+(\\d+|unlimited)\\s+(\\d+|unlimited)/m.exec(require('fs').readFileSync('/proc/self/limits', 'utf8')); return { soft: num(m[1]), hard: num(m[2]) }; };`;

// Node itself raises the soft limit to the hard one at start-up (PlatformInit in node.cc), so the
// child lowers its own soft limit first (prlimit, no privilege needed), as an embedder or a
// later setrlimit could have.
test(
  'raiseNofileLimit raises the soft open-files limit to the hard one and returns both',
  { timeout: 15_000, skip: !which('prlimit') && 'needs prlimit' },
  () => {
    const code = `${LIMITS}
    const n = require(process.argv[1]);
    require('child_process').execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=256:']);
    const before = limits();
    const got = n.raiseNofileLimit();
    const after = limits();
    const again = n.raiseNofileLimit();
    console.log(JSON.stringify({ before, got, after, again }));`;
    const r = nodeJson(code) as Record<'before' | 'got' | 'after' | 'again', { soft: number; hard: number }>;
    assert.equal(r.before.soft, 256);
    if (r.before.hard <= 256) return; // nothing to raise here
    assert.deepEqual(r.got, { soft: r.before.hard, hard: r.before.hard });
    assert.deepEqual(r.after, r.got); // what the kernel has, not only what the addon says
    assert.deepEqual(r.again, r.got); // already raised: left alone
  },
);

// ---- listenTcp, localPort, socketFamily ------------------------------------

test('listenTcp on 127.0.0.1 port 0 serves through net.Server', T, async () => {
  const fd = native.listenTcp({ host: '127.0.0.1', port: 0 });
  assert.ok(Number.isInteger(fd) && fd > 2);
  const port = native.localPort(fd);
  assert.ok(port > 0 && port < 65536);
  assert.equal(native.socketFamily(fd), 4);
  // Non-blocking and close-on-exec, as libuv and the rule-running children need.
  const fdinfo = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const flags = parseInt(/^flags:\s+([0-7]+)/m.exec(fdinfo)?.[1] ?? '', 8);
  assert.ok((flags & fs.constants.O_NONBLOCK) !== 0, 'O_NONBLOCK');
  assert.ok((flags & 0o2000000) !== 0, 'O_CLOEXEC'); // Linux's value; fs.constants lacks it

  const server = await serve(fd, (s) => s.end('hello'));
  try {
    assert.equal(portOf(server), port);
    const client = net.connect(port, '127.0.0.1');
    client.setEncoding('utf8');
    let data = '';
    client.on('data', (d: string) => (data += d));
    await once(client, 'close');
    assert.equal(data, 'hello');
  } finally {
    await closeServer(server);
  }
});

test("listenTcp on '::' is dual-stack by default", T, async () => {
  const fd = native.listenTcp({ host: '::', port: 0 });
  assert.equal(native.socketFamily(fd), 6);
  const server = await serve(fd);
  try {
    const port = portOf(server);
    assert.equal(native.localPort(fd), port);

    const v4 = await connectPair(server, '127.0.0.1');
    assert.equal(v4.accepted.remoteAddress, '::ffff:127.0.0.1');
    const v4fd = native.socketFd(v4.accepted);
    assert.equal(native.socketFamily(v4fd), 6);
    assert.equal(native.localPort(v4fd), port);
    // Mapped peer: the IPv4 conntrack query is the one made.
    assertNotRedirected(v4fd, { address: '127.0.0.1', port, family: 4 }, 'getsockopt(SO_ORIGINAL_DST)');
    await endPair(v4);

    const v6 = await connectPair(server, '::1');
    assert.equal(v6.accepted.remoteAddress, '::1');
    const v6fd = native.socketFd(v6.accepted);
    assert.equal(native.socketFamily(v6fd), 6);
    assertNotRedirected(v6fd, { address: '::1', port, family: 6 }, 'getsockopt(IP6T_SO_ORIGINAL_DST)');
    await endPair(v6);
  } finally {
    await closeServer(server);
  }
});

test("listenTcp on '::' with v6only refuses IPv4", T, async () => {
  const server = await serve(native.listenTcp({ host: '::', port: 0, v6only: true }));
  try {
    const client = net.connect(portOf(server), '127.0.0.1');
    const [err] = (await once(client, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ECONNREFUSED');
    await endPair(await connectPair(server, '::1'));
  } finally {
    await closeServer(server);
  }
});

test('binding a port twice fails with EADDRINUSE even with SO_REUSEADDR, leaking no fd', T, () => {
  const fd = native.listenTcp({ host: '127.0.0.1', port: 0, reuseAddr: true });
  try {
    const port = native.localPort(fd);
    const before = openFdCount();
    assertSysError(() => native.listenTcp({ host: '127.0.0.1', port, reuseAddr: true }), 'EADDRINUSE', 'bind');
    assertSysError(() => native.listenTcp({ host: '127.0.0.1', port, reuseAddr: false }), 'EADDRINUSE', 'bind');
    // '::' dual-stack covers 127.0.0.1 too.
    assertSysError(() => native.listenTcp({ host: '::', port }), 'EADDRINUSE', 'bind');
    assert.equal(openFdCount(), before);
  } finally {
    fs.closeSync(fd);
  }
});

test('syscall errors on fds that are not TCP sockets', async () => {
  const file = fs.openSync('/dev/null', 'r');
  try {
    assertSysError(() => native.localPort(file), 'ENOTSOCK', 'getsockname');
    assertSysError(() => native.socketFamily(file), 'ENOTSOCK', 'getsockname');
    assertSysError(() => native.originalDst(file), 'ENOTSOCK', 'getsockname');
    assertSysError(() => native.getMark(file), 'ENOTSOCK', 'getsockopt(SO_MARK)');
  } finally {
    fs.closeSync(file);
  }
  // Just closed, and nothing in between can have reused it.
  assertSysError(() => native.localPort(file), 'EBADF', 'getsockname');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-unix-'));
  const unix = net.createServer();
  try {
    await new Promise<void>((resolve) => unix.listen(path.join(dir, 's'), resolve));
    const ufd = (unix as unknown as { _handle: { fd: number } })._handle.fd;
    assertSysError(() => native.socketFamily(ufd), 'EAFNOSUPPORT', 'getsockname');
    assertSysError(() => native.localPort(ufd), 'EAFNOSUPPORT', 'getsockname');
  } finally {
    await closeServer(unix);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- argument checks -------------------------------------------------------

test('bad arguments throw TypeError before reaching the kernel', () => {
  const bad: Array<() => unknown> = [
    () => native.listenTcp(undefined as never),
    () => native.listenTcp(null as never),
    () => native.listenTcp({ host: 'localhost', port: 0 }),
    () => native.listenTcp({ host: '127.0.0.1.5', port: 0 }),
    () => native.listenTcp({ host: 'fe80::1%lo', port: 0 }),
    () => native.listenTcp({ host: 1 as never, port: 0 }),
    () => native.listenTcp({ host: '127.0.0.1', port: -1 }),
    () => native.listenTcp({ host: '127.0.0.1', port: 65536 }),
    () => native.listenTcp({ host: '127.0.0.1', port: 1.5 }),
    () => native.listenTcp({ host: '127.0.0.1', port: '80' as never }),
    () => native.listenTcp({ host: '127.0.0.1', port: 0, backlog: 0 }),
    () => native.listenTcp({ host: '127.0.0.1', port: 0, transparent: 'yes' as never }),
    () => native.listenTcp({ host: '127.0.0.1', port: 0, v6only: 1 as never }),
    () => native.localPort('3' as never),
    () => native.localPort(-1),
    () => native.localPort(NaN),
    () => native.localPort(2 ** 31),
    () => native.socketFamily(undefined as never),
    () => native.originalDst(1.5),
    () => native.setMark(0, -1),
    () => native.setMark(0, 2 ** 32),
    () => native.setMark(0, 0.5),
    () => native.getMark(Infinity),
    () => native.setTransparent(0, 5 as never),
    () => native.setTransparent(0, '4' as never),
    () => native.createTcpSocket({ family: 5 as never }),
    () => native.createTcpSocket({ family: 4, mark: -1 }),
    () => native.createTcpSocket({ family: 4, transparent: 1 as never }),
    () => native.connectMarkedSocket({ host: 'localhost', port: 80 }),
    () => native.connectMarkedSocket({ host: '127.0.0.1', port: 80, localAddress: '::1' }),
    () => native.socketFd({} as never),
  ];
  for (const fn of bad) assertTypeError(fn);
});

test('the addon checks its own arguments too', () => {
  const raw = native.loadNative() as unknown as Record<string, (...a: unknown[]) => unknown>;
  const bad: Array<() => unknown> = [
    () => raw.listenTcp!('localhost', 0, 511, false, false, true),
    () => raw.listenTcp!('127.0.0.1\u0000x', 0, 511, false, false, true),
    () => raw.listenTcp!('x'.repeat(100), 0, 511, false, false, true),
    () => raw.listenTcp!('127.0.0.1', 0, 511, false, false),
    () => raw.listenTcp!('127.0.0.1', 70000, 511, false, false, true),
    () => raw.localPort!(),
    () => raw.localPort!(-1),
    () => raw.localPort!(NaN),
    () => raw.setMark!(0, 2 ** 32),
    () => raw.createTcpSocket!(5, undefined, false),
    () => raw.createTcpSocket!(4, 'x', false),
    () => raw.setTransparent!(0, 4.5),
  ];
  for (const fn of bad) assert.throws(fn, TypeError);
});

// ---- marks and transparency (need CAP_NET_ADMIN) ---------------------------

test('SO_MARK: createTcpSocket sets it, setMark/getMark round-trip all 32 bits', { skip: !isRoot && 'needs root' }, () => {
  const fds: number[] = [];
  try {
    const plain = native.createTcpSocket({ family: 4 });
    fds.push(plain);
    assert.equal(native.getMark(plain), 0);
    assert.equal(native.socketFamily(plain), 4);

    // Bit 31 set: such marks were once not set by the tunnel front end (see native-mark.test.ts).
    const high = native.createTcpSocket({ family: 4, mark: 0x80000001 });
    fds.push(high);
    assert.equal(native.getMark(high), 0x80000001);

    const marked = native.createTcpSocket({ family: 6, mark: 0x1234 });
    fds.push(marked);
    assert.equal(native.socketFamily(marked), 6);
    assert.equal(native.getMark(marked), 0x1234);
    native.setMark(marked, 0xffffffff);
    assert.equal(native.getMark(marked), 0xffffffff);
    native.setMark(marked, 0);
    assert.equal(native.getMark(marked), 0);

    const listener = native.listenTcp({ host: '127.0.0.1', port: 0 });
    fds.push(listener);
    native.setMark(listener, 7);
    assert.equal(native.getMark(listener), 7);
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
});

test('SO_MARK and IP_TRANSPARENT are refused without CAP_NET_ADMIN', { skip: isRoot && 'running as root' }, () => {
  const fd = native.createTcpSocket({ family: 4 });
  try {
    assertSysError(() => native.setMark(fd, 1), 'EPERM', 'setsockopt(SO_MARK)');
    assertSysError(() => native.listenTcp({ host: '127.0.0.1', port: 0, transparent: true }), 'EPERM', 'setsockopt(IP_TRANSPARENT)');
  } finally {
    fs.closeSync(fd);
  }
});

test('transparent listeners work and may bind non-local addresses', { ...T, skip: !isRoot && 'needs root' }, async () => {
  const server = await serve(native.listenTcp({ host: '127.0.0.1', port: 0, transparent: true }));
  try {
    await endPair(await connectPair(server, '127.0.0.1'));
  } finally {
    await closeServer(server);
  }
  const server6 = await serve(native.listenTcp({ host: '::', port: 0, transparent: true }));
  try {
    await endPair(await connectPair(server6, '127.0.0.1'));
    await endPair(await connectPair(server6, '::1'));
  } finally {
    await closeServer(server6);
  }

  // Documentation prefixes, never routed: only bind + listen, no traffic.
  for (const [host, sysctl] of [
    ['192.0.2.1', 'ipv4'],
    ['2001:db8::1', 'ipv6'],
  ] as const) {
    const fd = native.listenTcp({ host, port: 0, transparent: true });
    assert.ok(native.localPort(fd) > 0);
    fs.closeSync(fd);
    const nonlocal = fs.readFileSync(`/proc/sys/net/${sysctl}/ip_nonlocal_bind`, 'utf8').trim();
    if (nonlocal === '0') assertSysError(() => native.listenTcp({ host, port: 0 }), 'EADDRNOTAVAIL', 'bind');
  }
});

test('setTransparent on existing sockets', { skip: !isRoot && 'needs root' }, () => {
  const v4 = native.createTcpSocket({ family: 4 });
  const v6 = native.createTcpSocket({ family: 6, transparent: true });
  try {
    native.setTransparent(v4, 4);
    native.setTransparent(v6, 6);
    native.setTransparent(v6, 4);
    // An IPv4 socket has no IPv6 options.
    assertSysError(() => native.setTransparent(v4, 6), 'ENOPROTOOPT', 'setsockopt(IPV6_TRANSPARENT)');
  } finally {
    fs.closeSync(v4);
    fs.closeSync(v6);
  }
});

// ---- connecting marked sockets from Node -----------------------------------

test('Node 20 connects an fd-created socket when connect() follows in the same tick', T, async () => {
  const got: string[] = [];
  const server = net.createServer((s) => {
    s.setEncoding('utf8');
    s.on('data', (d: string) => got.push(d));
    s.on('end', () => s.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const fd = native.createTcpSocket({ family: 4, mark: isRoot ? 0x77 : undefined });
    const sock = new net.Socket({ fd, readable: true, writable: true });
    sock.connect(portOf(server), '127.0.0.1');
    await once(sock, 'connect');
    assert.equal(native.socketFd(sock), fd);
    assert.equal(native.getMark(fd), isRoot ? 0x77 : 0);
    assert.equal(sock.remotePort, portOf(server));
    sock.end('ping');
    await once(sock, 'close');
    assert.deepEqual(got, ['ping']);
  } finally {
    await closeServer(server);
  }
});

test('Node 20 destroys an fd-created socket left unconnected across a loop turn (ENOTCONN)', T, async () => {
  // Node starts reading at construction; the unconnected socket polls as
  // hung up and read() fails. This is why connectMarkedSocket exists.
  const fd = native.createTcpSocket({ family: 4 });
  const sock = new net.Socket({ fd, readable: true, writable: true });
  const [err] = (await once(sock, 'error')) as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ENOTCONN');
  assert.equal(err.syscall, 'read');
  if (!sock.closed) await once(sock, 'close');
  assert.throws(() => native.socketFd(sock), { code: 'EBADF' });
});

test(
  'connectMarkedSocket: connect event, mark on the wire socket, v4 and v6, localAddress',
  { ...T, skip: !isRoot && 'needs root' },
  async () => {
    for (const host of ['127.0.0.1', '::1']) {
      const server = net.createServer((s) => s.end('pong'));
      await new Promise<void>((resolve) => server.listen(0, host, resolve));
      try {
        const remotes: string[] = [];
        server.on('connection', (s: net.Socket) => remotes.push(s.remoteAddress ?? ''));
        const sock = native.connectMarkedSocket({
          host,
          port: portOf(server),
          mark: 0x100,
          localAddress: host === '127.0.0.1' ? '127.0.0.2' : undefined,
        });
        await once(sock, 'connect');
        assert.equal(native.getMark(native.socketFd(sock)), 0x100);
        assert.equal(native.socketFamily(native.socketFd(sock)), host === '::1' ? 6 : 4);
        sock.setEncoding('utf8');
        let data = '';
        sock.on('data', (d: string) => (data += d));
        await once(sock, 'end');
        sock.destroy();
        assert.equal(data, 'pong');
        assert.deepEqual(remotes, [host === '127.0.0.1' ? '127.0.0.2' : '::1']);
      } finally {
        await closeServer(server);
      }
    }
  },
);

test('connectMarkedSocket reports a refused connection like net.connect', T, async () => {
  // A port that was just free: listen on 0, then close.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = portOf(probe);
  await closeServer(probe);

  const sock = native.connectMarkedSocket({ host: '127.0.0.1', port, mark: isRoot ? 1 : undefined });
  const [err] = (await once(sock, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNREFUSED');
  assert.equal(err.syscall, 'connect');
});

test('socketFd needs a socket with a handle', T, async () => {
  assert.throws(() => native.socketFd(new net.Socket()), { code: 'EBADF' });
  const server = await serve(native.listenTcp({ host: '127.0.0.1', port: 0 }));
  try {
    const pair = await connectPair(server, '127.0.0.1');
    const fd = native.socketFd(pair.accepted);
    assert.equal(native.localPort(fd), portOf(server));
    assert.equal(native.localPort(native.socketFd(pair.client)), pair.client.localPort);
    await endPair(pair);
    assert.throws(() => native.socketFd(pair.accepted), { code: 'EBADF' });
  } finally {
    await closeServer(server);
  }
});

// ---- originalDst after a real REDIRECT, in a private network namespace -----

const NAT_SCRIPT = String.raw`
const native = require(process.env.TG_NATIVE_MODULE);
const net = require('net');
const { execFileSync } = require('child_process');
function skip(why) { process.stdout.write(JSON.stringify({ skip: why })); process.exit(0); }
try { execFileSync('ip', ['link', 'set', 'lo', 'up'], { stdio: 'pipe' }); } catch (e) { skip('ip link: ' + e.stderr); }
const dual = native.listenTcp({ host: '::', port: 0 });
const v4 = native.listenTcp({ host: '127.0.0.1', port: 0 });
try { execFileSync('nft', ['list', 'ruleset'], { stdio: 'pipe' }); } catch (e) { skip('no nftables here: ' + e.stderr); }
execFileSync('nft', ['-f', '-'], { stdio: 'pipe', input:
  'table inet tgtest { chain out { type nat hook output priority -100; ' +
  'tcp dport 7777 redirect to :' + native.localPort(dual) + '; ' +
  'tcp dport 7778 redirect to :' + native.localPort(v4) + '; }; }' });
const results = [];
function onConn(listener) {
  return (s) => {
    const fd = native.socketFd(s);
    let r;
    try { r = native.originalDst(fd); } catch (e) { r = { error: e.code, syscall: e.syscall }; }
    results.push({ listener, peer: s.remoteAddress, dst: r });
    s.end();
  };
}
const servers = [net.createServer(onConn('dual')), net.createServer(onConn('v4'))];
servers[0].listen({ fd: dual }, () => servers[1].listen({ fd: v4 }, async () => {
  for (const [host, port] of [['127.0.0.1', 7777], ['::1', 7777], ['127.0.0.5', 7777], ['127.0.0.1', 7778]]) {
    const c = net.connect(port, host);
    c.resume();
    await new Promise((resolve) => { c.on('close', resolve); c.on('error', () => {}); });
  }
  for (const s of servers) s.close();
  process.stdout.write(JSON.stringify({ results }));
}));
`;

test('originalDst reads the pre-REDIRECT destination (v4, v6, v4-mapped)', { ...T, skip: !isRoot && 'needs root' }, (t) => {
  if (!which('unshare') || !which('nft') || !which('ip')) {
    t.skip('needs unshare, nft and ip');
    return;
  }
  if (spawnSync('unshare', ['--net', 'true']).status !== 0) {
    t.skip('cannot create a network namespace here');
    return;
  }
  const run = spawnSync('unshare', ['--net', process.execPath, '-e', NAT_SCRIPT], {
    env: { ...process.env, TG_NATIVE_MODULE: require.resolve('../../src/native/index') },
    encoding: 'utf8',
    timeout: 10_000,
  });
  assert.equal(run.status, 0, `child failed: ${run.stderr}`);
  const out = JSON.parse(run.stdout) as { skip?: string; results?: unknown };
  if (out.skip !== undefined) {
    t.skip(out.skip);
    return;
  }
  assert.deepEqual(out.results, [
    { listener: 'dual', peer: '::ffff:127.0.0.1', dst: { address: '127.0.0.1', port: 7777, family: 4 } },
    { listener: 'dual', peer: '::1', dst: { address: '::1', port: 7777, family: 6 } },
    // Dialling 127.0.0.5 still leaves from lo's primary address.
    { listener: 'dual', peer: '::ffff:127.0.0.1', dst: { address: '127.0.0.5', port: 7777, family: 4 } },
    { listener: 'v4', peer: '127.0.0.1', dst: { address: '127.0.0.1', port: 7778, family: 4 } },
  ]);
});

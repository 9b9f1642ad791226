/**
 * The SO_MARK that native/tunnel.c puts on upstream sockets, seen where it
 * matters: by netfilter. The check runs in a child process in a network
 * namespace of its own (unshare -n), so the nft table it adds touches
 * nothing of the host's and goes away with the child.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import * as native from '../../src/native/index';

const isRoot = process.getuid?.() === 0;

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const skip = !isRoot
  ? 'needs root (unshare -n, nft)'
  : !have('unshare') || !have('nft') || !have('ip')
    ? 'needs unshare, nft and ip'
    : !native.isNativeAvailable()
      ? 'addon not built (npm install)'
      : false;

/**
 * In the child: loopback up; an echo server; an nft output chain counting
 * the packets to the echo port, all of them and those with the mark; a
 * tunnelListen listener with the mark that connects each client to the echo
 * server. One connection goes through; the counters are printed as JSON.
 */
const CHILD = String.raw`
const { execFileSync } = require('node:child_process');
const net = require('node:net');
const native = require(process.argv[1]);
const mark = Number(process.argv[2]);
execFileSync('ip', ['link', 'set', 'lo', 'up']);
(async () => {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  const port = echo.address().port;
  execFileSync('nft', ['-f', '-'], {
    input: 'table inet tg_mark {\n chain out {\n type filter hook output priority 0;\n' +
      ' tcp dport ' + port + ' counter\n tcp dport ' + port + ' meta mark ' + mark + ' counter\n }\n}\n',
  });
  const fd = native.listenTcp({ host: '127.0.0.1', port: 0 });
  let ended;
  const outcome = new Promise((r) => (ended = r));
  const h = native.tunnelListen(
    { fd, sniff: false, redirect: false, mark, sniffMaxBytes: 16, sniffTimeoutMs: 1000, connectTimeoutMs: 2000, idleTimeoutMs: 0 },
    () => [1, '127.0.0.1', port, undefined], (_id, _up, _down, o, detail) => ended(native.outcomeText(o, detail)), () => undefined,
  );
  const c = net.connect(native.localPort(fd), '127.0.0.1');
  c.write('ping');
  const echoed = await new Promise((r) => c.once('data', (d) => r(d.toString())));
  c.end();
  const result = await outcome;
  native.tunnelClose(h);
  echo.close();
  const chain = JSON.parse(execFileSync('nft', ['-j', 'list', 'chain', 'inet', 'tg_mark', 'out'], { encoding: 'utf8' }));
  const counters = chain.nftables.filter((e) => e.rule).map((e) => e.rule.expr.find((x) => x.counter).counter.packets);
  console.log(JSON.stringify({ echoed, result, all: counters[0], marked: counters[1] }));
})().catch((err) => { console.error(err); process.exit(1); });
`;

function runMarked(mark: number): { echoed: string; result: string; all: number; marked: number } {
  const r = spawnSync('unshare', ['-n', process.execPath, '-e', CHILD, require.resolve('../../src/native/index'), String(mark)], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { echoed: string; result: string; all: number; marked: number };
}

// Regression: tunnel.c kept the mark in an int with -1 for "none" and set it only when >= 0, so
// marks from 0x80000000 up were silently not set. Under --local the gateway's own upstream
// connections then went out unmarked, and its rules intercepted them again.
test('tunnelListen upstream sockets carry marks from 0x80000000 up on every packet', { skip, timeout: 15_000 }, () => {
  for (const mark of [0x80000001, 0xffffffff, 0x1]) {
    const got = runMarked(mark);
    assert.equal(got.echoed, 'ping');
    assert.equal(got.result, 'ok');
    assert.ok(got.all >= 3, `mark ${mark.toString(16)}: the upstream connection sent ${got.all} packets`); // SYN, ACK, data, FIN...
    assert.equal(got.marked, got.all, `mark 0x${mark.toString(16)}: ${got.marked} of ${got.all} packets carried it`);
  }
});

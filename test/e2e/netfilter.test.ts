/**
 * The netfilter backend applied for real — inside throwaway network
 * namespaces, never on the host:
 *
 *   client ns (tgnfc<pid>)  veth  gateway ns (tgnf<pid>)
 *   10.77.0.2 / 2001:db8:77::2    10.77.0.1 / 2001:db8:77::1, forwarding on
 *   default via the gateway       rules + transparent listeners
 *
 * Covers apply/re-apply/crash-restart/revert, `nft -c` on every plan variant,
 * all-or-nothing on failure, the permission error, and the data path: a
 * client's connection to 203.0.113.2:80 / [2001:db8:3::2]:80 (forwarded
 * traffic) reaches a transparent listener on 127.0.0.1 / ::1 with the original
 * destination as its local address.
 *
 * Root only: skipped otherwise, unless CI=true (then it runs and fails).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { rulesConfig } from '../support/rules-config';
import { ErrorCodes, GatewayError } from '../../src/core/errors';
import {
  DEFAULT_BYPASS4,
  DEFAULT_BYPASS6,
  NftablesRuleBackend,
  plan,
  run,
  type RulesConfig,
  type RulesPlan,
  type Runner,
} from '../../src/netfilter/index';

const GW = `tgnf${process.pid}`;
const CL = `tgnfc${process.pid}`;
const MARK = 0x7467;
const TABLE = 7467;

function skipReason(): string | undefined {
  if (process.env.CI === 'true') return undefined;
  if (process.platform !== 'linux') return 'needs Linux network namespaces';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (ip netns, nftables)';
  return undefined;
}
const skip = skipReason();

function config(over: Partial<RulesConfig> = {}): RulesConfig {
  return rulesConfig({
    tcp: [
      { ports: [80], listenPort: 3180 },
      { ports: [443], listenPort: 3143 },
      { ports: [22, 5000], listenPort: 3122 },
    ],
    fwmark: MARK,
    routeTable: TABLE,
    rulePriority: TABLE,
    ...over,
  });
}

async function sh(argv: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(argv, { input, timeoutMs: 20_000 });
}

async function must(argv: string[]): Promise<string> {
  const r = await sh(argv);
  assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const inGw = (...argv: string[]): string[] => ['ip', 'netns', 'exec', GW, ...argv];
const inCl = (...argv: string[]): string[] => ['ip', 'netns', 'exec', CL, ...argv];

/** Our fwmark rules in the gateway namespace, per family. */
async function ourRules(family: 4 | 6): Promise<string[]> {
  const out = await must(['ip', '-n', GW, `-${family}`, 'rule', 'show']);
  return out.split('\n').filter((l) => l.includes(`fwmark 0x${MARK.toString(16)} lookup ${TABLE}`));
}

async function tablesNamedTransgate(): Promise<number> {
  const out = await must(inGw('nft', 'list', 'tables'));
  return out.split('\n').filter((l) => l.trim() === 'table inet transgate').length;
}

async function tableRoutes(family: 4 | 6): Promise<string> {
  const r = await sh(['ip', '-n', GW, `-${family}`, 'route', 'show', 'table', String(TABLE)]);
  return r.code === 0 ? r.stdout.trim() : '';
}

// A tiny listener: TCP (transparent or not) or UDP with IP(V6)_RECVORIGDSTADDR.
// Prints "listening" when ready; for each TCP connection it answers an HTTP
// response whose body is "local=<addr>:<port>", the accepted socket's local address.
const LISTENER_PY = String.raw`
import socket, sys
addr, port, transparent = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6 and addr == '::':
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
if transparent:
    if fam == socket.AF_INET:
        s.setsockopt(socket.SOL_IP, 19, 1)            # IP_TRANSPARENT
    else:
        s.setsockopt(socket.IPPROTO_IPV6, 75, 1)      # IPV6_TRANSPARENT
        if addr == '::':
            s.setsockopt(socket.SOL_IP, 19, 1)
s.bind((addr, port))
s.listen(16)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    la = c.getsockname()
    host = la[0][7:] if la[0].startswith('::ffff:') else la[0]
    body = 'local=%s:%d' % (('[%s]' % host) if ':' in host else host, la[1])
    c.recv(4096)
    c.sendall(('HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(body), body)).encode())
    c.close()
`;

// UDP: a transparent socket with IP(V6)_RECVORIGDSTADDR prints "orig=<addr>:<port>" per datagram.
const UDP_LISTENER_PY = String.raw`
import socket, struct, sys
addr, port = sys.argv[1], int(sys.argv[2])
v6 = ':' in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, 75, 1); s.setsockopt(socket.IPPROTO_IPV6, 74, 1)  # IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR
else:
    s.setsockopt(socket.SOL_IP, 19, 1); s.setsockopt(socket.SOL_IP, 20, 1)              # IP_TRANSPARENT, IP_RECVORIGDSTADDR
s.bind((addr, port))
print('listening', flush=True)
while True:
    data, anc, _, peer = s.recvmsg(2048, 1024)
    for level, typ, d in anc:
        if not v6 and typ == 20:
            print('orig=%s:%d' % (socket.inet_ntop(socket.AF_INET, d[4:8]), struct.unpack('!H', d[2:4])[0]), flush=True)
        if v6 and typ == 74:
            print('orig=[%s]:%d' % (socket.inet_ntop(socket.AF_INET6, d[8:24]), struct.unpack('!H', d[2:4])[0]), flush=True)
`;

describe('netfilter backend in a network namespace', { skip, timeout: 180_000 }, () => {
  const procs: ChildProcess[] = [];
  let tmp = '';
  let backend: NftablesRuleBackend;
  let havePython = false;
  let haveCurl = false;

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tgnf-'));
    fs.writeFileSync(path.join(tmp, 'listener.py'), LISTENER_PY);
    fs.writeFileSync(path.join(tmp, 'udp-listener.py'), UDP_LISTENER_PY);
    // Any failure from here on is cleaned up by after().
    for (const ns of [GW, CL]) await must(['ip', 'netns', 'add', ns]);
    await must(['ip', 'link', 'add', 'tgnf-gw', 'netns', GW, 'type', 'veth', 'peer', 'name', 'tgnf-cl', 'netns', CL]);
    const setup: string[][] = [
      ['ip', '-n', GW, 'link', 'set', 'lo', 'up'],
      ['ip', '-n', CL, 'link', 'set', 'lo', 'up'],
      ['ip', '-n', GW, 'link', 'set', 'tgnf-gw', 'up'],
      ['ip', '-n', CL, 'link', 'set', 'tgnf-cl', 'up'],
      ['ip', '-n', GW, 'addr', 'add', '10.77.0.1/24', 'dev', 'tgnf-gw'],
      ['ip', '-n', CL, 'addr', 'add', '10.77.0.2/24', 'dev', 'tgnf-cl'],
      ['ip', '-n', GW, 'addr', 'add', '2001:db8:77::1/64', 'dev', 'tgnf-gw', 'nodad'],
      ['ip', '-n', CL, 'addr', 'add', '2001:db8:77::2/64', 'dev', 'tgnf-cl', 'nodad'],
      ['ip', '-n', CL, 'route', 'add', 'default', 'via', '10.77.0.1'],
      ['ip', '-n', CL, '-6', 'route', 'add', 'default', 'via', '2001:db8:77::1'],
      inGw('sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'),
    ];
    for (const argv of setup) await must(argv);
    backend = new NftablesRuleBackend({ netns: GW });
    havePython = (await sh(['sh', '-c', 'command -v python3'])).code === 0;
    haveCurl = (await sh(['sh', '-c', 'command -v curl'])).code === 0;
  });

  after(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await Promise.all(procs.filter((p) => p.exitCode === null && p.signalCode === null).map((p) => new Promise((r) => p.once('close', r))));
    for (const ns of [GW, CL]) await sh(['ip', 'netns', 'del', ns]);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  async function listener(addr: string, port: number, transparent: boolean, script = 'listener.py'): Promise<ChildProcess> {
    const p = spawn('ip', ['netns', 'exec', GW, 'python3', path.join(tmp, script), addr, String(port), transparent ? '1' : '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    procs.push(p);
    let err = '';
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`listener ${addr}:${port} not ready: ${err}`)), 10_000);
      p.stdout.on('data', (b: Buffer) => {
        if (b.toString().includes('listening')) {
          clearTimeout(t);
          resolve();
        }
      });
      p.once('close', (code) => {
        clearTimeout(t);
        reject(new Error(`listener ${addr}:${port} exited ${code}: ${err}`));
      });
    });
    return p;
  }

  async function stop(p: ChildProcess): Promise<void> {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const closed = new Promise((r) => p.once('close', r));
    p.kill('SIGKILL');
    await closed;
  }

  async function curlFromClient(url: string): Promise<{ code: number; body: string; err: string }> {
    const r = await sh(inCl('curl', '-sS', '-g', '--max-time', '5', url));
    return { code: r.code, body: r.stdout, err: r.stderr };
  }

  test('nft -c accepts every planned script variant', async () => {
    const variants: Array<[string, Partial<RulesConfig>]> = [
      ['tproxy default', {}],
      ['tproxy v4-only', { ipv6: false }],
      ['tproxy v6-only', { ipv4: false }],
      ['tproxy lan interfaces', { lanInterfaces: ['lan0', 'br-lan', 'eth*'] }],
      ['tproxy empty bypass', { bypass4: [], bypass6: [] }],
      [
        'tproxy overlapping bypass',
        { bypass4: [...DEFAULT_BYPASS4, '10.1.0.0/16', '10.1.2.3/8', '203.0.113.9'], bypass6: [...DEFAULT_BYPASS6, 'fd00::/8'] },
      ],
      ['tproxy udp dns', { udp: [{ ports: [53], listenPort: 3153 }] }],
      ['tproxy no address', { tproxyAddress4: undefined, tproxyAddress6: undefined }],
      ['redirect default', { mode: 'redirect' }],
      ['redirect v4-only lan', { mode: 'redirect', ipv6: false, lanInterfaces: ['lan0'] }],
      ['redirect v6-only empty bypass', { mode: 'redirect', ipv4: false, bypass6: [] }],
      ['redirect udp', { mode: 'redirect', udp: [{ ports: [53, 5353], listenPort: 3153 }] }],
    ];
    for (const [name, over] of variants) {
      const p = plan(config(over));
      const r = await sh(inGw('nft', '-c', '-f', '-'), p.nftScript);
      assert.equal(r.code, 0, `${name}: nft -c rejected the script:\n${r.stderr}\n${p.nftScript}`);
      await backend.check(p);
    }
    assert.equal(await tablesNamedTransgate(), 0, 'check mode must not install anything');
  });

  test('apply installs the table, one fwmark rule per family and the local routes', async () => {
    assert.equal(await backend.isInstalled(), false);
    const p = await backend.apply(config());
    assert.equal(p.mode, 'tproxy');
    const listing = await must(inGw('nft', 'list', 'table', 'inet', 'transgate'));
    assert.match(listing, /chain prerouting \{/);
    assert.match(listing, /type filter hook prerouting priority mangle; policy accept;/);
    assert.match(listing, /tcp flags != syn \/ syn,ack socket transparent 1 meta mark set 0x00007467 accept/);
    assert.match(listing, /tcp dport \{ 22, 5000 \} tproxy ip to 127\.0\.0\.1:3122 meta mark set 0x00007467 accept/);
    assert.match(listing, /tproxy ip6 to \[::1\]:3180/);
    assert.match(listing, /set bypass4 \{[\s\S]*10\.0\.0\.0\/8/);
    assert.equal(await tablesNamedTransgate(), 1);
    assert.equal((await ourRules(4)).length, 1);
    assert.equal((await ourRules(6)).length, 1);
    assert.match((await ourRules(4))[0]!, /^7467:/);
    assert.match(await tableRoutes(4), /local default dev lo/);
    assert.match(await tableRoutes(6), /local default dev lo/);
    assert.equal(await backend.isInstalled(), true);
    const desc = await backend.describeInstalled();
    assert.match(desc, /table inet transgate \{/);
    assert.match(desc, /ip -4 rule: 7467:\s+from all fwmark 0x7467 lookup 7467/);
    assert.match(desc, /ip -6 rule: 7467:\s+from all fwmark 0x7467 lookup 7467/);
  });

  test('apply again (restart) and after a crash leaves exactly one table and one rule', async () => {
    await backend.apply(config());
    assert.equal(await tablesNamedTransgate(), 1);
    assert.equal((await ourRules(4)).length, 1);
    assert.equal((await ourRules(6)).length, 1);

    // Crash leftovers: a second copy of our rule (other pref) and a stale extra chain in our table.
    await must(['ip', '-n', GW, '-4', 'rule', 'add', 'fwmark', '0x7467', 'lookup', '7467', 'pref', '100']);
    await must(['ip', '-n', GW, '-6', 'rule', 'add', 'fwmark', '0x7467', 'lookup', '7467', 'pref', '100']);
    await must(inGw('nft', 'add', 'chain', 'inet', 'transgate', 'stale'));
    assert.equal((await ourRules(4)).length, 2);

    // A fresh backend (new process after the crash) knows nothing but the config.
    const fresh = new NftablesRuleBackend({ netns: GW });
    await fresh.apply(config());
    assert.equal(await tablesNamedTransgate(), 1);
    assert.doesNotMatch(await must(inGw('nft', 'list', 'table', 'inet', 'transgate')), /chain stale/);
    assert.equal((await ourRules(4)).length, 1);
    assert.equal((await ourRules(6)).length, 1);
  });

  test('tproxy to 127.0.0.1 / ::1 delivers forwarded TCP to transparent loopback listeners with the original destination', async (t) => {
    if (!havePython || !haveCurl) {
      if (process.env.CI === 'true') assert.fail('python3 and curl are needed for the data-path test');
      t.skip('python3 or curl not installed');
      return;
    }
    await backend.apply(config());
    const l4 = await listener('127.0.0.1', 3180, true);
    const l6 = await listener('::1', 3180, true);
    try {
      const r4 = await curlFromClient('http://203.0.113.2/');
      assert.equal(r4.code, 0, r4.err);
      assert.equal(r4.body, 'local=203.0.113.2:80');
      const r6 = await curlFromClient('http://[2001:db8:3::2]/');
      assert.equal(r6.code, 0, r6.err);
      assert.equal(r6.body, 'local=[2001:db8:3::2]:80');
      // Bypassed destinations are not intercepted (10.0.0.0/8 → forwarded, nobody there → fails fast or times out).
      const bypassed = await sh(inCl('curl', '-sS', '--max-time', '2', 'http://10.99.0.1/'));
      assert.notEqual(bypassed.code, 0);
      // The gateway's own address is never intercepted: nothing listens on 10.77.0.1:80 → refused.
      const own = await sh(inCl('curl', '-sS', '--max-time', '3', 'http://10.77.0.1/'));
      assert.equal(own.code, 7, own.stderr);
    } finally {
      await stop(l4);
      await stop(l6);
    }
  });

  test('UDP tproxy to 127.0.0.1 / ::1 delivers forwarded datagrams with the original destination', async (t) => {
    if (!havePython) {
      if (process.env.CI === 'true') assert.fail('python3 is needed for the data-path test');
      t.skip('python3 not installed');
      return;
    }
    await backend.apply(config({ udp: [{ ports: [53], listenPort: 3153 }] }));
    const l4 = await listener('127.0.0.1', 3153, true, 'udp-listener.py');
    const l6 = await listener('::1', 3153, true, 'udp-listener.py');
    const seen: string[] = [];
    for (const l of [l4, l6])
      l.stdout!.on('data', (b: Buffer) =>
        seen.push(
          ...b
            .toString()
            .split('\n')
            .filter((x) => x.startsWith('orig=')),
        ),
      );
    try {
      const send = (fam: string, host: string): Promise<unknown> =>
        must(inCl('python3', '-c', `import socket; s=socket.socket(socket.${fam}, socket.SOCK_DGRAM); s.sendto(b'q', ('${host}', 53))`));
      for (let i = 0; i < 50 && !(seen.includes('orig=203.0.113.2:53') && seen.includes('orig=[2001:db8:3::2]:53')); i++) {
        await send('AF_INET', '203.0.113.2');
        await send('AF_INET6', '2001:db8:3::2');
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(seen.includes('orig=203.0.113.2:53'), seen.join(' '));
      assert.ok(seen.includes('orig=[2001:db8:3::2]:53'), seen.join(' '));
    } finally {
      await stop(l4);
      await stop(l6);
    }
  });

  test('redirect mode replaces the tproxy rules and drops the policy routing', async (t) => {
    const p = await backend.apply(config({ mode: 'redirect' }));
    assert.deepEqual(p.routes, []);
    assert.equal(await tablesNamedTransgate(), 1);
    const listing = await must(inGw('nft', 'list', 'table', 'inet', 'transgate'));
    assert.match(listing, /type nat hook prerouting priority dstnat; policy accept;/);
    assert.match(listing, /redirect to :3180/);
    assert.doesNotMatch(listing, /tproxy/);
    assert.equal((await ourRules(4)).length, 0);
    assert.equal((await ourRules(6)).length, 0);
    if (!havePython || !haveCurl) {
      t.skip('python3 or curl not installed: data path not checked');
      return;
    }
    const l = await listener('::', 3180, false);
    try {
      const r4 = await curlFromClient('http://203.0.113.2/');
      assert.equal(r4.code, 0, r4.err);
      assert.equal(r4.body, 'local=10.77.0.1:3180');
      const r6 = await curlFromClient('http://[2001:db8:3::2]/');
      assert.equal(r6.code, 0, r6.err);
      assert.equal(r6.body, 'local=[2001:db8:77::1]:3180');
    } finally {
      await stop(l);
    }
  });

  test('revert removes everything; a second revert is a no-op', async () => {
    await backend.apply(config());
    assert.equal(await backend.revert(config()), true);
    assert.equal(await tablesNamedTransgate(), 0);
    assert.equal((await ourRules(4)).length, 0);
    assert.equal((await ourRules(6)).length, 0);
    assert.equal(await tableRoutes(4), '');
    assert.equal(await tableRoutes(6), '');
    assert.equal(await backend.revert({ fwmark: MARK, routeTable: TABLE }), false);
    assert.equal(await backend.revert(), false);
    assert.equal(await backend.isInstalled(), false);
    assert.match(await backend.describeInstalled(), /not installed[\s\S]*policy routing rules: none/);
  });

  test('revert after a crash needs only the fwmark and table numbers', async () => {
    await new NftablesRuleBackend({ netns: GW }).apply(config());
    // "after the crash": a new backend, no plan, only the numbers
    assert.equal(await new NftablesRuleBackend({ netns: GW }).revert({ fwmark: MARK, routeTable: TABLE }), true);
    assert.equal(await tablesNamedTransgate(), 0);
    assert.equal((await ourRules(4)).length + (await ourRules(6)).length, 0);
  });

  test('apply is all-or-nothing: a failing route step removes the table and rules again', async () => {
    const good = plan(config());
    const broken: RulesPlan = {
      ...good,
      routes: [
        good.routes[0]!,
        { ...good.routes[1]!, routeArgs: ['-6', 'route', 'replace', 'local', '::/0', 'dev', 'tgnf-nodev', 'table', String(TABLE)] },
      ],
    };
    await assert.rejects(backend.apply(broken), (e: unknown) => {
      assert.ok(e instanceof GatewayError, String(e));
      assert.equal(e.code, ErrorCodes.RULES);
      assert.match(e.message, /reverted/);
      assert.match(e.message, /tgnf-nodev/);
      return true;
    });
    assert.equal(await tablesNamedTransgate(), 0);
    assert.equal((await ourRules(4)).length, 0);
    assert.equal((await ourRules(6)).length, 0);
    assert.equal(await tableRoutes(4), '');
  });

  test('a broken script changes nothing (one nft transaction)', async () => {
    await backend.apply(config());
    const before4 = await must(inGw('nft', 'list', 'table', 'inet', 'transgate'));
    const bad: RulesPlan = {
      ...plan(config()),
      nftScript: plan(config()).nftScript.replace('tproxy ip to 127.0.0.1:3180', 'tproxy ip to 127.0.0.1:99999'),
    };
    await assert.rejects(backend.apply(bad), (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.RULES);
    assert.equal(await must(inGw('nft', 'list', 'table', 'inet', 'transgate')), before4);
    assert.equal((await ourRules(4)).length, 1);
    await backend.revert(config());
  });

  test('without CAP_NET_ADMIN apply fails with PERMISSION and the sudo hint', async (t) => {
    if ((await sh(['sh', '-c', 'command -v setpriv'])).code !== 0) {
      t.skip('setpriv not installed');
      return;
    }
    const unprivileged: Runner = (argv, o) =>
      run(['ip', 'netns', 'exec', GW, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', ...argv], o);
    const b = new NftablesRuleBackend({ runner: unprivileged });
    await assert.rejects(b.apply(config()), (e: unknown) => {
      assert.ok(e instanceof GatewayError, String(e));
      assert.equal(e.code, ErrorCodes.PERMISSION);
      assert.match(e.message, /run as root or with CAP_NET_ADMIN \(sudo -E npx transgate\)/);
      return true;
    });
    await assert.rejects(b.revert(config()), (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.PERMISSION);
    assert.equal(await tablesNamedTransgate(), 0);
  });
});

/**
 * Validates the e2e lab itself (no gateway needed): topology, reachability,
 * squid variants, the access log, the gateway runner and teardown.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, LAB_PREFIX, Lab, e2eSkipReason, listNetns, parseKv, pidAlive, removeLeftovers } from './lab';

const skip = e2eSkipReason();

/** Every pid whose command line mentions `needle`, other than us. */
function pidsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(needle) && pidAlive(Number(e))) out.push(Number(e));
    } catch {
      /* raced */
    }
  }
  return out;
}

describe('e2e lab', { skip, timeout: 180_000 }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create();
  });

  after(async () => {
    await lab?.destroy();
  });

  test('namespaces exist with per-run names and the expected addresses', async () => {
    const all = listNetns();
    for (const role of ['cl', 'gw', 'up', 'in'] as const) {
      assert.match(lab.ns[role], new RegExp(`^${LAB_PREFIX}-${process.pid}-[0-9a-f]+-${role}$`));
      assert.ok(all.includes(lab.ns[role]), `${lab.ns[role]} missing from ip netns list`);
    }
    const gw = await lab.exec('gw', ['ip', '-o', 'addr', 'show']);
    for (const a of ['192.0.2.1/24', '2001:db8:1::1/64', '198.51.100.1/24', '2001:db8:2::1/64']) assert.ok(gw.stdout.includes(a), a);
    const routes = await lab.exec('gw', ['sh', '-c', 'ip route show default; ip -6 route show default']);
    assert.equal(routes.stdout.trim(), '', 'gw must have no default route');
    const fwd = await lab.exec('gw', [
      'sysctl',
      '-n',
      'net.ipv4.ip_forward',
      'net.ipv6.conf.all.forwarding',
      'net.ipv4.conf.all.send_redirects',
    ]);
    assert.deepEqual(fwd.stdout.trim().split('\n'), ['1', '1', '0']);
    const cl = await lab.exec('cl', ['sh', '-c', 'ip route show default; ip -6 route show default']);
    assert.match(cl.stdout, /default via 192\.0\.2\.1 dev eth0/);
    assert.match(cl.stdout, /default via 2001:db8:1::1 dev eth0/);
  });

  test('explicit proxy works from gw: http and https, v4 and v6 proxy address', async () => {
    const h = await lab.exec('gw', ['curl', '-sS', '--max-time', '10', '-x', ADDR.proxyUrl, 'http://www.example.test/lab-http']);
    assert.equal(h.code, 0, h.stderr);
    assert.equal(h.stdout, 'origin host=www.example.test uri=/lab-http proto=http\n');

    const s4 = await lab.exec('gw', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--cacert',
      lab.caFile,
      '-x',
      ADDR.proxyUrl,
      'https://api.example.test/lab-tls',
    ]);
    assert.equal(s4.code, 0, s4.stderr);
    assert.equal(s4.stdout, 'origin host=api.example.test uri=/lab-tls proto=https\n');

    const s6 = await lab.exec('gw', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--cacert',
      lab.caFile,
      '-x',
      ADDR.proxyUrl6,
      'https://v6.example.test/lab-v6',
    ]);
    assert.equal(s6.code, 0, s6.stderr);
    assert.equal(s6.stdout, 'origin host=v6.example.test uri=/lab-v6 proto=https\n');

    const h6 = await lab.exec('gw', ['curl', '-sS', '--max-time', '10', '-x', ADDR.proxyUrl6, 'http://[2001:db8:3::2]/lab-v6lit']);
    assert.equal(h6.code, 0, h6.stderr);
    assert.equal(h6.stdout, 'origin host=[2001:db8:3::2] uri=/lab-v6lit proto=http\n');
  });

  test('the 1 MiB /big.bin is served', async () => {
    const r = await lab.exec('gw', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{size_download}',
      '-x',
      ADDR.proxyUrl,
      'http://www.example.test/big.bin',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '200 1048576');
  });

  test('echo servers on 22 and 5000 (v4 and v6) answer through CONNECT', async () => {
    for (const target of ['203.0.113.2:22', '[2001:db8:3::2]:5000']) {
      const r = await lab.exec('gw', [
        'sh',
        '-c',
        `(printf 'CONNECT ${target} HTTP/1.1\\r\\nHost: ${target}\\r\\n\\r\\nhello-echo\\n'; sleep 1) | socat -t 2 - TCP:${ADDR.proxy.v4}:${ADDR.proxy.port}`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^HTTP\/1\.1 200/);
      assert.match(r.stdout, /hello-echo\n$/, `no echo from ${target}: ${JSON.stringify(r.stdout)}`);
    }
  });

  test('origins are not reachable directly from cl or gw (fails fast)', async () => {
    for (const ns of ['cl', 'gw'] as const) {
      for (const url of ['http://203.0.113.2/', 'https://203.0.113.2/', 'http://[2001:db8:3::2]/', 'http://203.0.113.2:22/']) {
        const r = await lab.exec(ns, ['curl', '-sS', '-k', '--max-time', '10', url]);
        assert.notEqual(r.code, 0, `${ns} reached ${url}: ${r.stdout}`);
        assert.ok(r.ms < 3000, `${ns} ${url} took ${r.ms} ms to fail`);
        assert.match(r.stderr, /Couldn't connect|unreachable|Failed to connect/i, r.stderr);
      }
    }
  });

  test('intranet nginx is reachable from gw (v4, v6) and not directly from cl', async () => {
    const v4 = await lab.exec('gw', ['curl', '-sS', '--max-time', '5', 'http://198.51.100.3/i4']);
    assert.equal(v4.code, 0, v4.stderr);
    assert.equal(v4.stdout, 'intranet host=198.51.100.3 uri=/i4\n');
    const v6 = await lab.exec('gw', [
      'curl',
      '-sS',
      '--max-time',
      '5',
      '--resolve',
      'intranet.test:80:[2001:db8:2::3]',
      'http://intranet.test/i6',
    ]);
    assert.equal(v6.code, 0, v6.stderr);
    assert.equal(v6.stdout, 'intranet host=intranet.test uri=/i6\n');
    // up has no route back to the client net: only the gateway's own address works.
    const cl = await lab.exec('cl', ['curl', '-sS', '--max-time', '1', 'http://198.51.100.3/']);
    assert.notEqual(cl.code, 0, cl.stdout);
  });

  test('squidLog shows entries with method, URL and status; intranet requests are not in it', async () => {
    const from = await lab.squidMark();
    const r = await lab.exec('gw', ['curl', '-sS', '--max-time', '5', '-x', ADDR.proxyUrl, 'http://git.example.test/logged']);
    assert.equal(r.code, 0, r.stderr);
    const line = await lab.waitSquidLog(/ GET http:\/\/git\.example\.test\/logged 200 /, 3000, from);
    assert.match(line, /^\d+\.\d{3} 198\.51\.100\.1 GET /);
    await lab.exec('gw', ['curl', '-sS', '--max-time', '5', 'http://198.51.100.3/not-in-squid']);
    const since = await lab.squidLogSince(from);
    assert.ok(!since.some((l) => l.includes('not-in-squid')), since.join('\n'));
  });

  test('stopSquid closes the port (connect refused fast); startSquid brings it back', async () => {
    await lab.stopSquid();
    const down = await lab.exec('gw', ['curl', '-sS', '--max-time', '10', '-x', ADDR.proxyUrl, 'http://www.example.test/']);
    assert.equal(down.code, 7, down.stderr);
    assert.ok(down.ms < 2000, `took ${down.ms} ms`);
    await lab.startSquid({});
    const up = await lab.exec('gw', ['curl', '-sS', '--max-time', '10', '-x', ADDR.proxyUrl, 'http://www.example.test/back']);
    assert.equal(up.code, 0, up.stderr);
    assert.match(up.stdout, /uri=\/back/);
  });

  test('auth variant: 407 without credentials, 200 with percent-encoded ones', async () => {
    await lab.restartSquid({ auth: true });
    try {
      const none = await lab.exec('gw', [
        'curl',
        '-sS',
        '--max-time',
        '5',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-x',
        ADDR.proxyUrl,
        'http://www.example.test/',
      ]);
      assert.equal(none.stdout, '407');
      const wrong = await lab.exec('gw', [
        'curl',
        '-sS',
        '--max-time',
        '5',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-x',
        'http://alice:s3cr3t@198.51.100.2:3128',
        'http://www.example.test/',
      ]);
      assert.equal(wrong.stdout, '407');
      assert.equal(ADDR.proxyUrlAuth, 'http://alice:s3cr3t%20p%40ss@198.51.100.2:3128');
      const ok = await lab.exec('gw', ['curl', '-sS', '--max-time', '5', '-x', ADDR.proxyUrlAuth, 'http://www.example.test/authed']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, /uri=\/authed/);
      const tls = await lab.exec('gw', [
        'curl',
        '-sS',
        '--max-time',
        '5',
        '--cacert',
        lab.caFile,
        '-x',
        ADDR.proxyUrlAuth,
        'https://www.example.test/authed-tls',
      ]);
      assert.equal(tls.code, 0, tls.stderr);
      assert.match(tls.stdout, /proto=https/);
      await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/ 407 /);
      await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/authed 200 \d+ alice$/);
    } finally {
      await lab.restartSquid({});
    }
  });

  test('connectOnly443 variant refuses CONNECT to 22 with 403 and allows 443', async () => {
    await lab.restartSquid({ connectOnly443: true });
    try {
      const r = await lab.exec('gw', [
        'sh',
        '-c',
        `(printf 'CONNECT 203.0.113.2:22 HTTP/1.1\\r\\nHost: 203.0.113.2:22\\r\\n\\r\\n'; sleep 1) | socat -t 2 - TCP:${ADDR.proxy.v4}:${ADDR.proxy.port}`,
      ]);
      assert.match(r.stdout, /^HTTP\/1\.1 403/);
      const ok = await lab.exec('gw', [
        'curl',
        '-sS',
        '--max-time',
        '5',
        '--cacert',
        lab.caFile,
        '-x',
        ADDR.proxyUrl,
        'https://www.example.test/still-ok',
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      await lab.waitSquidLog(/ CONNECT 203\.0\.113\.2:22 403 /);
    } finally {
      await lab.restartSquid({});
    }
  });

  test('exec enforces its timeout and kills the whole process group', async () => {
    const r = await lab.exec('cl', ['sh', '-c', 'sleep 30 | cat; echo never'], { timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(r.ms < 2000, `took ${r.ms} ms`);
    assert.ok(!r.stdout.includes('never'));
  });

  test('exec passes input and a clean environment', async () => {
    const r = await lab.exec('cl', ['sh', '-c', 'cat; env | sort'], { input: 'piped-in\n' });
    assert.match(r.stdout, /^piped-in\n/);
    assert.ok(!/_proxy=/i.test(r.stdout), 'host proxy variables leaked into exec');
  });

  test('startGateway: exact env, ready line, waitFor, stop returns the exit code', async () => {
    const script = path.join(lab.dir, 'fake-gateway.js');
    fs.writeFileSync(
      script,
      [
        "console.log('env ' + JSON.stringify(Object.keys(process.env).sort()));",
        "console.error('argv ' + process.argv.slice(2).join(' '));",
        "console.log('transgate ready listening');",
        "process.on('SIGTERM', () => { console.log('bye'); process.exit(0); });",
        "setInterval(() => console.log('conn id=1 kind=tcp up=3 down=4 result=ok'), 100);",
      ].join('\n'),
    );
    const gw = await lab.startGateway(['--mode', 'tproxy'], { http_proxy: ADDR.proxyUrl }, { script });
    assert.ok(gw.running);
    const envLine = gw.lines.find((l) => l.startsWith('env '));
    assert.deepEqual(JSON.parse((envLine ?? 'env []').slice(4)), ['PATH', 'http_proxy']);
    assert.equal(await gw.waitFor(/^argv /, 1000), 'argv --mode tproxy');
    const conn = parseKv(await gw.waitFor(/^conn /, 2000));
    assert.equal(conn.kind, 'tcp');
    assert.equal(conn.result, 'ok');
    assert.equal(await gw.stop(), 0);
    assert.ok(gw.lines.includes('bye'));
    assert.equal(pidAlive(gw.pid), false);
  });

  test('startGateway fails fast with the collected output when the process exits first', async () => {
    const script = path.join(lab.dir, 'fake-broken.js');
    fs.writeFileSync(script, "console.error('TG_ERR_CONFIG: no upstream proxy'); process.exit(2);\n");
    const t0 = Date.now();
    await assert.rejects(lab.startGateway([], {}, { script }), /exited \(2\)[\s\S]*TG_ERR_CONFIG: no upstream proxy/);
    assert.ok(Date.now() - t0 < 5000);
  });

  test('kill9 ends the gateway with SIGKILL', async () => {
    const script = path.join(lab.dir, 'fake-stubborn.js');
    fs.writeFileSync(script, "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000);\n");
    const gw = await lab.startGateway([], {}, { script });
    assert.equal(await gw.kill9(), 128 + 9);
  });

  test('removeLeftovers removes namespaces, processes and temp dirs of dead runs', async () => {
    const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
    const dead = pidMax + 1; // never a live pid
    const ns = `${LAB_PREFIX}-${dead}-beef-cl`;
    const dir = path.join(os.tmpdir(), `${LAB_PREFIX}-${dead}-beef`);
    fs.mkdirSync(dir, { recursive: true });
    const add = spawn('ip', ['netns', 'add', ns], { stdio: 'ignore' });
    await new Promise((r) => add.on('close', r));
    const sleeper = spawn('ip', ['netns', 'exec', ns, 'sleep', '300'], { stdio: 'ignore', detached: true });
    const sleeperExit = new Promise((r) => sleeper.on('exit', r));
    for (let i = 0; i < 100 && !fs.existsSync(`/proc/${sleeper.pid}/ns/net`); i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100));
    try {
      const removed = removeLeftovers();
      assert.ok(removed.includes(ns), removed.join(' '));
      assert.ok(removed.includes(dir), removed.join(' '));
      assert.ok(!listNetns().includes(ns));
      assert.ok(!fs.existsSync(dir));
      await sleeperExit;
      assert.equal(pidAlive(sleeper.pid as number), false);
      // Our own live lab is untouched.
      assert.ok(listNetns().includes(lab.ns.gw));
    } finally {
      try {
        process.kill(sleeper.pid as number, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });

  test('destroy leaves no namespaces, no processes, no temp dir; it is idempotent', async () => {
    const other = await Lab.create({ squid: { auth: true } });
    await other.exec('gw', ['curl', '-sS', '--max-time', '5', '-x', ADDR.proxyUrlAuth, 'http://www.example.test/']);
    const pids = other.pids();
    assert.ok(pids.length >= 5, `only ${pids.length} pids tracked`);
    assert.ok(pidsMentioning(other.dir).length >= 4, 'servers should be running before destroy');
    await other.destroy();
    await other.destroy();
    const left = listNetns().filter((n) => n.startsWith(other.id));
    assert.deepEqual(left, []);
    assert.deepEqual(pids.filter(pidAlive), []);
    assert.deepEqual(pidsMentioning(other.dir), []);
    assert.equal(fs.existsSync(other.dir), false);
    await assert.rejects(other.exec('gw', ['true']), /destroyed/);
  });
});

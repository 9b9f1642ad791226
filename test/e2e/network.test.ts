/**
 * End-to-end tests of what transgate does to the network around it, in the
 * namespace lab (cl → gw → up → in): sysctls set and restored, QUIC
 * rejected, --masquerade, --local from the gateway namespace itself.
 *
 * This file gives the lab real forwarding paths (its own namespaces only):
 * gw gets default routes via up, up forwards, in routes back via up. up has
 * no route back to the client LAN, like a real uplink: forwarded client
 * traffic only comes back when gw masquerades it.
 *
 * Every gateway here runs with strict reverse path filtering (rp_filter=1) in
 * gw: transgate does not loosen it, so these tests show it is not needed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADDR, type ExecResult, type Gw, LAB_HOSTS, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const O4 = ADDR.origin.v4;
const O6 = ADDR.origin.v6;
const WWW = ADDR.names.www;
const PEER_PORT = 7000;

function proxyEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl, ...extra };
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms} timedOut=${r.timedOut}\nstdout: ${JSON.stringify(r.stdout.slice(0, 800))}\nstderr: ${JSON.stringify(r.stderr.slice(0, 800))}`;
}

let lastGw: Gw | undefined;

function gtest(name: string, fn: () => Promise<void>): void {
  test(name, async () => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof Error && lastGw)
        err.message += `\n--- gateway (pid ${lastGw.pid}) last lines ---\n${lastGw.lines.slice(-25).join('\n')}`;
      throw err;
    }
  });
}

async function startGw(lab: Lab, args: string[], env: Record<string, string> = proxyEnv()): Promise<Gw> {
  lastGw = undefined;
  const gw = await lab.startGateway(args, env);
  lastGw = gw;
  return gw;
}

async function stopGw(lab: Lab, gw: Gw | undefined): Promise<void> {
  if (gw) {
    const code = await gw.stop('SIGTERM', 8000).catch(async () => {
      await gw.kill9();
      return -1;
    });
    assert.equal(code, 0, `gateway exit code on SIGTERM:\n${gw.lines.slice(-20).join('\n')}`);
  }
  await lab.transgate(['clear']).catch(() => undefined);
}

async function sysctl(lab: Lab, key: string): Promise<string> {
  const r = await lab.exec('gw', ['sysctl', '-n', key]);
  assert.equal(r.code, 0, show(r));
  return r.stdout.trim();
}

async function setSysctls(lab: Lab, kv: string[]): Promise<void> {
  const r = await lab.exec('gw', ['sysctl', '-q', '-w', ...kv]);
  assert.equal(r.code, 0, show(r));
}

/** A UDP datagram to host:443 from `ns`: 'refused <ms>', 'reply <text> <ms>', 'timeout' or 'error <errno>'. */
async function udpProbe(lab: Lab, ns: 'cl' | 'gw', host: string, port = 443): Promise<string> {
  const py = [
    'import socket,sys,time',
    `fam=socket.AF_INET6 if ':' in ${JSON.stringify(host)} else socket.AF_INET`,
    's=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(2)',
    `s.connect((${JSON.stringify(host)},${port})); t=time.time()`,
    'try:',
    "  s.send(b'quic-initial'); d=s.recv(100); print('reply',d.decode(),int((time.time()-t)*1000))",
    'except ConnectionRefusedError: print("refused",int((time.time()-t)*1000))',
    'except PermissionError: print("refused-local",int((time.time()-t)*1000))',
    'except socket.timeout: print("timeout")',
    'except OSError as e: print("error",e.errno)',
  ].join('\n');
  const r = await lab.exec(ns, ['python3', '-c', py], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, show(r));
  return r.stdout.trim();
}

/** Connects from cl to in's peer-address service: what `in` saw as our address, or undefined when it did not work. */
async function peerSeen(lab: Lab, host: string): Promise<string | undefined> {
  const target = host.includes(':') ? `TCP6:[${host}]:${PEER_PORT}` : `TCP4:${host}:${PEER_PORT}`;
  const r = await lab.exec('cl', ['socat', '-t', '2', '-T', '3', '-', `${target},connect-timeout=3`], { timeoutMs: 10_000 });
  return r.code === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
}

async function waitConn(
  gw: Gw,
  from: number,
  pred: (f: Record<string, string>) => boolean,
  what: string,
  timeoutMs = 5000,
): Promise<Record<string, string>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const line of gw.linesSince(from)) {
      if (!/(^|\s)conn\s+id=/.test(line)) continue;
      const f = parseKv(line);
      if (pred(f)) return f;
    }
    if (Date.now() > deadline) throw new Error(`no conn line for ${what}; gateway output since mark:\n${gw.linesSince(from).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('network e2e', { skip, timeout: 300_000 }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create();
    // no_proxy names go direct only when the gateway's resolver puts them at the destination (host verification).
    lab.setGatewayHosts([...LAB_HOSTS]);
    const ip = async (ns: 'gw' | 'up' | 'in', cmds: string[]): Promise<void> => {
      const r = await lab.exec(ns, ['ip', '-batch', '-'], { input: cmds.join('\n') + '\n' });
      assert.equal(r.code, 0, show(r));
    };
    await ip('gw', ['route add default via 198.51.100.2', 'route add default via 2001:db8:2::2']);
    await ip('in', ['route add default via 203.0.113.1', 'route add default via 2001:db8:3::1']);
    const fw = await lab.exec('up', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    assert.equal(fw.code, 0, show(fw));
    // in: a UDP echo on 443 (so a refusal can only come from the gateway) and a service that prints the peer address.
    lab.spawn('in', ['socat', 'UDP4-RECVFROM:443,fork,reuseaddr', 'SYSTEM:cat']);
    lab.spawn('in', ['socat', `TCP4-LISTEN:${PEER_PORT},fork,reuseaddr`, 'SYSTEM:echo $SOCAT_PEERADDR']);
    lab.spawn('in', ['socat', `TCP6-LISTEN:${PEER_PORT},fork,reuseaddr,ipv6only=1`, 'SYSTEM:echo $SOCAT_PEERADDR']);
    await setSysctls(lab, [
      'net.ipv4.conf.all.rp_filter=1',
      'net.ipv4.conf.lan0.rp_filter=1',
      'net.ipv4.conf.wan0.rp_filter=1',
      'net.ipv4.conf.lo.rp_filter=1',
    ]);
    for (let i = 0; i < 50; i++) {
      const l = await lab.exec('in', ['ss', '-Hlnu', 'sport = :443']);
      const t = await lab.exec('in', ['ss', '-Hlnt', `sport = :${PEER_PORT}`]);
      if (l.stdout.trim() && t.stdout.trim()) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  after(async () => {
    if (lab) await lab.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  describe('forwarding gateway: sysctls, QUIC, masquerade (tproxy, strict rp_filter)', () => {
    let gw: Gw | undefined;
    before(async () => {
      // A box that is not yet a router, and sends redirects: transgate must fix both while it runs.
      await setSysctls(lab, [
        'net.ipv4.ip_forward=0',
        'net.ipv6.conf.all.forwarding=0',
        'net.ipv4.conf.all.send_redirects=1',
        'net.ipv4.conf.lan0.send_redirects=1',
        'net.ipv6.conf.wan0.accept_ra=1',
        'net.ipv6.conf.lan0.accept_ra=1',
      ]);
      gw = await startGw(lab, ['--lan', 'lan0', '--masquerade', 'wan0']);
    });
    after(async () => {
      await stopGw(lab, gw).catch(() => undefined);
      gw = undefined;
    });

    gtest('sets forwarding on and redirects off, printing each change', async () => {
      assert.equal(await sysctl(lab, 'net.ipv4.ip_forward'), '1');
      assert.equal(await sysctl(lab, 'net.ipv6.conf.all.forwarding'), '1');
      assert.equal(await sysctl(lab, 'net.ipv4.conf.all.send_redirects'), '0');
      assert.equal(await sysctl(lab, 'net.ipv4.conf.lan0.send_redirects'), '0');
      const out = gw!.output();
      assert.match(out, /sysctl net\.ipv4\.ip_forward: 0 -> 1/);
      assert.match(out, /sysctl net\.ipv6\.conf\.all\.forwarding: 0 -> 1/);
      assert.match(out, /sysctl net\.ipv4\.conf\.all\.send_redirects: 1 -> 0/);
      assert.match(out, /sysctl net\.ipv4\.conf\.lan0\.send_redirects: 1 -> 0/);
      assert.equal(await sysctl(lab, 'net.ipv4.conf.lan0.rp_filter'), '1', 'rp_filter is left strict');
      // The uplink keeps its router advertisements with forwarding on; the LAN side does not need them.
      assert.equal(await sysctl(lab, 'net.ipv6.conf.wan0.accept_ra'), '2');
      assert.equal(await sysctl(lab, 'net.ipv6.conf.lan0.accept_ra'), '1');
      assert.match(out, /sysctl net\.ipv6\.conf\.wan0\.accept_ra: 1 -> 2/);
    });

    gtest('HTTP and HTTPS are intercepted with strict rp_filter', async () => {
      const m = await lab.squidMark();
      const h = await lab.exec('cl', ['curl', '-sS', '--max-time', '8', `http://${WWW}/rp`, '--resolve', `${WWW}:80:${O4}`]);
      assert.equal(h.code, 0, show(h));
      assert.match(h.stdout, /origin host=www\.example\.test uri=\/rp/);
      const s = await lab.exec('cl', [
        'curl',
        '-sS',
        '--max-time',
        '8',
        '--cacert',
        lab.caFile,
        `https://${WWW}/rp6`,
        '--resolve',
        `${WWW}:443:${O6}`,
      ]);
      assert.equal(s.code, 0, show(s));
      assert.match(s.stdout, /proto=https/);
      await lab.waitSquidLog(/CONNECT www\.example\.test:443/, 3000, m);
    });

    gtest('QUIC (UDP/443) from a client is refused at once with ICMP port unreachable', async () => {
      const r4 = await udpProbe(lab, 'cl', O4);
      const m = /^refused (\d+)$/.exec(r4);
      assert.ok(m, `expected a refusal, got: ${r4}`);
      assert.ok(Number(m[1]) < 1000, `refusal took ${m[1]} ms`);
      const r6 = await udpProbe(lab, 'cl', O6);
      assert.match(r6, /^refused \d+$/, 'IPv6 too');
      console.log(`QUIC probe from a client: IPv4 ${r4} ms, IPv6 ${r6} ms`);
      const t = await lab.exec('gw', ['nft', 'list', 'chain', 'inet', 'transgate', 'quic_forward']);
      assert.match(t.stdout, /udp dport 443 reject/);
    });

    gtest('--masquerade: forwarded non-intercepted traffic leaves with the uplink address', async () => {
      const seen4 = await peerSeen(lab, O4);
      assert.ok(seen4 && seen4.includes(ADDR.gwWan.v4), `IPv4 peer seen: ${String(seen4)}`);
      const seen6 = await peerSeen(lab, O6);
      // socat prints the address fully expanded and bracketed; URL compresses it.
      const canon6 = seen6 ? new URL(`http://${seen6.startsWith('[') ? seen6 : `[${seen6}]`}/`).hostname : undefined;
      assert.equal(canon6, `[${ADDR.gwWan.v6}]`, `IPv6 peer seen: ${String(seen6)}`);
    });

    gtest('stop restores the sysctls and removes the masquerade and QUIC rules', async () => {
      await stopGw(lab, gw);
      const out = gw!.output();
      gw = undefined;
      assert.equal(await sysctl(lab, 'net.ipv4.ip_forward'), '0');
      assert.equal(await sysctl(lab, 'net.ipv6.conf.all.forwarding'), '0');
      assert.equal(await sysctl(lab, 'net.ipv4.conf.all.send_redirects'), '1');
      assert.equal(await sysctl(lab, 'net.ipv4.conf.lan0.send_redirects'), '1');
      assert.equal(await sysctl(lab, 'net.ipv6.conf.wan0.accept_ra'), '1');
      assert.match(out, /sysctl net\.ipv4\.ip_forward: restored 0/);
      const t = await lab.exec('gw', ['nft', 'list', 'tables']);
      assert.doesNotMatch(t.stdout, /transgate/);
      // Forwarding on again by hand: without the masquerade, in's replies have no way back.
      await setSysctls(lab, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      assert.equal(await peerSeen(lab, O4), undefined, 'masquerade must be gone after stop');
    });
  });

  describe('sysctls after a crash', () => {
    gtest('SIGKILL leaves them set; `transgate clear` restores them (and doctor reports them first)', async () => {
      await setSysctls(lab, ['net.ipv4.ip_forward=0']);
      const gw = await startGw(lab, ['--lan', 'lan0']);
      assert.equal(await sysctl(lab, 'net.ipv4.ip_forward'), '1');
      await gw.kill9();
      assert.equal(await sysctl(lab, 'net.ipv4.ip_forward'), '1', 'nobody restored it');
      const d = await lab.transgate(['doctor', '--lan', 'lan0', '--doctor-target', `${WWW}:443`], proxyEnv(), 30_000);
      assert.match(d.stdout, /^FAIL +leftovers: .*sysctls set by transgate \(net\.ipv4\.ip_forward=1, was 0/m, d.stdout);
      const c = await lab.transgate(['clear']);
      assert.equal(c.code, 0, show(c));
      assert.match(c.stdout, /sysctls net\.ipv4\.ip_forward=0/);
      assert.equal(await sysctl(lab, 'net.ipv4.ip_forward'), '0');
      const again = await lab.transgate(['clear']);
      assert.match(again.stdout, /nothing installed/, 'the state is gone with the restore');
      await setSysctls(lab, ['net.ipv4.ip_forward=1']);
    });
  });

  describe('--allow-quic and --no-sysctl', () => {
    let gw: Gw | undefined;
    before(async () => {
      await setSysctls(lab, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv4.conf.all.send_redirects=1']);
      gw = await startGw(lab, ['--allow-quic', '--no-sysctl', '--masquerade', 'wan0']);
    });
    after(async () => {
      await stopGw(lab, gw).catch(() => undefined);
      await setSysctls(lab, ['net.ipv4.conf.all.send_redirects=0']);
    });

    gtest('UDP/443 reaches the origin, and no sysctl is touched', async () => {
      const r = await udpProbe(lab, 'cl', O4);
      assert.match(r, /^reply quic-initial \d+$/);
      assert.equal(await sysctl(lab, 'net.ipv4.conf.all.send_redirects'), '1');
      assert.doesNotMatch(gw!.output(), /sysctl /);
    });
  });

  for (const firewall of ['iptables', 'iptables-legacy'] as const) {
    const cmd = firewall === 'iptables' ? 'iptables' : 'iptables-legacy';
    const cmd6 = firewall === 'iptables' ? 'ip6tables' : 'ip6tables-legacy';
    /** Every rule line that names one of our chains, both families and all tables. */
    const ours = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const c of [cmd, cmd6]) {
        for (const table of ['mangle', 'nat', 'filter']) {
          const r = await lab.exec('gw', [c, '-w', '-t', table, '-S']);
          assert.equal(r.code, 0, show(r));
          out.push(
            ...r.stdout
              .split('\n')
              .filter((l) => l.includes('TRANSGATE'))
              .map((l) => `${c} ${table}: ${l}`),
          );
        }
      }
      return out;
    };
    for (const mode of ['tproxy', 'redirect'] as const) {
      describe(`--firewall ${firewall} --mode ${mode}`, () => {
        let gw: Gw | undefined;
        before(async () => {
          gw = await startGw(lab, ['--firewall', firewall, '--mode', mode, '--no-sysctl', '--lan', 'lan0']);
        });
        after(async () => {
          await stopGw(lab, gw).catch(() => undefined);
        });

        gtest('HTTP, HTTPS (v4 and v6) and other TCP go through squid; no nftables table', async () => {
          const m = await lab.squidMark();
          const h = await lab.exec('cl', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            `http://${WWW}/${firewall}-${mode}`,
            '--resolve',
            `${WWW}:80:${O4}`,
          ]);
          assert.equal(h.code, 0, show(h));
          assert.match(h.stdout, new RegExp(`uri=/${firewall}-${mode}`));
          for (const addr of [O4, O6]) {
            const r = await lab.exec('cl', [
              'curl',
              '-sS',
              '--max-time',
              '8',
              '--cacert',
              lab.caFile,
              `https://${WWW}/`,
              '--resolve',
              `${WWW}:443:${addr}`,
            ]);
            assert.equal(r.code, 0, `${addr}: ${show(r)}`);
            assert.match(r.stdout, /proto=https/);
          }
          const t = await lab.exec('cl', ['sh', '-c', `(printf 'ping-${mode}\\n'; sleep 1) | socat -t 2 - TCP:${O4}:22,connect-timeout=5`]);
          assert.equal(t.stdout.trim(), `ping-${mode}`, show(t));
          await lab.waitSquidLog(new RegExp(`GET http://www\\.example\\.test/${firewall}-${mode}`), 3000, m);
          await lab.waitSquidLog(/CONNECT www\.example\.test:443/, 3000, m);
          await lab.waitSquidLog(/CONNECT 203\.0\.113\.2:22/, 3000, m);
          const nft = await lab.exec('gw', ['nft', 'list', 'tables']);
          assert.doesNotMatch(nft.stdout, /transgate/);
          const jumps = (await ours()).filter((l) => /-A (PREROUTING|OUTPUT|FORWARD|POSTROUTING) /.test(l));
          // One jump into TRANSGATE from PREROUTING and one into TRANSGATE_QUIC from FORWARD, per family.
          assert.equal(jumps.length, 4, jumps.join('\n'));
        });

        gtest('a crashed run leaves chains; the next start replaces them without duplicates; stop removes all', async () => {
          await gw!.kill9();
          gw = undefined;
          const left = await ours();
          assert.ok(left.length > 0, 'SIGKILL leaves the chains behind');
          gw = await startGw(lab, ['--firewall', firewall, '--mode', mode, '--no-sysctl', '--lan', 'lan0']);
          const jumps = (await ours()).filter((l) => /-A (PREROUTING|OUTPUT|FORWARD|POSTROUTING) /.test(l));
          assert.equal(jumps.length, 4, jumps.join('\n'));
          const h = await lab.exec('cl', ['curl', '-sS', '--max-time', '8', `http://${WWW}/again`, '--resolve', `${WWW}:80:${O4}`]);
          assert.match(h.stdout, /uri=\/again/, show(h));
          await gw.stop('SIGTERM', 8000);
          gw = undefined;
          assert.deepEqual(await ours(), []);
          const rules = await lab.exec('gw', ['ip', 'rule', 'show']);
          assert.doesNotMatch(rules.stdout, /lookup 7467/);
        });

        gtest('`transgate clear` removes leftovers of either backend', async () => {
          gw = await startGw(lab, ['--firewall', firewall, '--mode', mode, '--no-sysctl']);
          await gw.kill9();
          gw = undefined;
          assert.ok((await ours()).length > 0);
          const c = await lab.transgate(['clear']);
          assert.equal(c.code, 0, show(c));
          assert.match(c.stdout, new RegExp(`removed rules and routes \\(.*${firewall}`));
          assert.deepEqual(await ours(), []);
        });

        gtest("--local: curl in gw goes through squid; transgate's own direct connection is not intercepted again", async () => {
          gw = await startGw(
            lab,
            ['--firewall', firewall, '--mode', mode, '--no-sysctl', '--local', '--log-level', 'debug'],
            proxyEnv({ no_proxy: ADDR.names.api }),
          );
          const m = await lab.squidMark();
          const h = await lab.exec('gw', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            `http://${WWW}/ipt-local-${mode}`,
            '--resolve',
            `${WWW}:80:${O4}`,
          ]);
          assert.equal(h.code, 0, show(h));
          await lab.waitSquidLog(new RegExp(`GET http://www\\.example\\.test/ipt-local-${mode}`), 3000, m);
          const s6 = await lab.exec('gw', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            '--cacert',
            lab.caFile,
            `https://${WWW}/`,
            '--resolve',
            `${WWW}:443:${O6}`,
          ]);
          assert.equal(s6.code, 0, show(s6));
          const from = gw.mark();
          const d = await lab.exec('gw', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            `http://${ADDR.names.api}/ipt-direct`,
            '--resolve',
            `${ADDR.names.api}:80:${O4}`,
          ]);
          assert.match(d.stdout, /uri=\/ipt-direct/, show(d));
          await waitConn(gw, from, (c) => c['route'] === 'direct' && c['result'] === 'ok', 'direct');
          await new Promise((r) => setTimeout(r, 300));
          const conns = gw.linesSince(from).filter((l) => /(^|\s)conn\s+id=/.test(l) && l.includes('name=api.example.test'));
          assert.equal(conns.length, 1, conns.join('\n'));
        });
      });
    }
  }

  describe('transgate doctor', () => {
    const doctor = (env: Record<string, string>, extra: string[] = []): Promise<ExecResult> =>
      lab.transgate(['doctor', '--lan', 'lan0', '--doctor-target', `${WWW}:443`, ...extra], env, 30_000);
    after(async () => {
      await setSysctls(lab, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      await lab.restartSquid({});
    });

    gtest('broken: forwarding off, proxy down → each FAIL with its fix, exit 1', async () => {
      await setSysctls(lab, ['net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0']);
      const r = await doctor({ http_proxy: `http://${ADDR.proxy.v4}:3999` });
      console.log(`--- doctor, broken lab (forwarding off, proxy down) ---\n${r.stdout}`);
      assert.equal(r.code, 1, show(r));
      assert.match(r.stdout, /^FAIL +sysctl: net\.ipv4\.ip_forward = 0.*\n +fix: sysctl -w net\.ipv4\.ip_forward=1/m);
      assert.match(r.stdout, /^FAIL +sysctl: net\.ipv6\.conf\.all\.forwarding = 0.*\n +fix: sysctl -w net\.ipv6\.conf\.all\.forwarding=1/m);
      assert.match(
        r.stdout,
        /^FAIL +proxy: http_proxy: proxy http:\/\/198\.51\.100\.2:3999: ECONNREFUSED \(TG_ERR_UPSTREAM_UNREACHABLE\): cannot connect to 198\.51\.100\.2:3999\n +fix: check the host and port/m,
      );
      assert.match(r.stdout, /^OK +kernel: nftables accepts/m);
      await setSysctls(lab, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    });

    gtest('broken: asymmetric route (part of the LAN routed out the uplink) → FAIL return-path with its fix', async () => {
      const add = await lab.exec('gw', ['ip', 'route', 'add', '192.0.2.0/25', 'via', ADDR.proxy.v4, 'dev', 'wan0']);
      assert.equal(add.code, 0, show(add));
      try {
        const r = await doctor(proxyEnv());
        console.log(`--- doctor, asymmetric route ---\n${r.stdout}`);
        assert.equal(r.code, 1, show(r));
        assert.match(
          r.stdout,
          /^FAIL +return-path: replies to clients in 192\.0\.2\.1\/24 on lan0 leave by wan0, not lan0 .*\n +fix: remove the route that takes 192\.0\.2\.2 out of wan0/m,
        );
      } finally {
        await lab.exec('gw', ['ip', 'route', 'del', '192.0.2.0/25']);
      }
      const healthy = await doctor(proxyEnv());
      assert.doesNotMatch(healthy.stdout, /^FAIL +return-path/m, healthy.stdout);
    });

    gtest('broken: wrong password → FAIL 407 with the fix; --json for scripts', async () => {
      await lab.restartSquid({ auth: true });
      const bad = `http://${ADDR.auth.user}:wrong@${ADDR.proxy.v4}:${ADDR.proxy.port}`;
      const r = await doctor({ http_proxy: bad });
      console.log(`--- doctor, wrong password ---\n${r.stdout}`);
      assert.equal(r.code, 1, show(r));
      assert.match(
        r.stdout,
        /^FAIL +proxy: http_proxy: proxy \S+ answered 407 .*to CONNECT www\.example\.test:443: the credentials .* were rejected.* \(TG_ERR_UPSTREAM_407\)\n +fix: check user and password/m,
      );
      const j = await doctor({ http_proxy: bad }, ['--json']);
      const parsed = JSON.parse(j.stdout) as { ok: boolean; checks: Array<{ name: string; status: string; fix?: string }> };
      assert.equal(parsed.ok, false);
      assert.ok(parsed.checks.some((c) => c.name === 'proxy' && c.status === 'FAIL' && c.fix));
      assert.equal(j.code, 1);
    });

    gtest('crash leftovers → FAIL with `transgate clear`', async () => {
      await lab.restartSquid({});
      const gw = await startGw(lab, ['--no-sysctl']);
      await gw.kill9();
      const r = await doctor(proxyEnv());
      assert.equal(r.code, 1, show(r));
      assert.match(r.stdout, /^FAIL +leftovers: .*no transgate runs.*\n +fix: sudo npx transgate clear/m);
      await lab.transgate(['clear']);
    });

    gtest('healthy lab (auth proxy, right password) → no FAIL, exit 0; a 443-only proxy is a WARN', async () => {
      await lab.restartSquid({ auth: true });
      await setSysctls(lab, ['net.ipv4.conf.lan0.send_redirects=0', 'net.ipv6.conf.wan0.accept_ra=2']);
      const r = await doctor({ http_proxy: ADDR.proxyUrlAuth });
      console.log(`--- doctor, healthy lab ---\n${r.stdout}`);
      assert.equal(r.code, 0, show(r));
      assert.doesNotMatch(r.stdout, /^FAIL/m);
      assert.match(r.stdout, /^OK +proxy: http_proxy: CONNECT www\.example\.test:443 allowed \(Basic credentials accepted\)/m);
      assert.match(r.stdout, /^OK +leftovers: no transgate rules installed/m);
      assert.match(r.stdout, /^0 FAIL, 0 WARN, \d+ OK$/m);
      await lab.restartSquid({ connectOnly443: true });
      const w = await doctor(proxyEnv());
      assert.equal(w.code, 0, show(w));
      assert.match(w.stdout, /^WARN +proxy: http_proxy: CONNECT www\.example\.test:22: 403, the proxy allows CONNECT to 443 only/m);
    });
  });

  for (const mode of ['tproxy', 'redirect'] as const) {
    describe(`--local --mode ${mode}: this host's own connections`, () => {
      let gw: Gw | undefined;
      before(async () => {
        gw = await startGw(lab, ['--local', '--mode', mode, '--no-sysctl', '--log-level', 'debug'], proxyEnv({ no_proxy: ADDR.names.api }));
      });
      after(async () => {
        await stopGw(lab, gw).catch(() => undefined);
      });

      gtest('curl in gw reaches origins through squid (HTTP v4, HTTPS v4 and v6)', async () => {
        const from = gw!.mark();
        const m = await lab.squidMark();
        const h = await lab.exec('gw', ['curl', '-sS', '--max-time', '8', `http://${WWW}/local-${mode}`, '--resolve', `${WWW}:80:${O4}`]);
        assert.equal(h.code, 0, show(h));
        assert.match(h.stdout, new RegExp(`origin host=www\\.example\\.test uri=/local-${mode}`));
        await lab.waitSquidLog(new RegExp(`GET http://www\\.example\\.test/local-${mode}`), 3000, m);
        for (const addr of [O4, O6]) {
          const s = await lab.exec('gw', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            '--cacert',
            lab.caFile,
            `https://${WWW}/`,
            '--resolve',
            `${WWW}:443:${addr}`,
          ]);
          assert.equal(s.code, 0, `${addr}: ${show(s)}`);
          assert.match(s.stdout, /proto=https/);
        }
        await lab.waitSquidLog(/CONNECT www\.example\.test:443/, 3000, m);
        await waitConn(gw!, from, (f) => f['kind'] === 'tls' && f['route'] === 'proxy' && f['result'] === 'ok', 'local TLS via proxy');
      });

      gtest("transgate's own direct connection (no_proxy) carries its mark and is not intercepted again", async () => {
        const from = gw!.mark();
        const h = await lab.exec('gw', [
          'curl',
          '-sS',
          '--max-time',
          '8',
          `http://${ADDR.names.api}/direct`,
          '--resolve',
          `${ADDR.names.api}:80:${O4}`,
        ]);
        assert.equal(h.code, 0, show(h));
        assert.match(h.stdout, /origin host=api\.example\.test uri=\/direct/);
        const f = await waitConn(gw!, from, (c) => c['kind'] === 'http' && c['route'] === 'direct', 'direct request');
        assert.equal(f['result'], 'ok');
        // Had the mark been missing, the gateway would have intercepted its own connection: a second conn line.
        await new Promise((r) => setTimeout(r, 300));
        // Only this request's lines: a previous test's connection may log its close late.
        const conns = gw!.linesSince(from).filter((l) => /(^|\s)conn\s+id=/.test(l) && l.includes('name=api.example.test'));
        assert.equal(conns.length, 1, `one connection expected:\n${conns.join('\n')}`);
      });

      gtest('QUIC from this host is refused too', async () => {
        // A locally generated packet that netfilter rejects fails send() itself (EPERM): just as fast a fallback.
        const r = await udpProbe(lab, 'gw', O4);
        const m = /^refused(?:-local)? (\d+)$/.exec(r);
        assert.ok(m, `expected a refusal, got: ${r}`);
        assert.ok(Number(m[1]) < 1000, `refusal took ${m[1]} ms`);
      });
    });
  }
  // Last: this rewires the lab. gw becomes a transparent bridge (lan0 + wan0 in br0),
  // cl moves onto the uplink subnet with up as its router.
  describe('--bridge: a gateway that is a bridge', () => {
    const CL = { v4: '198.51.100.50', v6: '2001:db8:2::50' };
    before(async () => {
      const batch = async (ns: 'gw' | 'cl', cmds: string[]): Promise<void> => {
        const r = await lab.exec(ns, ['ip', '-batch', '-'], { input: cmds.join('\n') + '\n' });
        assert.equal(r.code, 0, show(r));
      };
      await batch('gw', [
        'addr flush dev lan0',
        'addr flush dev wan0',
        'link add br0 type bridge forward_delay 0',
        'link set lan0 master br0',
        'link set wan0 master br0',
        'link set br0 up',
        'addr add 198.51.100.1/24 dev br0',
        'addr add 2001:db8:2::1/64 dev br0 nodad',
        'route replace default via 198.51.100.2',
        'route replace default via 2001:db8:2::2',
      ]);
      await batch('cl', [
        'addr flush dev eth0',
        `addr add ${CL.v4}/24 dev eth0`,
        `addr add ${CL.v6}/64 dev eth0 nodad`,
        'route replace default via 198.51.100.2',
        'route replace default via 2001:db8:2::2',
      ]);
    });

    for (const mode of ['tproxy', 'redirect'] as const) {
      describe(`--mode ${mode}`, () => {
        let gw: Gw | undefined;
        before(async () => {
          // Sysctls on: TPROXY in bridge mode needs bridge-nf-call-iptables=0 (br_netfilter present here).
          await setSysctls(lab, ['net.bridge.bridge-nf-call-iptables=1', 'net.bridge.bridge-nf-call-ip6tables=1']);
          gw = await startGw(lab, ['--bridge', 'br0', '--lan', 'lan0', '--mode', mode]);
        });
        after(async () => {
          await stopGw(lab, gw).catch(() => undefined);
        });

        gtest('intercepted ports go up to transgate and through squid; other traffic is bridged untouched', async () => {
          const from = gw!.mark();
          const m = await lab.squidMark();
          const h = await lab.exec('cl', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            `http://${WWW}/bridge-${mode}`,
            '--resolve',
            `${WWW}:80:${O4}`,
          ]);
          assert.equal(h.code, 0, show(h));
          assert.match(h.stdout, new RegExp(`uri=/bridge-${mode}`));
          await lab.waitSquidLog(new RegExp(`GET http://www\\.example\\.test/bridge-${mode}`), 3000, m);
          const s6 = await lab.exec('cl', [
            'curl',
            '-sS',
            '--max-time',
            '8',
            '--cacert',
            lab.caFile,
            `https://${WWW}/`,
            '--resolve',
            `${WWW}:443:${O6}`,
          ]);
          assert.equal(s6.code, 0, show(s6));
          await lab.waitSquidLog(/CONNECT www\.example\.test:443/, 3000, m);
          const c = await waitConn(gw!, from, (f) => f['kind'] === 'http' && f['result'] === 'ok', 'bridged HTTP');
          assert.match(c['client'] ?? '', new RegExp(CL.v4.replace(/\./g, '\\.')));
          // Not intercepted, not routed, not NATed: in sees the client's own address.
          const seen = await peerSeen(lab, O4);
          assert.ok(seen && seen.includes(CL.v4), `peer seen: ${String(seen)}`);
          const q = await udpProbe(lab, 'cl', O4);
          assert.match(q, /^refused \d+$/, 'bridged QUIC is refused');
        });

        gtest('stop removes the bridge table; the bridge keeps forwarding, now untouched', async () => {
          await stopGw(lab, gw);
          gw = undefined;
          const t = await lab.exec('gw', ['nft', 'list', 'tables']);
          assert.doesNotMatch(t.stdout, /transgate/);
          assert.equal(await sysctl(lab, 'net.bridge.bridge-nf-call-iptables'), '1', 'restored');
          const m = await lab.squidMark();
          const h = await lab.exec('cl', ['curl', '-sS', '--max-time', '8', `http://${WWW}/after-${mode}`, '--resolve', `${WWW}:80:${O4}`]);
          assert.equal(h.code, 0, show(h));
          const lines = await lab.squidLogSince(m, 300);
          assert.deepEqual(
            lines.filter((l) => l.includes(`after-${mode}`)),
            [],
            'squid must not see it: nothing is intercepted',
          );
        });
      });
    }
  });
});

/**
 * Who may use the gateway, and what the LAN gets while it is down: the
 * rules seen from hosts that should not be able to use, steer or abuse it.
 *
 * The lab (cl → gw → up → in) gets real forwarding paths here, as in
 * network.test.ts: gw routes by default via up, up forwards, in routes back
 * via up; gw masquerades on wan0 so that traffic it forwards un-intercepted
 * comes back (that is how "forwarded as any router would" is visible).
 *
 * A host on the uplink segment that routes through gw: up, from an extra
 * address 198.51.100.7 (2001:db8:2::7) whose policy route sends traffic to
 * the origin's subnet via gw's wan0.
 *
 * Each case fails without the rule it is about (checked by reverting it).
 */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { ADDR, type ExecResult, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const O4 = ADDR.origin.v4;
const WAN_HOST = { v4: '198.51.100.7', v6: '2001:db8:2::7' };
const CL_OTHER = '192.0.2.3';

function proxyEnv(): Record<string, string> {
  return { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl };
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms} timedOut=${r.timedOut}\nstdout: ${JSON.stringify(r.stdout.slice(0, 600))}\nstderr: ${JSON.stringify(r.stderr.slice(0, 600))}`;
}

const uniq = (tag: string): string => `/${tag}-${crypto.randomBytes(4).toString('hex')}`;

describe('adversarial netfilter: uplink, --clients, --fail-closed, redirect listeners', { skip, timeout: 600_000 }, () => {
  let lab: Lab;
  let gw: Gw | undefined;

  const must = async (ns: 'cl' | 'gw' | 'up' | 'in', argv: string[], input?: string): Promise<string> => {
    const r = await lab.exec(ns, argv, input !== undefined ? { input } : {});
    assert.equal(r.code, 0, `${argv.join(' ')}: ${show(r)}`);
    return r.stdout;
  };

  /** curl from a namespace; `from`: source address to bind. */
  const curl = (ns: 'cl' | 'up' | 'gw', url: string, from?: string, maxS = 4): Promise<ExecResult> =>
    lab.exec(ns, ['curl', '-sS', '-g', '--max-time', String(maxS), '--cacert', lab.caFile, ...(from ? ['--interface', from] : []), url], {
      timeoutMs: 15_000,
    });

  /** Whether the origin's nginx logged a request for `uri`. */
  const originSaw = (uri: string): boolean => {
    try {
      return fs.readFileSync(path.join(lab.dir, 'nginx-in', 'access.log'), 'utf8').includes(` ${uri} `);
    } catch {
      return false;
    }
  };

  /** A DNS query: the rcode of the answer, or undefined when none came back. */
  const dnsAnswer = async (ns: 'cl' | 'up', server: string, opts: { port?: number; from?: string } = {}): Promise<string | undefined> => {
    const r = await lab.exec(
      ns,
      [
        'dig',
        '+time=2',
        '+tries=1',
        `@${server}`,
        '-p',
        String(opts.port ?? 53),
        ...(opts.from ? ['-b', opts.from] : []),
        'www.example.test',
        'A',
      ],
      {
        timeoutMs: 10_000,
      },
    );
    return /status: ([A-Z]+)/.exec(r.stdout)?.[1];
  };

  /** A bare TCP connect from cl: 'ok', 'refused' (a reset), 'timeout' or the errno name, with how long it took. */
  const connectProbe = async (host: string, port: number): Promise<{ result: string; ms: number }> => {
    const py = [
      'import socket, errno, time',
      't = time.time()',
      'try:',
      `    socket.create_connection((${JSON.stringify(host)}, ${port}), timeout=2).close(); r = 'ok'`,
      "except ConnectionRefusedError: r = 'refused'",
      "except socket.timeout: r = 'timeout'",
      'except OSError as e: r = errno.errorcode.get(e.errno, str(e.errno))',
      'print(r, int((time.time() - t) * 1000))',
    ].join('\n');
    const r = await lab.exec('cl', ['python3', '-c', py], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, show(r));
    const [result, ms] = r.stdout.trim().split(' ');
    return { result: result!, ms: Number(ms) };
  };

  /** A UDP datagram from cl to in's echo on 53: 'reply', 'refused' (ICMP port unreachable) or 'timeout'. */
  const udpProbe = async (host: string): Promise<string> => {
    const py = [
      'import socket',
      's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)',
      `s.connect((${JSON.stringify(host)}, 53))`,
      'try:',
      "    s.send(b'probe'); s.recv(100); print('reply')",
      "except ConnectionRefusedError: print('refused')",
      "except socket.timeout: print('timeout')",
    ].join('\n');
    const r = await lab.exec('cl', ['python3', '-c', py], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, show(r));
    return r.stdout.trim();
  };

  const start = async (args: string[]): Promise<Gw> => {
    gw = await lab.startGateway(['--masquerade', 'wan0', '--dns-timeout', '1s', '--log-level', 'debug', ...args], proxyEnv());
    return gw;
  };

  const stopAndClear = async (): Promise<void> => {
    if (gw) await gw.stop('SIGTERM', 8000).catch(() => gw?.kill9());
    gw = undefined;
    const c = await lab.transgate(['clear']);
    assert.equal(c.code, 0, show(c));
  };

  const tableThere = async (firewall: string): Promise<boolean> => {
    if (firewall === 'nftables') return (await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'transgate'])).code === 0;
    const r = await lab.exec('gw', ['iptables', '-w', '-t', 'filter', '-S']);
    return /TRANSGATE_CLOSED/.test(r.stdout);
  };

  before(async () => {
    lab = await Lab.create();
  });

  after(async () => {
    if (gw) await gw.kill9();
    gw = undefined;
    if (lab) await lab.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  // Before the forwarding paths: gw has no default route, only the route to its proxy.
  test('`transgate rules` without a default route: wan0 is the uplink by the route to the proxy, and is excluded', async () => {
    const r = await lab.transgate(['rules'], proxyEnv());
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^# uplink wan0 \(route to proxy 198\.51\.100\.2\): traffic arriving there is not intercepted/m, r.stdout);
    assert.match(r.stdout, /^\t\tiifname \{ "wan0" \} return$/m, r.stdout);
    // --lan naming it: intercepted, and said so.
    const named = await lab.transgate(['rules', '--lan', 'lan0,wan0'], proxyEnv());
    assert.match(named.stdout, /uplink wan0 .* is intercepted, --lan names it/, named.stdout);
  });

  describe('with forwarding paths', () => {
    before(async () => {
      await must('gw', ['ip', '-batch', '-'], 'route add default via 198.51.100.2\nroute add default via 2001:db8:2::2\n');
      await must('in', ['ip', '-batch', '-'], 'route add default via 203.0.113.1\nroute add default via 2001:db8:3::1\n');
      await must('up', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      // The WAN host: an address of up whose traffic to the origin's subnet is routed via gw.
      await must(
        'up',
        ['ip', '-batch', '-'],
        [
          `addr add ${WAN_HOST.v4}/24 dev eth0`,
          `addr add ${WAN_HOST.v6}/64 dev eth0 nodad`,
          `rule add from ${WAN_HOST.v4} lookup 77`,
          `route add 203.0.113.0/24 via ${ADDR.gwWan.v4} table 77`,
          '',
        ].join('\n'),
      );
      await must('up', ['ip', '-6', 'rule', 'add', 'from', WAN_HOST.v6, 'lookup', '77']);
      await must('up', ['ip', '-6', 'route', 'add', '2001:db8:3::/64', 'via', ADDR.gwWan.v6, 'table', '77']);
      await must('cl', ['ip', 'addr', 'add', `${CL_OTHER}/24`, 'dev', 'eth0']);
      // A UDP echo on the origin's port 53: what reaches it was forwarded un-intercepted.
      lab.spawn('in', ['socat', `UDP4-RECVFROM:53,bind=${O4},fork,reuseaddr`, 'SYSTEM:cat']);
      for (let i = 0; i < 50 && !(await lab.exec('in', ['ss', '-Hlnu', 'sport = :53'])).stdout.trim(); i++)
        await new Promise((r) => setTimeout(r, 100));
    });

    // A failed case must not leave its gateway, rules or ip_forward=0 to the next.
    afterEach(async () => {
      if (gw) await gw.kill9();
      gw = undefined;
      await lab.transgate(['clear']);
      await must('gw', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    });

    // Without the uplink exclusion every interface but lo was intercepted: the WAN host used the proxy and the DNS as gw.
    test('(a) a host on the uplink that routes via gw is not intercepted, its DNS query to gw is not answered; the LAN client still is', async () => {
      const g = await start([]);
      const mark = g.mark();
      const squidFrom = await lab.squidMark();
      for (const url of [
        `http://${O4}${uniq('wan80')}`,
        `https://${O4}${uniq('wan443')}`,
        `http://[${ADDR.origin.v6}]${uniq('wan80v6')}`,
      ]) {
        const r = await curl('up', url, url.includes('[') ? WAN_HOST.v6 : WAN_HOST.v4);
        // Forwarded as by any router: it reaches the origin itself.
        assert.equal(r.code, 0, `${url}: ${show(r)}`);
        assert.ok(originSaw(new URL(url).pathname), `${url}: the origin did not see it`);
      }
      assert.equal(
        await dnsAnswer('up', ADDR.gwWan.v4, { from: WAN_HOST.v4 }),
        undefined,
        'transgate answered a DNS query from the uplink',
      );
      assert.equal(
        await dnsAnswer('up', ADDR.gwWan.v6, { from: WAN_HOST.v6 }),
        undefined,
        'transgate answered a DNS query from the uplink (IPv6)',
      );
      const lan = await curl('cl', `http://${O4}${uniq('lan')}`);
      assert.equal(lan.code, 0, show(lan));
      assert.match(lan.stdout, /origin host=/);
      assert.ok(await dnsAnswer('cl', ADDR.gwLan.v4), 'the LAN client got no DNS answer');
      await g.waitFor(/\bconn id=\S+ kind=http client=192\.0\.2\.2:/, 5000, mark);
      const since = g.linesSince(mark);
      assert.deepEqual(
        since.filter((l) => l.includes(WAN_HOST.v4) || l.includes(WAN_HOST.v6)),
        [],
        'the gateway saw the WAN host',
      );
      const squid = await lab.squidLogSince(squidFrom);
      assert.ok(
        squid.some((l) => /\/lan-/.test(l)),
        squid.join('\n'),
      );
      assert.deepEqual(
        squid.filter((l) => /wan/.test(l) || l.includes(`${O4}:443`)),
        [],
        'squid saw the WAN host',
      );
      assert.ok(
        g.lines.some((l) =>
          /uplink wan0 \(IPv4 default route, IPv6 default route, route to proxy 198\.51\.100\.2\): traffic arriving there is not intercepted/.test(
            l,
          ),
        ),
        g.output(),
      );
      await stopAndClear();
    });

    // Without --clients in the rules, 192.0.2.3 was intercepted like 192.0.2.2.
    test('(b) --clients: a source not listed is forwarded, not intercepted; the listed one is', async () => {
      const g = await start(['--clients', '192.0.2.2,2001:db8:1::2']);
      const mark = g.mark();
      const other = uniq('other');
      const r = await curl('cl', `http://${O4}${other}`, CL_OTHER);
      assert.equal(r.code, 0, show(r));
      assert.ok(originSaw(other), 'the unlisted source did not reach the origin by forwarding');
      assert.equal(await dnsAnswer('cl', ADDR.gwLan.v4, { from: CL_OTHER }), undefined, 'transgate answered DNS for an unlisted source');
      const listed = await curl('cl', `http://${O4}${uniq('listed')}`, ADDR.client.v4);
      assert.equal(listed.code, 0, show(listed));
      await g.waitFor(/\bconn id=\S+ kind=http client=192\.0\.2\.2:/, 5000, mark);
      assert.deepEqual(
        g.linesSince(mark).filter((l) => l.includes(CL_OTHER)),
        [],
        'the gateway saw the unlisted source',
      );
      await stopAndClear();
    });

    // The premise of --fail-closed, on nftables: with the rules left and no listener, tproxy does not
    // match (NFT_BREAK) and the client's connection is forwarded un-proxied. Passes with or without the change.
    test('(c0) fail-open: after SIGKILL without --fail-closed the left rules do not stop forwarding (nft tproxy without a socket)', async () => {
      const g = await start([]);
      await g.kill9();
      gw = undefined;
      assert.ok(await tableThere('nftables'), 'a crashed run leaves its table');
      const u = uniq('open');
      const r = await curl('cl', `http://${O4}${u}`);
      assert.equal(r.code, 0, show(r));
      assert.ok(originSaw(u), 'the client reached the origin un-proxied');
      assert.equal(await udpProbe(O4), 'reply', 'UDP to port 53 was not forwarded');
      await stopAndClear();
    });

    for (const firewall of ['nftables', 'iptables'] as const) {
      for (const mode of ['tproxy', 'redirect']) {
        // Without --fail-closed in the rules and in Gateway.close(), the client got the origin un-proxied.
        test(`(c) --fail-closed, ${firewall}, ${mode}: after SIGKILL and after SIGTERM the rules stay, clients are refused, the origin never sees them; clear removes them`, async () => {
          await must('gw', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0']);
          const args = ['--fail-closed', '--firewall', firewall, '--mode', mode];
          for (const how of ['SIGKILL', 'SIGTERM'] as const) {
            const g = await start(args);
            const ok = await curl('cl', `http://${O4}${uniq('up')}`);
            assert.equal(ok.code, 0, `while running: ${show(ok)}`);
            const code = how === 'SIGKILL' ? await g.kill9() : await g.stop('SIGTERM', 8000);
            gw = undefined;
            if (how === 'SIGTERM') {
              assert.equal(code, 0, g.output());
              assert.ok(
                g.lines.some((l) => /leaving rules and sysctls in place \(--fail-closed\)/.test(l)),
                g.output(),
              );
            }
            assert.ok(await tableThere(firewall), `${how}: the rules are gone`);
            assert.equal(
              (await must('gw', ['sysctl', '-n', 'net.ipv4.ip_forward'])).trim(),
              '1',
              `${how}: forwarding was turned off again`,
            );
            for (const [scheme, port] of [
              ['http', 80],
              ['https', 443],
            ] as const) {
              const u = uniq(`closed-${scheme}`);
              const r = await curl('cl', `${scheme}://${O4}${u}`, undefined, 2);
              assert.notEqual(r.code, 0, `${how} ${scheme}: the client got through: ${show(r)}`);
              assert.equal(originSaw(u), false, `${how} ${scheme}: the origin saw the client un-proxied`);
              const p = await connectProbe(O4, port);
              // iptables' TPROXY drops what finds no socket (xt_TPROXY): a timeout, never a reset.
              if (firewall === 'iptables' && mode === 'tproxy') assert.equal(p.result, 'timeout', `${how} ${scheme}: ${JSON.stringify(p)}`);
              else assert.ok(p.result === 'refused' && p.ms < 1000, `${how} ${scheme}: not a quick reset: ${JSON.stringify(p)}`);
            }
            // in echoes UDP on 53: a reply would mean the query was forwarded un-intercepted.
            const dns = await udpProbe(O4);
            assert.equal(dns, firewall === 'iptables' && mode === 'tproxy' ? 'timeout' : 'refused', `${how}: UDP to port 53`);
            if (how === 'SIGKILL') {
              // A new start replaces the leftovers and serves again.
              const again = await start(args);
              const r = await curl('cl', `http://${O4}${uniq('again')}`);
              assert.equal(r.code, 0, `after restart: ${show(r)}`);
              await again.kill9();
              gw = undefined;
            }
            const c = await lab.transgate(['clear']);
            assert.equal(c.code, 0, show(c));
            assert.equal(await tableThere(firewall), false, `${how}: clear left rules`);
            assert.equal(
              (await must('gw', ['sysctl', '-n', 'net.ipv4.ip_forward'])).trim(),
              '0',
              `${how}: clear did not restore ip_forward`,
            );
          }
        });
      }
    }

    // Without the input rule the DNS listener on every address answered anyone at 192.0.2.1:3153 (an open resolver).
    for (const firewall of ['nftables', 'iptables'] as const) {
      test(`(d) redirect mode, ${firewall}: a direct query to the listener port gets no answer; port 53 and --local still work`, async () => {
        const g = await start(['--mode', 'redirect', '--local', '--firewall', firewall]);
        assert.equal(await dnsAnswer('cl', ADDR.gwLan.v4, { port: 3153 }), undefined, 'the DNS listener answered a direct query');
        assert.equal(await dnsAnswer('cl', ADDR.gwLan.v6, { port: 3153 }), undefined, 'the DNS listener answered a direct query (IPv6)');
        assert.ok(await dnsAnswer('cl', ADDR.gwLan.v4), 'a redirected query got no answer');
        const mark = g.mark();
        const u = uniq('local');
        const r = await curl('gw', `http://${O4}${u}`);
        assert.equal(r.code, 0, show(r));
        const line = await g.waitFor(/\bconn id=\S+ kind=http /, 5000, mark);
        assert.equal(parseKv(line).route, 'proxy', line);
        await stopAndClear();
      });
    }
  });
});

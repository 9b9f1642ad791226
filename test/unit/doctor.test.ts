import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { GatewayError } from '../../src/core/errors';
import { openTunnel } from '../../src/outbound/http-connect';
import { parseArgs } from '../../src/config/flags';
import { buildConfig } from '../../src/config/config';
import { _internal, formatChecks, neighbourOf, runDoctor, type DoctorDeps } from '../../src/cli/doctor';
import { sysctlKey } from '../../src/netfilter/sysctl';

function cfgOf(argv: string[], env: Record<string, string> = {}) {
  return buildConfig(parseArgs(['doctor', ...argv]).values, env);
}

function deps(values: Record<string, string>, root = false): DoctorDeps {
  return {
    runner: async () => ({ code: 1, stdout: '', stderr: 'not in unit tests' }),
    readSysctl: (p) => values[sysctlKey(p)],
    isRoot: () => root,
    runningTransgate: () => [],
    timeoutMs: 500,
  };
}

describe('doctor', () => {
  it('sysctls: forwarding off is a FAIL with the command that fixes it; redirects on a WARN', () => {
    const checks = _internal.checkSysctls(
      cfgOf(['--lan', 'lan0']),
      deps({
        'net.ipv4.ip_forward': '0',
        'net.ipv6.conf.all.forwarding': '1',
        'net.ipv4.conf.all.send_redirects': '0',
        'net.ipv4.conf.lan0.send_redirects': '1',
        'net.ipv4.conf.all.rp_filter': '1',
      }),
    );
    const fwd = checks.find((c) => c.message.startsWith('net.ipv4.ip_forward'))!;
    assert.equal(fwd.status, 'FAIL');
    assert.match(fwd.fix!, /sysctl -w net\.ipv4\.ip_forward=1/);
    const red = checks.find((c) => c.message.startsWith('send_redirects'))!;
    assert.equal(red.status, 'WARN');
    assert.match(red.fix!, /net\.ipv4\.conf\.lan0\.send_redirects=0/);
    assert.equal(checks.find((c) => c.message.startsWith('net.ipv6'))!.status, 'OK');
  });

  it('parses --doctor-target, refusing what is not host:port', () => {
    assert.deepEqual(_internal.splitTarget('example.com:443'), { host: 'example.com', port: 443 });
    assert.deepEqual(_internal.splitTarget('[2001:db8::1]:8443'), { host: '2001:db8::1', port: 8443 });
    for (const bad of ['example.com', 'x:0', 'x:70000', ':443']) assert.equal(_internal.splitTarget(bad), undefined, bad);
  });

  it('without privileges: FAIL first, no kernel/leftover probing, never throws; output has a fix line per problem', async () => {
    const checks = await runDoctor(
      cfgOf(['--doctor-target', 'nonsense']),
      deps({ 'net.ipv4.ip_forward': '1', 'net.ipv6.conf.all.forwarding': '1' }),
    );
    assert.equal(checks[0]!.name, 'privileges');
    assert.equal(checks[0]!.status, 'FAIL');
    assert.ok(!checks.some((c) => c.name === 'kernel' || c.name === 'leftovers'));
    const text = formatChecks(checks);
    assert.match(text, /^FAIL  privileges: .*\n      fix: run as root/m);
    assert.match(text, /\d+ FAIL, \d+ WARN, \d+ OK\n$/);
  });
});

describe('doctor: bridge mode', () => {
  it('br_netfilter calling iptables is a FAIL with --no-sysctl, a WARN otherwise, OK when off', () => {
    const vals = { 'net.ipv4.ip_forward': '1', 'net.bridge.bridge-nf-call-iptables': '1' };
    const pick = (argv: string[], v: Record<string, string>) =>
      _internal.checkSysctls(cfgOf(['--bridge', 'br0', '--no-ipv6', ...argv]), deps(v)).find((c) => c.message.includes('bridge'))!;
    assert.equal(pick(['--no-sysctl'], vals).status, 'FAIL');
    assert.match(pick(['--no-sysctl'], vals).fix!, /bridge-nf-call-iptables=0/);
    assert.equal(pick([], vals).status, 'WARN');
    assert.equal(pick([], { ...vals, 'net.bridge.bridge-nf-call-iptables': '0' }).status, 'OK');
    assert.equal(
      _internal.checkSysctls(cfgOf(['--bridge', 'br0', '--mode', 'redirect']), deps(vals)).some((c) => c.message.includes('bridge-nf')),
      false,
    );
  });
});

describe('neighbourOf: the address whose route shows where replies to clients go', () => {
  it('picks the first host of the subnet that is not ours', () => {
    assert.equal(neighbourOf('192.0.2.1', 24, 4), '192.0.2.2');
    assert.equal(neighbourOf('192.0.2.7', 24, 4), '192.0.2.1');
    assert.equal(neighbourOf('10.1.2.3', 8, 4), '10.0.0.1');
    assert.equal(neighbourOf('2001:db8:1::1', 64, 6), '2001:db8:1::2');
    assert.equal(neighbourOf('fd00:1:2:3:4:5:6:7', 64, 6), 'fd00:1:2:3::1');
    // Prefixes that are not a multiple of 16 bits: a /56 LAN was not checked at all before.
    assert.equal(neighbourOf('2001:db8:0:ff01::1', 56, 6), '2001:db8:0:ff00::1');
    assert.equal(neighbourOf('2001:db8::1', 56, 6), '2001:db8::2');
    assert.equal(neighbourOf('192.0.2.130', 25, 4), '192.0.2.129');
  });
  it('has nothing to look up for host routes and point-to-point links', () => {
    assert.equal(neighbourOf('192.0.2.1', 32, 4), undefined);
    assert.equal(neighbourOf('192.0.2.1', 31, 4), undefined);
    assert.equal(neighbourOf('2001:db8::1', 127, 6), undefined);
    assert.equal(neighbourOf('not an address', 24, 4), undefined);
  });
});

describe('doctor: uplink', () => {
  /** A runner that answers the uplink look-ups: `uplink` holds the default route, `links` are the interfaces. */
  const routes =
    (uplink: string, links: string[]): DoctorDeps['runner'] =>
    async (argv) => {
      const cmd = argv.join(' ');
      if (cmd === 'ip -j -4 route show default') return { code: 0, stdout: JSON.stringify([{ dst: 'default', dev: uplink }]), stderr: '' };
      if (cmd === 'ip -j link show')
        return { code: 0, stdout: JSON.stringify(links.map((ifname) => ({ ifname, flags: ['UP'] }))), stderr: '' };
      return { code: 0, stdout: '[]', stderr: '' };
    };
  const check = async (argv: string[], uplink: string, links: string[]) =>
    (await _internal.checkUplink(cfgOf(['--no-ipv6', ...argv]), { ...deps({}), runner: routes(uplink, links) }))[0]!;

  it('an intercepted uplink is a WARN naming --clients: one-armed, or named by --lan', async () => {
    const one = await check([], 'eth0', ['eth0']);
    assert.equal(one.status, 'WARN');
    assert.match(one.message, /uplink eth0 \(IPv4 default route\) is intercepted, it is the only interface/);
    assert.match(one.fix!, /--clients/);
    const named = await check(['--lan', 'lan0,wan0'], 'wan0', ['lan0', 'wan0']);
    assert.equal(named.status, 'WARN');
    assert.match(named.fix!, /leave wan0 out of --lan/);
  });

  it('OK when the uplink is excluded, or --clients limits who is intercepted', async () => {
    const two = await check([], 'wan0', ['lan0', 'wan0']);
    assert.equal(two.status, 'OK');
    assert.match(two.message, /wan0 \(IPv4 default route\): traffic arriving there is not intercepted/);
    assert.equal((await check(['--clients', '192.0.2.0/24'], 'eth0', ['eth0'])).status, 'OK');
  });
});

/**
 * doctor's CONNECT check reports a failure in the gateway's own words (the
 * one table, outbound/failures.ts): it used to say `407, the proxy rejects
 * the credentials` where the access log said TG_ERR_UPSTREAM_407 with
 * another text, so the two could not be matched up.
 */
describe('doctor proxy check: the same code and message as the gateway', () => {
  async function scriptedProxy(answer: string): Promise<{ port: number; close(): Promise<void> }> {
    const conns = new Set<net.Socket>();
    const server = net.createServer((s) => {
      conns.add(s);
      s.on('error', () => {});
      s.once('data', () => s.write(answer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return {
      port: (server.address() as net.AddressInfo).port,
      close: () => {
        for (const c of conns) c.destroy();
        return new Promise<void>((r) => server.close(() => r()));
      },
    };
  }

  for (const [what, answer, code] of [
    ['403', 'HTTP/1.1 403 Forbidden\r\n\r\n', 'TG_ERR_UPSTREAM_403'],
    ['407', 'HTTP/1.1 407 Proxy Authentication Required\r\n\r\n', 'TG_ERR_UPSTREAM_407'],
    ['not HTTP', 'SSH-2.0-x\r\n\r\n', 'TG_ERR_UPSTREAM_PROTOCOL'],
  ] as const) {
    it(`a ${what} answer to CONNECT: FAIL with openTunnel's message and ${code}`, async () => {
      const p = await scriptedProxy(answer);
      try {
        const url = `http://127.0.0.1:${p.port}`;
        const checks = await _internal.checkProxy(cfgOf(['--doctor-target', 'a.example:443'], { http_proxy: url }), deps({}));
        const failed = checks.find((c) => c.status === 'FAIL');
        const e = await openTunnel({ proxy: parseProxyUrl(url), host: 'a.example', port: 443, timeoutMs: 500 }).then(
          (s) => s.destroy(),
          (err: unknown) => err,
        );
        assert.ok(e instanceof GatewayError && e.code === code, String(e));
        assert.equal(failed?.message, `http_proxy: ${e.message} (${e.code})`);
      } finally {
        await p.close();
      }
    });
  }

  it('a proxy that refuses the TCP connection: FAIL with the dial error of the table', async () => {
    const p = await scriptedProxy('');
    await p.close();
    const checks = await _internal.checkProxy(
      cfgOf(['--doctor-target', 'a.example:443'], { http_proxy: `http://127.0.0.1:${p.port}` }),
      deps({}),
    );
    const failed = checks.find((c) => c.status === 'FAIL');
    assert.equal(
      failed?.message,
      `http_proxy: proxy http://127.0.0.1:${p.port}: ECONNREFUSED (TG_ERR_UPSTREAM_UNREACHABLE): cannot connect to 127.0.0.1:${p.port}`,
    );
  });
});

/**
 * Who may use the gateway, in the planned rules of both backends: uplinks
 * excluded, --clients by source, --fail-closed's forward reject, redirect
 * mode's guard on the listener ports. And the uplink look-up that feeds them.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../src/config/config';
import { parseArgs } from '../../src/config/flags';
import { rulesConfigFor } from '../../src/netfilter/backend';
import type { ExecResult, Runner } from '../../src/netfilter/exec';
import { jumpDeletes, planIptables } from '../../src/netfilter/iptables';
import { plan, type RulesConfig } from '../../src/netfilter/plan';
import { detectUplinks, judgeUplinks, parseLinks, parseRouteDevs, type HostRoutes } from '../../src/netfilter/uplink';
import { rulesConfig } from '../support/rules-config';

const DNS_AND_HTTP: Partial<RulesConfig> = {
  tcp: [
    { ports: [80], listenPort: 3180 },
    { ports: [53], listenPort: 3153, allDestinations: true },
  ],
  udp: [{ ports: [53], listenPort: 3153, allDestinations: true }],
  bypass4: ['10.0.0.0/8'],
  bypass6: ['fc00::/7'],
};

/** The trimmed body of one nft chain (head line included). */
function nftChain(script: string, name: string): string[] | undefined {
  const m = new RegExp(`\\tchain ${name} \\{\\n([\\s\\S]*?)\\n\\t\\}`).exec(script);
  return m ? m[1]!.split('\n').map((l) => l.trim()) : undefined;
}

function lines(text: string | undefined): string[] {
  return (text ?? '').trimEnd().split('\n');
}

describe('nftables plan: uplinks', () => {
  // Without it every interface but lo was intercepted: a WAN host routing via the gateway used its proxy and DNS.
  it('excludes the uplinks before anything is intercepted, and from the QUIC reject', () => {
    const p = plan(rulesConfig({ ...DNS_AND_HTTP, uplinks: ['wan0', 'lo'], rejectQuic: true }));
    const pre = nftChain(p.nftScript, 'prerouting')!;
    assert.deepEqual(pre.slice(0, 3), [
      'type filter hook prerouting priority mangle; policy accept;',
      'iifname { "wan0" } return',
      'iifname "lo" return',
    ]);
    assert.deepEqual(nftChain(p.nftScript, 'quic_forward')!.slice(1, 3), ['iifname { "wan0" } return', 'iifname "lo" return']);
    assert.match(p.summary, /never intercepted: traffic arriving on the uplink wan0/);
  });

  it('bridge mode never excludes the bridge itself; no uplinks, no rule', () => {
    const p = plan(rulesConfig({ uplinks: ['br0'], bridge: { name: 'br0', mac: '02:00:00:00:00:01' } }));
    assert.ok(!p.nftScript.includes('iifname { "br0" } return'), p.nftScript);
    assert.ok(!plan(rulesConfig()).nftScript.includes('iifname {'));
  });
});

describe('nftables plan: --clients', () => {
  // Without it every source on the LAN was intercepted.
  it('sets of the allowed sources; other sources leave the chain before interception', () => {
    const p = plan(
      rulesConfig({
        ...DNS_AND_HTTP,
        clients4: ['192.0.2.2', '192.0.2.0/25'],
        clients6: ['2001:db8:1::/64'],
        rejectQuic: true,
        failClosed: true,
      }),
    );
    assert.match(
      p.nftScript,
      /set clients4 \{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\t\telements = \{ 192\.0\.2\.2\/32, 192\.0\.2\.0\/25 \}/,
    );
    assert.match(p.nftScript, /set clients6 \{[^}]*elements = \{ 2001:db8:1::\/64 \}/);
    const pre = nftChain(p.nftScript, 'prerouting')!;
    const i = pre.indexOf('ip saddr != @clients4 return');
    assert.ok(i > 0 && pre[i + 1] === 'ip6 saddr != @clients6 return', pre.join('\n'));
    assert.ok(i < pre.findIndex((l) => l.includes('tproxy')), 'the source check must come before the first tproxy rule');
    for (const c of ['quic_forward', 'closed_forward']) assert.ok(nftChain(p.nftScript, c)!.includes('ip saddr != @clients4 return'), c);
    assert.match(p.summary, /only these sources are intercepted \(--clients\): 192\.0\.2\.2\/32, 192\.0\.2\.0\/25, 2001:db8:1::\/64/);
  });

  it('IPv4 clients only: the IPv6 set is empty, so no IPv6 source is intercepted', () => {
    const p = plan(rulesConfig({ clients4: ['192.0.2.0/24'] }));
    assert.match(p.nftScript, /set clients6 \{\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\tauto-merge\n\t\}/);
    assert.ok(nftChain(p.nftScript, 'prerouting')!.includes('ip6 saddr != @clients6 return'));
    assert.match(p.summary, /no IPv6 source is/);
  });

  it("--local: this host's own connections (in on lo) are no client's and are not checked", () => {
    const pre = nftChain(plan(rulesConfig({ clients4: ['192.0.2.0/24'], local: true, socketMark: 0x7468 })).nftScript, 'prerouting')!;
    assert.ok(pre.includes('iifname != "lo" ip saddr != @clients4 return'), pre.join('\n'));
  });

  it('bridge mode: other sources are bridged, not taken up to IP', () => {
    const p = plan(rulesConfig({ ipv6: false, clients4: ['192.0.2.0/24'], bridge: { name: 'br0', mac: '02:00:00:00:00:01' } }));
    const bridge = p.nftScript.slice(p.nftScript.indexOf('table bridge transgate {'));
    assert.match(bridge, /set clients4 \{[^}]*elements = \{ 192\.0\.2\.0\/24 \}/);
    assert.match(bridge, /\t\tether type ip ip saddr != @clients4 return\n\t\tether type ip ip daddr @bypass4 return/);
  });

  it('a bad CIDR is a CONFIG error naming clients', () => {
    assert.throws(() => plan(rulesConfig({ clients4: ['192.0.2.0/33'] })), /clients4 entry/);
  });
});

describe('nftables plan: --fail-closed', () => {
  // nft's tproxy does not match when no socket listens (NFT_BREAK): with the rules left, the packet was forwarded un-proxied.
  it('a forward chain rejects what interception matches: every-destination ports first, then the bypass, then the rest', () => {
    const p = plan(
      rulesConfig({ ...DNS_AND_HTTP, uplinks: ['wan0'], clients4: ['192.0.2.0/24'], clients6: ['2001:db8:1::/64'], failClosed: true }),
    );
    assert.deepEqual(nftChain(p.nftScript, 'closed_forward'), [
      'type filter hook forward priority filter; policy accept;',
      'iifname { "wan0" } return',
      'iifname "lo" return',
      'ip saddr != @clients4 return',
      'ip6 saddr != @clients6 return',
      'tcp dport { 53 } reject with tcp reset',
      'udp dport { 53 } reject with icmpx type port-unreachable',
      'ip daddr @bypass4 return',
      'ip6 daddr @bypass6 return',
      'tcp dport { 80 } reject with tcp reset',
    ]);
    assert.match(p.summary, /fail-closed: the rules stay/);
  });

  it('limited to the LAN interfaces and one family when so configured; absent without --fail-closed', () => {
    const p = plan(rulesConfig({ ipv6: false, lanInterfaces: ['lan0'], failClosed: true }));
    const c = nftChain(p.nftScript, 'closed_forward')!;
    assert.equal(c[1], 'iifname != { "lan0" } return');
    assert.equal(c.at(-1), 'meta nfproto ipv4 tcp dport { 22, 80, 443 } reject with tcp reset');
    assert.equal(nftChain(plan(rulesConfig()).nftScript, 'closed_forward'), undefined);
  });
});

describe('nftables plan: redirect mode guards the listener ports', () => {
  // The listeners bind every address under REDIRECT: UDP 3153 answered anyone who sent to it (an open resolver).
  it('an input chain drops what no redirect rule sent to a listener port (both protocols, both families)', () => {
    const p = plan(rulesConfig({ ...DNS_AND_HTTP, mode: 'redirect' }));
    assert.deepEqual(nftChain(p.nftScript, 'listeners_input'), [
      'type filter hook input priority filter; policy accept;',
      'meta l4proto { tcp, udp } th dport { 3153, 3180 } ct direction original ct status & dnat == 0 drop',
    ]);
    assert.equal(
      nftChain(plan(rulesConfig(DNS_AND_HTTP)).nftScript, 'listeners_input'),
      undefined,
      'tproxy listeners bind loopback: no guard needed',
    );
  });
});

describe('iptables plan: uplinks, --clients, --fail-closed, redirect guard', () => {
  it('uplinks return first in every chain that intercepts or rejects', () => {
    const p = planIptables(rulesConfig({ ...DNS_AND_HTTP, uplinks: ['wan0', 'eth*'], rejectQuic: true, failClosed: true, ipv6: false }));
    const l = lines(p.restore4);
    const first = (chain: string): string[] => l.filter((x) => x.startsWith(`-A ${chain} `)).slice(0, 2);
    for (const chain of ['TRANSGATE', 'TRANSGATE_QUIC', 'TRANSGATE_CLOSED']) {
      assert.deepEqual(first(chain), [`-A ${chain} -i wan0 -j RETURN`, `-A ${chain} -i eth+ -j RETURN`], chain);
    }
    assert.ok(l.includes('-A PREROUTING ! -i lo -j TRANSGATE'));
    const r = lines(planIptables(rulesConfig({ mode: 'redirect', uplinks: ['wan0'], ipv6: false })).restore4);
    assert.equal(r[r.indexOf('*nat') + 2], '-A TRANSGATE -i wan0 -j RETURN');
  });

  it('--clients: one jump per LAN interface and CIDR; none for a family without CIDRs', () => {
    const p = planIptables(rulesConfig({ lanInterfaces: ['lan0', 'br-*'], clients4: ['192.0.2.2', '192.0.2.0/24'], rejectQuic: true }));
    const jumps = lines(p.restore4).filter((x) => x.startsWith('-A PREROUTING'));
    assert.deepEqual(jumps, [
      '-A PREROUTING -i lan0 -s 192.0.2.2/32 -j TRANSGATE',
      '-A PREROUTING -i lan0 -s 192.0.2.0/24 -j TRANSGATE',
      '-A PREROUTING -i br-+ -s 192.0.2.2/32 -j TRANSGATE',
      '-A PREROUTING -i br-+ -s 192.0.2.0/24 -j TRANSGATE',
    ]);
    assert.ok(lines(p.restore4).includes('-A FORWARD -i lan0 -s 192.0.2.0/24 -j TRANSGATE_QUIC'));
    assert.deepEqual(
      lines(p.restore6).filter((x) => /^-A (PREROUTING|FORWARD)/.test(x)),
      [],
      'no IPv6 source may use the gateway',
    );
  });

  // xt_TPROXY drops without a socket and REDIRECT meets a closed port; this chain covers what is still forwarded.
  it('--fail-closed: a filter chain inserted first in FORWARD rejects with resets and port-unreachable', () => {
    const p = planIptables(rulesConfig({ ...DNS_AND_HTTP, failClosed: true }));
    const c = lines(p.restore4).filter((x) => x.includes('TRANSGATE_CLOSED'));
    assert.deepEqual(c, [
      ':TRANSGATE_CLOSED - [0:0]',
      '-A TRANSGATE_CLOSED -p tcp -m multiport --dports 53 -j REJECT --reject-with tcp-reset',
      '-A TRANSGATE_CLOSED -p udp -m multiport --dports 53 -j REJECT --reject-with icmp-port-unreachable',
      '-A TRANSGATE_CLOSED -d 10.0.0.0/8 -j RETURN',
      '-A TRANSGATE_CLOSED -p tcp -m multiport --dports 80 -j REJECT --reject-with tcp-reset',
      '-I FORWARD ! -i lo -j TRANSGATE_CLOSED',
    ]);
    assert.ok(
      lines(p.restore6).includes('-A TRANSGATE_CLOSED -p udp -m multiport --dports 53 -j REJECT --reject-with icmp6-port-unreachable'),
    );
    assert.match(p.summary, /TPROXY with no listener drops, so clients time out/);
    assert.ok(!(planIptables(rulesConfig()).restore4 ?? '').includes('TRANSGATE_CLOSED'));
  });

  it('redirect: INPUT drops what no REDIRECT sent to a listener port; revert finds the jump', () => {
    const p = planIptables(rulesConfig({ ...DNS_AND_HTTP, mode: 'redirect' }));
    const l = lines(p.restore6);
    assert.ok(
      l.includes('-A TRANSGATE_IN -p udp -m multiport --dports 3153,3180 -m conntrack --ctdir ORIGINAL ! --ctstate DNAT -j DROP'),
      l.join('\n'),
    );
    assert.ok(l.includes('-A TRANSGATE_IN -p tcp -m multiport --dports 3153,3180 -m conntrack --ctdir ORIGINAL ! --ctstate DNAT -j DROP'));
    assert.ok(l.includes('-I INPUT -j TRANSGATE_IN'));
    assert.ok(!(planIptables(rulesConfig(DNS_AND_HTTP)).restore4 ?? '').includes('TRANSGATE_IN'));
    assert.deepEqual(jumpDeletes('-P INPUT ACCEPT\n-A INPUT -j TRANSGATE_IN\n-A FORWARD ! -i lo -j TRANSGATE_CLOSED\n', 'INPUT'), [
      ['-D', 'INPUT', '-j', 'TRANSGATE_IN'],
    ]);
  });
});

describe('uplink detection', () => {
  it('parses route devices: single, multipath, local and lo skipped, garbage empty', () => {
    assert.deepEqual(parseRouteDevs('[{"dst":"default","gateway":"198.51.100.9","dev":"eth0","flags":[]}]'), ['eth0']);
    assert.deepEqual(parseRouteDevs('[{"dst":"default","nexthops":[{"gateway":"a","dev":"eth0"},{"gateway":"b","dev":"eth1"}]}]'), [
      'eth0',
      'eth1',
    ]);
    assert.deepEqual(parseRouteDevs('[{"type":"local","dst":"198.51.100.1","dev":"lo"}]'), []);
    assert.deepEqual(parseRouteDevs('not json'), []);
    assert.deepEqual(parseRouteDevs(''), []);
  });

  it('parses links: up, not lo, not a bridge port', () => {
    const json = JSON.stringify([
      { ifname: 'lo', flags: ['LOOPBACK', 'UP'] },
      { ifname: 'eth0', flags: ['BROADCAST', 'UP', 'LOWER_UP'] },
      { ifname: 'veth1', flags: ['UP'], master: 'docker0' },
      { ifname: 'docker0', flags: ['NO-CARRIER', 'UP'] },
      { ifname: 'wlan0', flags: ['BROADCAST'] },
    ]);
    assert.deepEqual(parseLinks(json), ['eth0', 'docker0']);
  });

  const host = (uplinks: string[], interfaces: string[]): HostRoutes => ({
    uplinks: uplinks.map((name) => ({ name, why: 'IPv4 default route' })),
    interfaces,
    notes: [],
  });

  it('two-armed: the uplink is excluded', () => {
    const j = judgeUplinks(host(['wan0'], ['lan0', 'wan0']), []);
    assert.deepEqual(j.excluded, ['wan0']);
    assert.deepEqual(j.intercepted, []);
  });

  it('one-armed (every interface an uplink) or an unknown interface list: nothing excluded, and said so', () => {
    const j = judgeUplinks(host(['eth0'], ['eth0']), []);
    assert.deepEqual(j.excluded, []);
    assert.match(j.intercepted[0]!.why, /one-armed/);
    assert.deepEqual(judgeUplinks(host(['eth0'], []), []).excluded, []);
  });

  it('--lan naming the uplink (also by prefix) intercepts it; otherwise --lan leaves it out already', () => {
    assert.deepEqual(
      judgeUplinks(host(['eth0'], ['eth0', 'eth1']), ['eth*']).intercepted.map((i) => i.why),
      ['--lan names it'],
    );
    const j = judgeUplinks(host(['wan0'], ['lan0', 'wan0']), ['lan0']);
    assert.deepEqual([j.excluded, j.intercepted], [[], []]);
  });

  it('bridge mode: the bridge is never an uplink', () => {
    assert.deepEqual(judgeUplinks(host(['br0'], ['br0', 'eth9']), [], 'br0').uplinks, []);
  });

  it('asks ip for the default routes and the route to each proxy address', async () => {
    const asked: string[] = [];
    const ok = (stdout: string): ExecResult => ({ code: 0, stdout, stderr: '' });
    const runner: Runner = async (argv) => {
      const cmd = argv.join(' ');
      asked.push(cmd);
      if (cmd === 'ip -j -4 route show default') return ok('[]');
      if (cmd === 'ip -j -6 route show default') return ok('[{"dst":"default","dev":"wan6"}]');
      if (cmd === 'ip -j route get 198.51.100.2') return ok('[{"dst":"198.51.100.2","dev":"wan0"}]');
      if (cmd === 'ip -j route get 203.0.113.9') return { code: 2, stdout: '', stderr: 'RTNETLINK answers: Network is unreachable' };
      if (cmd === 'ip -j link show')
        return ok('[{"ifname":"lan0","flags":["UP"]},{"ifname":"wan0","flags":["UP"]},{"ifname":"wan6","flags":["UP"]}]');
      throw new Error(`unexpected ${cmd}`);
    };
    const h = await detectUplinks({ proxyHosts: ['198.51.100.2', '203.0.113.9', '198.51.100.2'], ipv4: true, ipv6: true, runner });
    assert.deepEqual(h.uplinks, [
      { name: 'wan6', why: 'IPv6 default route' },
      { name: 'wan0', why: 'route to proxy 198.51.100.2' },
    ]);
    assert.deepEqual(h.interfaces, ['lan0', 'wan0', 'wan6']);
    assert.equal(asked.filter((c) => c === 'ip -j route get 198.51.100.2').length, 1, 'one look-up per proxy address');
  });

  it('rulesConfigFor passes the excluded uplinks, --clients and --fail-closed to the rules', () => {
    const cfg = buildConfig(parseArgs(['run', '--clients', '192.0.2.0/24,2001:db8:1::5', '--fail-closed']).values, {});
    const j = judgeUplinks(host(['wan0'], ['lan0', 'wan0']), []);
    const rc = rulesConfigFor(cfg, j);
    assert.deepEqual([rc.uplinks, rc.clients4, rc.clients6, rc.failClosed], [['wan0'], ['192.0.2.0/24'], ['2001:db8:1::5/128'], true]);
    assert.deepEqual(rulesConfigFor(cfg).uplinks, [], 'without a look-up nothing is excluded (revert, clear)');
  });
});

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, GatewayError } from '../../src/core/errors';
import { backendName } from '../../src/netfilter/backend';
import { iptablesBinaries, jumpDeletes, planIptables, renderIptablesPlan } from '../../src/netfilter/iptables';
import type { RulesConfig } from '../../src/netfilter/plan';
import { HTTP_AND_TLS, rulesConfig } from '../support/rules-config';

function cfg(over: Partial<RulesConfig> = {}): RulesConfig {
  return rulesConfig({ tcp: HTTP_AND_TLS, bypass4: ['10.0.0.0/8', '192.0.2.7'], bypass6: ['fc00::/7'], ...over });
}

function lines(text: string | undefined): string[] {
  return (text ?? '').trimEnd().split('\n');
}

describe('planIptables: tproxy', () => {
  it('mangle chains of our own, one jump from PREROUTING, TPROXY with the mark, policy routes', () => {
    const p = planIptables(cfg());
    assert.deepEqual(lines(p.restore4), [
      '*mangle',
      ':TRANSGATE - [0:0]',
      ':TRANSGATE_DIVERT - [0:0]',
      '-A TRANSGATE_DIVERT -j MARK --set-xmark 0x7467/0xffffffff',
      '-A TRANSGATE_DIVERT -j ACCEPT',
      '-A TRANSGATE -p tcp ! --syn -m socket --transparent -j TRANSGATE_DIVERT',
      '-A TRANSGATE -m addrtype --dst-type LOCAL -j RETURN',
      '-A TRANSGATE -d 10.0.0.0/8 -j RETURN',
      '-A TRANSGATE -d 192.0.2.7/32 -j RETURN',
      '-A TRANSGATE -p tcp -m multiport --dports 80 -j TPROXY --on-ip 127.0.0.1 --on-port 3180 --tproxy-mark 0x7467/0xffffffff',
      '-A TRANSGATE -p tcp -m multiport --dports 443 -j TPROXY --on-ip 127.0.0.1 --on-port 3143 --tproxy-mark 0x7467/0xffffffff',
      '-A PREROUTING ! -i lo -j TRANSGATE',
      'COMMIT',
    ]);
    assert.ok(lines(p.restore6).includes('-A TRANSGATE -d fc00::/7 -j RETURN'));
    assert.ok(lines(p.restore6).some((l) => l.includes('TPROXY --on-ip ::1 --on-port 3180')));
    assert.equal(p.routes.length, 2);
  });

  it('one jump per LAN interface; nft wildcards become iptables +', () => {
    const p = planIptables(cfg({ lanInterfaces: ['lan0', 'veth*'], ipv6: false }));
    const jumps = lines(p.restore4).filter((l) => l.startsWith('-A PREROUTING'));
    assert.deepEqual(jumps, ['-A PREROUTING -i lan0 -j TRANSGATE', '-A PREROUTING -i veth+ -j TRANSGATE']);
    assert.equal(p.restore6, undefined);
  });

  it('splits more than 15 ports into several multiport rules', () => {
    const ports = Array.from({ length: 20 }, (_, i) => 5000 + i);
    const p = planIptables(cfg({ tcp: [{ ports, listenPort: 3122 }], ipv6: false }));
    const tp = lines(p.restore4).filter((l) => l.includes('TPROXY'));
    assert.equal(tp.length, 2);
    assert.match(tp[0]!, /--dports 5000,5001,.*,5014 /);
    assert.match(tp[1]!, /--dports 5015,.*,5019 /);
  });

  it("--local: mangle OUTPUT marks our ports except transgate's own sockets; lo accepted when marked", () => {
    const l = lines(planIptables(cfg({ local: true, socketMark: 0x7468, ipv6: false })).restore4);
    assert.ok(l.includes('-A PREROUTING -i lo -m mark --mark 0x7467 -j TRANSGATE'));
    const out = l.filter((x) => x.startsWith('-A TRANSGATE_OUT'));
    assert.equal(out[0], '-A TRANSGATE_OUT -m mark --mark 0x7468 -j RETURN');
    assert.equal(out.at(-1), '-A TRANSGATE_OUT -p tcp -m multiport --dports 80,443 -j MARK --set-xmark 0x7467/0xffffffff');
    assert.ok(l.includes('-A OUTPUT -j TRANSGATE_OUT'));
  });
});

describe('planIptables: redirect, QUIC, masquerade', () => {
  it('nat REDIRECT, no policy routes; filter QUIC reject; nat masquerade', () => {
    const p = planIptables(
      cfg({ mode: 'redirect', rejectQuic: true, masquerade: ['wan0'], udp: [{ ports: [53], listenPort: 3153 }] }),
      'iptables-legacy',
    );
    const l4 = lines(p.restore4);
    assert.equal(p.routes.length, 0);
    assert.ok(!l4.includes('*mangle'));
    assert.ok(l4.includes('-A TRANSGATE -p tcp -m multiport --dports 80 -j REDIRECT --to-ports 3180'));
    assert.ok(l4.includes('-A TRANSGATE -p udp -m multiport --dports 53 -j REDIRECT --to-ports 3153'));
    assert.ok(l4.includes('-A TRANSGATE_POST -o wan0 -j MASQUERADE'));
    assert.ok(l4.includes('-A POSTROUTING -j TRANSGATE_POST'));
    assert.ok(l4.includes('-A TRANSGATE_QUIC -p udp --dport 443 -j REJECT --reject-with icmp-port-unreachable'));
    assert.ok(l4.includes('-A FORWARD ! -i lo -j TRANSGATE_QUIC'));
    assert.ok(lines(p.restore6).includes('-A TRANSGATE_QUIC -p udp --dport 443 -j REJECT --reject-with icmp6-port-unreachable'));
    const text = renderIptablesPlan(p);
    assert.match(text, /iptables-legacy-restore --noflush <<'EOF'/);
    assert.match(text, /ip6tables-legacy-restore --noflush <<'EOF'/);
  });

  it('refuses bad input with a config error', () => {
    const bad: Array<Partial<RulesConfig>> = [
      { mode: 'nat' as never },
      { ipv4: false, ipv6: false },
      { tcp: [], udp: [] },
      { tcp: [{ ports: [70000], listenPort: 1 }] },
      { lanInterfaces: ['bad name'] },
      { local: true, socketMark: 0x7467 },
    ];
    for (const b of bad) {
      assert.throws(
        () => planIptables(cfg(b)),
        (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
        JSON.stringify(b),
      );
    }
  });
});

describe('jumpDeletes', () => {
  it('finds every jump into our chains, however it is qualified', () => {
    const listing = [
      '-P PREROUTING ACCEPT',
      '-A PREROUTING -i eth9 -j OTHER',
      '-A PREROUTING ! -i lo -j TRANSGATE',
      '-A PREROUTING -i lo -m mark --mark 0x7467 -j TRANSGATE',
      '-A PREROUTING -j TRANSGATEWAY',
      '-A OUTPUT -j TRANSGATE_OUT',
    ].join('\n');
    assert.deepEqual(jumpDeletes(listing, 'PREROUTING'), [
      ['-D', 'PREROUTING', '!', '-i', 'lo', '-j', 'TRANSGATE'],
      ['-D', 'PREROUTING', '-i', 'lo', '-m', 'mark', '--mark', '0x7467', '-j', 'TRANSGATE'],
    ]);
    assert.deepEqual(jumpDeletes(listing, 'OUTPUT'), [['-D', 'OUTPUT', '-j', 'TRANSGATE_OUT']]);
  });
});

describe('backend choice', () => {
  it('auto prefers nftables, falls back to iptables, then iptables-legacy', () => {
    assert.equal(
      backendName({ firewall: 'auto' }, () => true),
      'nftables',
    );
    assert.equal(
      backendName({ firewall: 'auto' }, (b) => b === 'iptables'),
      'iptables',
    );
    assert.equal(
      backendName({ firewall: 'auto' }, (b) => b === 'iptables-legacy'),
      'iptables-legacy',
    );
    assert.equal(
      backendName({ firewall: 'iptables-legacy' }, () => true),
      'iptables-legacy',
    );
    assert.deepEqual(iptablesBinaries('iptables-legacy', 6), {
      cmd: 'ip6tables-legacy',
      restore: 'ip6tables-legacy-restore',
      save: 'ip6tables-legacy-save',
    });
  });
});

describe('planIptables: groups for every destination (DNS)', () => {
  for (const mode of ['tproxy', 'redirect'] as const) {
    it(`${mode}: port 53 before the LOCAL and bypass returns, port 80 after`, () => {
      const dns = { ports: [53], listenPort: 3153, allDestinations: true };
      const l = lines(planIptables(cfg({ mode, ipv6: false, tcp: [{ ports: [80], listenPort: 3180 }, dns], udp: [dns] })).restore4);
      const at = (re: RegExp): number => l.findIndex((x) => re.test(x));
      const local = at(/--dst-type LOCAL -j RETURN/);
      assert.ok(local > 0, l.join('\n'));
      assert.ok(at(/-p udp .*--dports 53 /) >= 0 && at(/-p udp .*--dports 53 /) < local, l.join('\n'));
      assert.ok(at(/-p tcp .*--dports 53 /) < local, l.join('\n'));
      assert.ok(at(/-p tcp .*--dports 80 /) > local, l.join('\n'));
    });
  }
});

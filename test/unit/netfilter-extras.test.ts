/** plan(): QUIC rejection, masquerade and --local (OUTPUT) rules. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, GatewayError } from '../../src/core/errors';
import { plan, type RulesConfig } from '../../src/netfilter/index';
import { HTTP_AND_TLS, rulesConfig } from '../support/rules-config';

function cfg(over: Partial<RulesConfig> = {}): RulesConfig {
  return rulesConfig({ tcp: HTTP_AND_TLS, ...over });
}

/** The body lines of one chain of a script, without tabs. */
function chain(script: string, name: string): string[] | undefined {
  const m = new RegExp(`\\tchain ${name} \\{\\n([\\s\\S]*?)\\n\\t\\}`).exec(script);
  return m ? m[1]!.split('\n').map((l) => l.trim()) : undefined;
}

describe('plan: QUIC', () => {
  it('rejects forwarded UDP/443 from clients except to bypassed destinations', () => {
    const p = plan(cfg({ rejectQuic: true, lanInterfaces: ['lan0'] }));
    assert.deepEqual(chain(p.nftScript, 'quic_forward'), [
      'type filter hook forward priority filter; policy accept;',
      'iifname != { "lan0" } return',
      'ip daddr @bypass4 return',
      'ip6 daddr @bypass6 return',
      'udp dport 443 reject',
    ]);
    assert.equal(chain(p.nftScript, 'quic_output'), undefined);
    assert.match(p.summary, /QUIC: UDP port 443 from clients is rejected/);
  });

  it('leaves QUIC alone without rejectQuic, and says so', () => {
    const p = plan(cfg());
    assert.equal(chain(p.nftScript, 'quic_forward'), undefined);
    assert.doesNotMatch(p.nftScript, /udp dport 443/);
    assert.match(p.summary, /QUIC: UDP port 443 is left alone/);
  });

  it('limits the reject to the one family enabled', () => {
    const p = plan(cfg({ rejectQuic: true, ipv6: false }));
    assert.ok(chain(p.nftScript, 'quic_forward')!.includes('meta nfproto ipv4 udp dport 443 reject'));
  });
});

describe('plan: masquerade', () => {
  it('adds a nat postrouting chain for the uplinks, both families', () => {
    const p = plan(cfg({ masquerade: ['wan0', 'wan1'] }));
    assert.deepEqual(chain(p.nftScript, 'postrouting'), [
      'type nat hook postrouting priority srcnat; policy accept;',
      'oifname { "wan0", "wan1" } masquerade',
    ]);
    assert.match(p.summary, /masquerade: forwarded traffic leaving wan0, wan1/);
  });

  it('rejects a bad interface name', () => {
    assert.throws(
      () => plan(cfg({ masquerade: ['wan 0'] })),
      (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
    );
  });

  it('has no postrouting chain without masquerade', () => {
    assert.equal(chain(plan(cfg()).nftScript, 'postrouting'), undefined);
  });
});

describe('plan: local', () => {
  it("tproxy: marks this host's own connections in a route chain, skips transgate's sockets, takes them in on lo", () => {
    const p = plan(cfg({ local: true, socketMark: 0x7468, rejectQuic: true }));
    assert.deepEqual(chain(p.nftScript, 'output'), [
      'type route hook output priority mangle; policy accept;',
      'meta mark 0x7468 return',
      'oifname "lo" return',
      'fib daddr type local return',
      'ip daddr @bypass4 return',
      'ip6 daddr @bypass6 return',
      'tcp dport { 80, 443 } meta mark set 0x7467',
    ]);
    const pre = chain(p.nftScript, 'prerouting')!;
    assert.equal(pre[1], 'iifname "lo" meta mark != 0x7467 return');
    assert.ok(!pre.includes('iifname "lo" return'));
    assert.ok(chain(p.nftScript, 'quic_output')!.includes('udp dport 443 reject'));
    assert.equal(p.routes.length, 2, 'the policy route carries the marked packets to lo');
  });

  it('tproxy with --lan: lo joins the accepted interfaces', () => {
    const pre = chain(plan(cfg({ local: true, socketMark: 9, lanInterfaces: ['lan0'] })).nftScript, 'prerouting')!;
    assert.equal(pre[1], 'iifname != { "lan0", "lo" } return');
    assert.equal(pre[2], 'iifname "lo" meta mark != 0x7467 return');
  });

  it('redirect: nat OUTPUT redirect per listener, skipping marked packets', () => {
    const p = plan(cfg({ mode: 'redirect', local: true, socketMark: 0x7468, ipv6: false }));
    assert.deepEqual(chain(p.nftScript, 'output'), [
      'type nat hook output priority -100; policy accept;',
      'meta mark 0x7468 return',
      'oifname "lo" return',
      'fib daddr type local return',
      'ip daddr @bypass4 return',
      'meta nfproto ipv4 tcp dport { 80 } redirect to :3180',
      'meta nfproto ipv4 tcp dport { 443 } redirect to :3143',
    ]);
    assert.equal(p.routes.length, 0);
  });

  it('needs a socket mark different from the fwmark', () => {
    for (const socketMark of [undefined, 0, 0x7467]) {
      assert.throws(
        () => plan(cfg({ local: true, socketMark })),
        (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
      );
    }
  });
});

describe('plan: bridge', () => {
  const bridge = { name: 'br0', mac: '02:00:00:00:00:01' };

  it('takes frames to the intercepted ports up to IP from the LAN ports only, bypass first', () => {
    const p = plan(cfg({ bridge, lanInterfaces: ['lan0'], ipv6: false, rejectQuic: true }));
    const m = /table bridge transgate \{[\s\S]*?\tchain prerouting \{\n([\s\S]*?)\n\t\}/.exec(p.nftScript);
    assert.ok(m, p.nftScript);
    assert.deepEqual(
      m[1]!.split('\n').map((l) => l.trim()),
      [
        'type filter hook prerouting priority -300; policy accept;',
        'iifname { "lan0" } ether type ip ip daddr @bypass4 return',
        'iifname { "lan0" } ether type ip tcp dport { 80, 443 } meta mark set 0x7467 meta pkttype set host ether daddr set 02:00:00:00:00:01 accept',
        'iifname { "lan0" } ether type ip udp dport 443 meta pkttype set host ether daddr set 02:00:00:00:00:01 accept',
      ],
    );
    assert.match(p.nftScript, /^table bridge transgate \{\}\ndelete table bridge transgate$/m);
    const pre = chain(p.nftScript, 'prerouting')!;
    assert.equal(pre[1], 'iifname "br0" meta mark != 0x7467 return', 'unmarked bridged traffic (br_netfilter) is left alone');
    assert.equal(pre[2], 'iifname != { "lan0", "br0" } return');
    assert.ok(chain(p.nftScript, 'quic_forward')!.includes('iifname != { "lan0", "br0" } return'));
    assert.deepEqual(p.bridge, bridge);
    assert.match(p.summary, /bridge br0: frames to the intercepted ports entering on lan0 are taken up to IP/);
  });

  it('no bridge table without --bridge; a bad MAC is a config error', () => {
    assert.doesNotMatch(plan(cfg()).nftScript, /bridge/);
    assert.throws(
      () => plan(cfg({ bridge: { name: 'br0', mac: 'nope' } })),
      (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
    );
  });
});

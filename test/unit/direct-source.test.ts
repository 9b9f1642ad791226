/**
 * --direct-source: the flag's validation and the rules it needs. The answers
 * to a direct connection made from the client's address are addressed to the
 * client and arrive on the uplink; the plans must mark them before any
 * interface check (the uplink returns first) and route them locally, in
 * redirect mode too (which had no policy routing).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildConfig } from '../../src/config/config';
import { parseArgs } from '../../src/config/flags';
import { GatewayError } from '../../src/core/errors';
import { planIptables } from '../../src/netfilter/iptables';
import { plan } from '../../src/netfilter/plan';
import { HTTP_AND_TLS, rulesConfig } from '../support/rules-config';

const env = { http_proxy: 'http://proxy.example:3128' };
const SOCKET_RULE = 'meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x7467 accept';

function configCode(args: string[]): string | undefined {
  try {
    buildConfig(parseArgs(args).values, env);
  } catch (err) {
    return err instanceof GatewayError ? err.code : 'not-a-gateway-error';
  }
  return undefined;
}

/** The trimmed lines of one nft chain. */
function chain(script: string, name: string): string[] {
  const start = script.indexOf(`\tchain ${name} {`);
  if (start < 0) return [];
  const end = script.indexOf('\n\t}', start);
  return script
    .slice(start, end)
    .split('\n')
    .slice(1)
    .map((l) => l.trim());
}

describe('--direct-source: config', () => {
  test('gateway by default, client when asked, anything else refused', () => {
    assert.equal(buildConfig(parseArgs([]).values, env).directSource, 'gateway');
    assert.equal(buildConfig(parseArgs(['--direct-source', 'client']).values, env).directSource, 'client');
    assert.equal(flagCode('clientip'), 'TG_ERR_FLAG');
    assert.equal(flagCode('client'), undefined);
  });

  // Made from this host's own sockets, --local's connections have no other client to come from.
  test('client with --local is refused at config time', () => {
    assert.equal(configCode(['--direct-source', 'client', '--local']), 'TG_ERR_CONFIG');
    assert.equal(configCode(['--direct-source', 'gateway', '--local']), undefined);
  });

  test('client with --masquerade is warned about: the SNAT gives the connections the gateway address again', () => {
    const cfg = buildConfig(parseArgs(['--direct-source', 'client', '--masquerade', 'wan0']).values, env);
    assert.ok(
      cfg.warnings.some((w) => w.includes('--direct-source client') && w.includes('wan0')),
      cfg.warnings.join('\n'),
    );
  });
});

function flagCode(value: string): string | undefined {
  try {
    parseArgs(['--direct-source', value]);
  } catch (err) {
    return err instanceof GatewayError ? err.code : 'not-a-gateway-error';
  }
  return undefined;
}

describe('--direct-source client: nftables plan', () => {
  test('tproxy: the socket mark comes before the uplink and LAN returns', () => {
    const p = plan(rulesConfig({ uplinks: ['wan0'], lanInterfaces: ['lan0'], transparentDirect: true }));
    const rules = chain(p.nftScript, 'prerouting');
    assert.deepEqual(rules.slice(0, 4), [
      'type filter hook prerouting priority mangle; policy accept;',
      SOCKET_RULE,
      'iifname { "wan0" } return',
      'iifname != { "lan0" } return',
    ]);
    assert.equal(rules.filter((r) => r === SOCKET_RULE).length, 1, 'one socket rule');
    assert.equal(p.routes.length, 2);
  });

  test('tproxy without it: the socket rule stays after the interface returns', () => {
    const rules = chain(plan(rulesConfig({ uplinks: ['wan0'], lanInterfaces: ['lan0'] })).nftScript, 'prerouting');
    assert.ok(rules.indexOf(SOCKET_RULE) > rules.indexOf('iifname { "wan0" } return'));
  });

  test('redirect: a mangle-priority divert chain and the policy routes', () => {
    const p = plan(rulesConfig({ mode: 'redirect', uplinks: ['wan0'], transparentDirect: true }));
    assert.deepEqual(chain(p.nftScript, 'divert'), ['type filter hook prerouting priority mangle; policy accept;', SOCKET_RULE]);
    assert.deepEqual(
      p.routes.map((r) => r.ruleArgs.join(' ')),
      ['-4 rule add fwmark 0x7467 lookup 7467 pref 7467', '-6 rule add fwmark 0x7467 lookup 7467 pref 7467'],
    );
    assert.match(p.summary, /--direct-source client/);
    // Without the flag redirect mode stays as it was: no chain, no routes.
    const plain = plan(rulesConfig({ mode: 'redirect' }));
    assert.deepEqual([chain(plain.nftScript, 'divert'), plain.routes], [[], []]);
  });
});

describe('--direct-source client: iptables plan', () => {
  const JUMP = '-A PREROUTING -p tcp ! --syn -m socket --transparent -j TRANSGATE_DIVERT';

  test('tproxy: a PREROUTING jump for every interface, before the per-LAN jumps', () => {
    const p = planIptables(rulesConfig({ tcp: HTTP_AND_TLS, lanInterfaces: ['lan0'], transparentDirect: true }));
    const mangle = (p.restore4 ?? '').split('\n');
    assert.ok(mangle.includes(JUMP), p.restore4);
    assert.ok(mangle.indexOf(JUMP) < mangle.indexOf('-A PREROUTING -i lan0 -j TRANSGATE'), p.restore4);
    assert.ok(!mangle.some((l) => l.startsWith('-A TRANSGATE ') && l.includes('--transparent')), 'not twice');
    assert.equal(p.routes.length, 2);
  });

  test('redirect: the divert chain in mangle, the jump, and the policy routes', () => {
    const p = planIptables(rulesConfig({ mode: 'redirect', tcp: HTTP_AND_TLS, transparentDirect: true }));
    for (const text of [p.restore4, p.restore6]) {
      const l = (text ?? '').split('\n');
      assert.deepEqual(l.slice(0, 6), [
        '*mangle',
        ':TRANSGATE_DIVERT - [0:0]',
        '-A TRANSGATE_DIVERT -j MARK --set-xmark 0x7467/0xffffffff',
        '-A TRANSGATE_DIVERT -j ACCEPT',
        JUMP,
        'COMMIT',
      ]);
    }
    assert.equal(p.routes.length, 2);
    const plain = planIptables(rulesConfig({ mode: 'redirect', tcp: HTTP_AND_TLS }));
    assert.ok(!(plain.restore4 ?? '').includes('*mangle'));
    assert.deepEqual(plain.routes, []);
  });
});

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { normalizeRules, plan } from '../../src/netfilter/plan';
import { renderNft } from '../../src/netfilter/render-nft';
import { summarize } from '../../src/netfilter/plan-summary';
import { rulesConfig } from '../support/rules-config';

// renderNft() and summarize() check nothing themselves: whatever they print
// must already be canonical when normalizeRules() hands it over.
describe('normalizeRules: the one place rules are checked and made canonical', () => {
  it('clears host bits, drops duplicates, canonical addresses, uplinks without lo and the bridge', () => {
    const n = normalizeRules(
      rulesConfig({
        bypass4: ['10.1.2.3/8', '10.0.0.0/8', '198.51.100.9'],
        bypass6: ['2001:DB8::5/32'],
        clients6: ['2001:db8:0:0::1'],
        tproxyAddress6: '0:0::1',
        uplinks: ['eth0', 'lo', 'br0', 'eth0'],
        bridge: { name: 'br0', mac: '02:00:00:00:00:01' },
        tcp: [
          { ports: [443, 80, 443], listenPort: 3180 },
          { ports: [22], listenPort: 3122 },
        ],
      }),
    );
    assert.deepEqual(n.bypass4, ['10.0.0.0/8', '198.51.100.9/32']);
    assert.deepEqual(n.bypass6, ['2001:db8::/32']);
    assert.equal(n.clientsOn, true);
    assert.deepEqual(n.clients4, []);
    assert.deepEqual(n.clients6, ['2001:db8::1/128']);
    assert.equal(n.addr6, '::1');
    assert.deepEqual(n.uplinks, ['eth0']);
    assert.deepEqual(n.tcp[0]!.ports, [443, 80]);
    assert.deepEqual(n.allTcpPorts, [22, 80, 443]);
    assert.deepEqual(n.listenPorts, [3122, 3180]);
  });

  it('plan() is normalize, then render and summarize: nothing else goes into the plan', () => {
    const cfg = rulesConfig({ mode: 'redirect', local: true, socketMark: 0x7468, failClosed: true, rejectQuic: true });
    const n = normalizeRules(cfg);
    const p = plan(cfg);
    assert.equal(p.nftScript, renderNft(n));
    assert.equal(p.summary, summarize(n));
  });

  it('throws the config error before anything is rendered', () => {
    assert.throws(() => normalizeRules(rulesConfig({ lanInterfaces: ['eth0; drop'] })), { code: 'TG_ERR_CONFIG' });
  });
});

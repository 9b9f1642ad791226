import { DEFAULT_BYPASS4, DEFAULT_BYPASS6, type RulesConfig } from '../../src/netfilter/plan';

/**
 * A complete RulesConfig for tests: tproxy, both families, ports 80/443/22 to
 * 3180/3143/3122, the default bypass ranges, loopback tproxy addresses.
 * Tests override what they are about.
 */
export function rulesConfig(over: Partial<RulesConfig> = {}): RulesConfig {
  return {
    mode: 'tproxy',
    tcp: [
      { ports: [80], listenPort: 3180 },
      { ports: [443], listenPort: 3143 },
      { ports: [22], listenPort: 3122 },
    ],
    udp: [],
    ipv4: true,
    ipv6: true,
    bypass4: [...DEFAULT_BYPASS4],
    bypass6: [...DEFAULT_BYPASS6],
    lanInterfaces: [],
    fwmark: 0x7467,
    routeTable: 7467,
    rulePriority: 7467,
    tproxyAddress4: '127.0.0.1',
    tproxyAddress6: '::1',
    ...over,
  };
}

/** The two-group variant (HTTP and TLS only) several rule tests start from. */
export const HTTP_AND_TLS = [
  { ports: [80], listenPort: 3180 },
  { ports: [443], listenPort: 3143 },
];

import type { Config } from '../config/config';
import { DEFAULT_BYPASS4, DEFAULT_BYPASS6, type RulesConfig } from './plan';

export { describePlan, NftBackend, type RuleBackend } from './index';

/** The rules a run configuration needs: defaults for special ranges plus --bypass, one port group per listener. */
export function rulesConfigFor(cfg: Config): RulesConfig {
  const tcp = [
    { ports: cfg.httpPorts, listenPort: cfg.listen.http },
    { ports: cfg.tlsPorts, listenPort: cfg.listen.tls },
    { ports: cfg.tcpPorts, listenPort: cfg.listen.tcp },
  ].filter((g) => g.ports.length > 0);
  // DNS: UDP and TCP port 53 to the DNS listeners (one port for both).
  const dns = cfg.dns ? [{ ports: [53], listenPort: cfg.dns.listenPort }] : [];
  return {
    mode: cfg.mode,
    tcp: [...tcp, ...dns],
    udp: dns,
    ipv4: cfg.ipv4,
    ipv6: cfg.ipv6,
    bypass4: [...DEFAULT_BYPASS4, ...cfg.bypass4],
    bypass6: [...DEFAULT_BYPASS6, ...cfg.bypass6],
    lanInterfaces: cfg.lan,
    fwmark: cfg.fwmark,
    routeTable: cfg.routeTable,
    rulePriority: cfg.routeTable,
    // Listeners bind loopback under TPROXY (see listenerBind), so nobody reaches them without the rules.
    tproxyAddress4: '127.0.0.1',
    tproxyAddress6: '::1',
    rejectQuic: !cfg.allowQuic,
    masquerade: cfg.masquerade,
    local: cfg.local,
    socketMark: cfg.socketMark,
  };
}

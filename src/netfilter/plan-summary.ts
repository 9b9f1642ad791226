/**
 * summarize(): what `transgate rules` tells a human about normalized rules
 * (see normalizeRules in plan.ts): what is intercepted, to where, what is
 * never touched. Pure.
 */
import type { NormalizedRules } from './normalized';
import { BRIDGE_TABLE, TABLE } from './render-nft';

export function summarize(norm: NormalizedRules): string {
  const { mode, tproxy, families, tcp, udp, bypass4, bypass6, lan, uplinks, clientsOn, clients4, clients6, addr4, addr6 } = norm;
  const { mark, local, ownMark, bridge, failClosed, allTcpPorts, listenPorts } = norm;
  const quic = norm.rejectQuic;
  const masq = norm.masquerade;
  const fam = families.map((f) => `IPv${f}`).join(' + ');
  const s: string[] = [];
  s.push(`transgate netfilter rules: ${mode} mode, ${fam}, nftables table "${TABLE}"`);
  s.push(
    lan.length > 0
      ? `  intercepting traffic arriving on: ${lan.join(', ')}`
      : '  intercepting traffic arriving on: every interface except lo',
  );
  const dest = (family: 4 | 6, port: number): string => {
    if (!tproxy) return `local port ${port} (REDIRECT to the receiving interface's address)`;
    const a = family === 4 ? addr4 : addr6;
    if (a) return family === 4 ? `${a}:${port}` : `[${a}]:${port}`;
    return `${family === 4 ? '0.0.0.0' : '[::]'}:${port} (any local address)`;
  };
  for (const [proto, groups] of [
    ['TCP', tcp],
    ['UDP', udp],
  ] as const) {
    for (const g of groups) {
      const targets = families.map((f) => dest(f, g.listenPort));
      const uniq = targets.filter((t, i) => targets.indexOf(t) === i);
      s.push(`  ${proto} ${g.ports.length > 1 ? 'ports' : 'port'} ${g.ports.join(', ')} → ${uniq.join(', ')}`);
    }
  }
  s.push(
    '  never intercepted: traffic addressed to this host itself, traffic from lo' +
      (local ? " (except this host's own connections, see below)" : '') +
      (lan.length > 0 ? ' and non-LAN interfaces' : ''),
  );
  if (uplinks.length > 0)
    s.push(
      `  never intercepted: traffic arriving on the uplink${uplinks.length > 1 ? 's' : ''} ${uplinks.join(', ')} (forwarded as any router would)`,
    );
  if (clientsOn) {
    s.push(
      `  only these sources are intercepted (--clients): ${[...clients4, ...clients6].join(', ') || '(none)'}${
        families.some((f) => (f === 4 ? clients4 : clients6).length === 0)
          ? `; no IPv${families.find((f) => (f === 4 ? clients4 : clients6).length === 0)} source is`
          : ''
      }; other sources are forwarded untouched`,
    );
  }
  if (norm.ipv4) s.push(`  IPv4 bypass: ${bypass4.length > 0 ? bypass4.join(', ') : '(none)'}`);
  if (norm.ipv6) s.push(`  IPv6 bypass: ${bypass6.length > 0 ? bypass6.join(', ') : '(none)'}`);
  if (local) {
    s.push(
      `  this host's own connections to TCP ${allTcpPorts.join(', ')} are intercepted too (OUTPUT hook); transgate's own sockets carry mark ${ownMark} and are skipped`,
    );
  }
  if (quic)
    s.push(
      `  QUIC: UDP port 443 from ${local ? 'clients and this host' : 'clients'} is rejected (ICMP port unreachable), so browsers use TCP`,
    );
  else s.push('  QUIC: UDP port 443 is left alone (--allow-quic): it is not intercepted');
  if (failClosed) {
    s.push(
      "  fail-closed: the rules stay when transgate stops or crashes; what they would intercept is then refused (TCP reset, ICMP port unreachable for UDP) instead of forwarded (chain closed_forward); 'transgate clear' removes them",
    );
  }
  if (!tproxy)
    s.push(`  listener ports ${listenPorts.join(', ')}: packets not sent there by a redirect rule are dropped (chain listeners_input)`);
  if (masq.length > 0) s.push(`  masquerade: forwarded traffic leaving ${masq.join(', ')} gets that interface's address`);
  if (bridge) {
    s.push(
      `  bridge ${bridge.name}: frames to the intercepted ports${lan.length > 0 ? ` entering on ${lan.join(', ')}` : ''} are taken up to IP (table ${BRIDGE_TABLE}, dst MAC ${bridge.mac}); everything else is bridged untouched`,
    );
  }
  if (tproxy) {
    s.push(
      `  policy routing: packets marked ${mark} use routing table ${norm.routeTable} (every destination local, via lo), ip rule pref ${norm.rulePriority}`,
    );
    s.push(`  established flows of transgate's transparent sockets are marked ${mark} and delivered locally`);
  } else if (norm.transparentDirect) {
    s.push(
      `  policy routing: packets marked ${mark} use routing table ${norm.routeTable} (every destination local, via lo), ip rule pref ${norm.rulePriority}`,
    );
  } else {
    s.push('  no policy routing (redirect mode)');
  }
  if (norm.transparentDirect) {
    s.push(
      `  direct connections leave from the client's address (--direct-source client): the answers, on any interface, are marked ${mark} and delivered locally${tproxy ? '' : ' (chain divert)'}`,
    );
  }
  return s.join('\n');
}

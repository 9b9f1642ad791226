/**
 * renderNft(): the nftables text of checked, normalized rules (see
 * normalizeRules in plan.ts). Pure: same rules, same text.
 *
 * The script is one `nft -f` transaction that replaces any earlier
 * `table inet transgate` (e.g. a leftover of a crashed run) atomically:
 *
 *   table inet transgate {}          # make sure it exists ...
 *   delete table inet transgate      # ... so this cannot fail
 *   table inet transgate { ... }     # the new contents
 */
import type { NormalizedRules } from './normalized';

const TABLE_FAMILY = 'inet';
const TABLE_NAME = 'transgate';
/** `inet transgate` */
export const TABLE = `${TABLE_FAMILY} ${TABLE_NAME}`;
/** `bridge transgate`: bridge mode's table (--bridge). */
export const BRIDGE_TABLE = `bridge ${TABLE_NAME}`;

function portSet(ports: readonly number[]): string {
  return `{ ${ports.join(', ')} }`;
}

function setBlock(name: string, type: string, elements: readonly string[]): string[] {
  const lines = [`\tset ${name} {`, `\t\ttype ${type}`, '\t\tflags interval', '\t\tauto-merge'];
  // nft rejects `elements = { }`: an empty set is declared without the line.
  if (elements.length > 0) lines.push(`\t\telements = { ${elements.join(', ')} }`);
  lines.push('\t}');
  return lines;
}

function tproxyTarget(family: 4 | 6, address: string | undefined, port: number): string {
  if (family === 4) return `tproxy ip to ${address ?? ''}:${port}`;
  return `tproxy ip6 to ${address ? `[${address}]` : ''}:${port}`;
}

/** The `nft -f -` script of normalized rules: table inet transgate, and bridge transgate in bridge mode. */
export function renderNft(norm: NormalizedRules): string {
  const { tproxy, families, tcp, udp, bypass4, bypass6, lan, uplinks, clientsOn, clients4, clients6, addr4, addr6 } = norm;
  const { mark, local, ownMark, bridge, failClosed, allTcpPorts, listenPorts } = norm;
  const quic = norm.rejectQuic;
  const masq = norm.masquerade;
  const uplinkRule = uplinks.length > 0 ? [`iifname { ${uplinks.map((n) => `"${n}"`).join(', ')} } return`] : [];
  /** Sources not in --clients leave the chain; `local`: this host's own, back in on lo, are no client's. */
  const sourceRules = (skipLo: boolean): string[] =>
    clientsOn ? families.map((f) => `${skipLo ? 'iifname != "lo" ' : ''}${f === 4 ? 'ip' : 'ip6'} saddr != @clients${f} return`) : [];

  const transparentDirect = norm.transparentDirect;
  // Packets of connections our transparent sockets already own: delivered
  // locally as they are. Not a new SYN: when a client reuses its port to
  // the same destination while our side of the last connection is still in
  // TIME_WAIT, `socket` finds that TIME_WAIT socket and the SYN would reach
  // it, not our listener (the kernel then answers with a bare ACK, and the
  // client resets and sends its SYN again). The tproxy rule below handles a
  // SYN that meets a TIME_WAIT socket: it ends it and hands the SYN to the listener.
  const ownSocketRule = `meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set ${mark} accept`;
  const rules: string[] = [];
  // --direct-source client: the answers of a server reached directly from the
  // client's address come back addressed to the client, on the uplink (whose
  // packets leave the chain below), so they are matched before any interface
  // or source check; without the mark they would be forwarded to the client.
  if (tproxy && transparentDirect) rules.push(ownSocketRule);
  if (bridge) {
    // Frames the bridge table took up arrive on the bridge carrying our mark;
    // other bridged IP traffic (br_netfilter) must not be intercepted here.
    rules.push(`iifname "${bridge.name}" meta mark != ${mark} return`);
  }
  rules.push(...uplinkRule);
  if (bridge && lan.length > 0) {
    rules.push(`iifname != { ${[...lan, bridge.name, ...(local ? ['lo'] : [])].map((n) => `"${n}"`).join(', ')} } return`);
    if (local && tproxy) rules.push(`iifname "lo" meta mark != ${mark} return`);
  } else if (local) {
    // This host's own connections come back in on lo after the OUTPUT chain
    // marked them (tproxy: rerouted to lo by the policy route). Anything else
    // arriving on lo is local traffic we leave alone.
    rules.push(
      lan.length > 0 ? `iifname != { ${[...lan, 'lo'].map((n) => `"${n}"`).join(', ')} } return` : '',
      tproxy ? `iifname "lo" meta mark != ${mark} return` : '',
    );
  } else {
    rules.push(lan.length > 0 ? `iifname != { ${lan.map((n) => `"${n}"`).join(', ')} } return` : 'iifname "lo" return');
  }
  rules.push(...sourceRules(local));
  if (tproxy && !transparentDirect) rules.push(ownSocketRule);
  const interceptRules = (everywhere: boolean): void => {
    for (const [proto, groups] of [
      ['tcp', tcp],
      ['udp', udp],
    ] as const) {
      for (const g of groups) {
        if ((g.allDestinations === true) !== everywhere) continue;
        for (const family of families) {
          const match = `meta nfproto ipv${family} ${proto} dport ${portSet(g.ports)}`;
          if (tproxy) {
            rules.push(`${match} ${tproxyTarget(family, family === 4 ? addr4 : addr6, g.listenPort)} meta mark set ${mark} accept`);
          } else {
            rules.push(`${match} redirect to :${g.listenPort}`);
          }
        }
      }
    }
  };
  interceptRules(true);
  rules.push('fib daddr type local return');
  if (norm.ipv4) rules.push('ip daddr @bypass4 return');
  if (norm.ipv6) rules.push('ip6 daddr @bypass6 return');
  interceptRules(false);

  const bypassRules = [...(norm.ipv4 ? ['ip daddr @bypass4 return'] : []), ...(norm.ipv6 ? ['ip6 daddr @bypass6 return'] : [])];
  const nfprotos = families.length === 2 ? '' : `meta nfproto ipv${families[0]} `;

  // This host's own connections: skip transgate's own sockets (their SO_MARK),
  // then send the intercepted ports to the listeners.
  const output: string[] = [];
  if (local) {
    output.push(`meta mark ${ownMark} return`, 'oifname "lo" return', 'fib daddr type local return', ...bypassRules);
    if (tproxy) {
      // A mark in a `type route` chain makes the kernel route the packet again:
      // the policy route sends it to lo, where prerouting does the TPROXY.
      output.push(`${nfprotos}tcp dport ${portSet(allTcpPorts)} meta mark set ${mark}`);
    } else {
      for (const g of tcp) output.push(`${nfprotos}tcp dport ${portSet(g.ports)} redirect to :${g.listenPort}`);
    }
  }

  // Forwarded traffic from the clients: what the QUIC and fail-closed chains look at.
  const forwardGate = [
    ...uplinkRule,
    lan.length > 0
      ? `iifname != { ${[...lan, ...(bridge ? [bridge.name] : [])].map((n) => `"${n}"`).join(', ')} } return`
      : 'iifname "lo" return',
    ...sourceRules(false),
  ];
  // QUIC: forwarded clients' UDP/443 (and this host's own, with local) is refused at once.
  const quicRules = (forward: boolean): string[] => [
    ...(forward ? forwardGate : [`meta mark ${ownMark ?? mark} return`]),
    ...bypassRules,
    `${nfprotos}udp dport 443 reject`,
  ];

  // Fail-closed: what reaches the forward hook and matches an interception
  // rule was not intercepted, because no listener took it (transgate is
  // down, its rules left in place): refused at once instead of forwarded.
  // While transgate runs nothing intercepted gets here: it is delivered locally.
  const closedRules: string[] = [];
  if (failClosed) {
    // Bridged frames the bridge table did not take up are none of ours (as in prerouting).
    if (bridge) closedRules.push(`iifname "${bridge.name}" meta mark != ${mark} return`);
    closedRules.push(...forwardGate);
    const rejects = (everywhere: boolean): void => {
      for (const [proto, groups] of [
        ['tcp', tcp],
        ['udp', udp],
      ] as const) {
        const ports = groups
          .filter((g) => g.allDestinations === everywhere)
          .flatMap((g) => g.ports)
          .sort((a, b) => a - b);
        if (ports.length === 0) continue;
        closedRules.push(
          `${nfprotos}${proto} dport ${portSet(ports)} ${proto === 'tcp' ? 'reject with tcp reset' : 'reject with icmpx type port-unreachable'}`,
        );
      }
    };
    rejects(true);
    closedRules.push(...bypassRules);
    rejects(false);
  }

  // REDIRECT needs listeners on every address, so anyone could send to them
  // directly; UDP has no SO_ORIGINAL_DST to tell, and the DNS listener would
  // answer anyone (an open resolver). Only what a redirect rule sent there
  // (conntrack's dnat status, --local's OUTPUT redirect included) may reach them.
  const inputRules = tproxy
    ? []
    : [`meta l4proto { tcp, udp } th dport ${portSet(listenPorts)} ct direction original ct status & dnat == 0 drop`];

  const lines: string[] = [`table ${TABLE} {}`, `delete table ${TABLE}`, `table ${TABLE} {`];
  if (norm.ipv4) lines.push(...setBlock('bypass4', 'ipv4_addr', bypass4), '');
  if (norm.ipv6) lines.push(...setBlock('bypass6', 'ipv6_addr', bypass6), '');
  if (clientsOn && norm.ipv4) lines.push(...setBlock('clients4', 'ipv4_addr', clients4), '');
  if (clientsOn && norm.ipv6) lines.push(...setBlock('clients6', 'ipv6_addr', clients6), '');
  const chain = (name: string, head: string, body: readonly string[]): string[] => [
    `\tchain ${name} {`,
    `\t\t${head}`,
    ...body.filter((r) => r !== '').map((r) => `\t\t${r}`),
    '\t}',
  ];
  lines.push(
    ...chain(
      'prerouting',
      tproxy ? 'type filter hook prerouting priority mangle; policy accept;' : 'type nat hook prerouting priority dstnat; policy accept;',
      rules,
    ),
  );
  // Redirect mode has no mangle-priority chain of its own (its prerouting is
  // a nat chain, which sees only a connection's first packet): the answers to
  // transparent direct connections are marked in one of their own.
  if (!tproxy && transparentDirect) {
    lines.push(...chain('divert', 'type filter hook prerouting priority mangle; policy accept;', [ownSocketRule]));
  }
  if (local) {
    lines.push(
      ...chain(
        'output',
        tproxy ? 'type route hook output priority mangle; policy accept;' : 'type nat hook output priority -100; policy accept;',
        output,
      ),
    );
  }
  if (quic) {
    lines.push(...chain('quic_forward', 'type filter hook forward priority filter; policy accept;', quicRules(true)));
    if (local) lines.push(...chain('quic_output', 'type filter hook output priority filter; policy accept;', quicRules(false)));
  }
  if (failClosed) lines.push(...chain('closed_forward', 'type filter hook forward priority filter; policy accept;', closedRules));
  if (inputRules.length > 0) lines.push(...chain('listeners_input', 'type filter hook input priority filter; policy accept;', inputRules));
  if (masq.length > 0) {
    lines.push(
      ...chain('postrouting', 'type nat hook postrouting priority srcnat; policy accept;', [
        `oifname { ${masq.map((n) => `"${n}"`).join(', ')} } ${nfprotos}masquerade`,
      ]),
    );
  }
  lines.push('}');
  if (bridge) {
    // The bridge family cannot see inet sets: the bypass lists are repeated here.
    const b: string[] = [`table ${BRIDGE_TABLE} {}`, `delete table ${BRIDGE_TABLE}`, `table ${BRIDGE_TABLE} {`];
    if (norm.ipv4) b.push(...setBlock('bypass4', 'ipv4_addr', bypass4), '');
    if (norm.ipv6) b.push(...setBlock('bypass6', 'ipv6_addr', bypass6), '');
    if (clientsOn && norm.ipv4) b.push(...setBlock('clients4', 'ipv4_addr', clients4), '');
    if (clientsOn && norm.ipv6) b.push(...setBlock('clients6', 'ipv6_addr', clients6), '');
    const port = lan.length > 0 ? `iifname { ${lan.map((n) => `"${n}"`).join(', ')} } ` : '';
    const body: string[] = [];
    for (const family of families) {
      const et = family === 4 ? 'ip' : 'ip6';
      // Not taken up, so other sources are bridged as they are.
      if (clientsOn) body.push(`${port}ether type ${et} ${et} saddr != @clients${family} return`);
      body.push(`${port}ether type ${et} ${et} daddr @bypass${family} return`);
      for (const [proto, groups] of [
        ['tcp', tcp],
        ['udp', udp],
      ] as const) {
        const ports = groups.flatMap((g) => g.ports).sort((x, y) => x - y);
        if (ports.length === 0) continue;
        // Addressed to the bridge itself (PACKET_HOST), the frame goes up to IP instead of being forwarded.
        body.push(
          `${port}ether type ${et} ${proto} dport ${portSet(ports)} meta mark set ${mark} meta pkttype set host ether daddr set ${bridge.mac.toLowerCase()} accept`,
        );
      }
      // Bridged QUIC goes up to IP as well (the bridge family cannot reject
      // on every kernel), unmarked, so it is routed into quic_forward and
      // rejected there. Marked, tproxy's local route would swallow it: the
      // kernel's own port-unreachable cannot leave from a foreign address.
      if (quic) body.push(`${port}ether type ${et} udp dport 443 meta pkttype set host ether daddr set ${bridge.mac.toLowerCase()} accept`);
    }
    b.push(...chain('prerouting', 'type filter hook prerouting priority -300; policy accept;', body), '}');
    lines.push(...b);
  }
  return `${lines.join('\n')}\n`;
}

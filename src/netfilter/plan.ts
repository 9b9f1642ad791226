/**
 * plan(): turns a RulesConfig into the exact nftables script and `ip`
 * commands that apply() will run. Pure and deterministic: same config, same
 * text — `transgate rules` prints it, tests compare it.
 *
 * The script is one `nft -f` transaction that replaces any earlier
 * `table inet transgate` (e.g. a leftover of a crashed run) atomically:
 *
 *   table inet transgate {}          # make sure it exists ...
 *   delete table inet transgate      # ... so this cannot fail
 *   table inet transgate { ... }     # the new contents
 */
import { ErrorCodes, GatewayError } from '../core/errors';
import { formatCidr, formatIPv4, formatIPv6, parseCidrOf, parseIPv4Bytes, parseIPv6Bytes } from '../core/ip';
import { INTERFACE_NAME_RULE, isInterfaceName, isInterfacePattern, isPort } from '../core/validate';
import { formatCommand } from './exec';
import { formatMark, policyRoute, validatePolicyIds, type PolicyRoute } from './policy-routing';

export const TABLE_FAMILY = 'inet';
export const TABLE_NAME = 'transgate';
/** `inet transgate` */
export const TABLE = `${TABLE_FAMILY} ${TABLE_NAME}`;
/** `bridge transgate`: bridge mode's table (--bridge). */
export const BRIDGE_TABLE = `bridge ${TABLE_NAME}`;

export const DEFAULT_FWMARK = 0x7467;
export const DEFAULT_ROUTE_TABLE = 7467;
export const DEFAULT_RULE_PRIORITY = 7467;

export const DEFAULT_BYPASS4: readonly string[] = Object.freeze([
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '224.0.0.0/4',
  '240.0.0.0/4',
  '255.255.255.255/32',
]);

export const DEFAULT_BYPASS6: readonly string[] = Object.freeze([
  '::/128',
  '::1/128',
  'fc00::/7',
  'fe80::/10',
  'ff00::/8',
  '::ffff:0:0/96',
]);

export interface PortGroup {
  ports: number[];
  listenPort: number;
  /**
   * Intercept whatever the destination: the gateway's own addresses and the
   * bypass ranges too. For DNS: clients are handed the gateway or an internal
   * resolver (private addresses) by DHCP, and those are exactly the queries a
   * proxy-only network cannot answer for public names.
   */
  allDestinations?: boolean;
}

export interface RulesConfig {
  mode: 'tproxy' | 'redirect';
  /** intercepted TCP ports → local listener port */
  tcp: PortGroup[];
  /** optional UDP interception (DNS), same shape; may be empty */
  udp: PortGroup[];
  ipv4: boolean;
  ipv6: boolean;
  /** CIDRs never intercepted (caller passes the defaults + --bypass). A bare address means /32 (/128). */
  bypass4: string[];
  bypass6: string[];
  /** empty = every interface except lo (and `uplinks`) */
  lanInterfaces: string[];
  /**
   * Interfaces whose arriving traffic is never intercepted: the uplinks, so
   * that a host on the WAN segment that routes through this box cannot use
   * the proxy (as this box) or its DNS. An exclusion, not a list of LAN
   * interfaces: interfaces that appear later (a Docker bridge) are still
   * intercepted. The caller leaves out an uplink the clients use too
   * (a one-armed gateway, or one --lan names).
   */
  uplinks?: string[];
  /**
   * Sources that may use the gateway (--clients); a bare address means /32
   * (/128). Both undefined or empty: any source. Given for one family only,
   * nobody of the other family is intercepted. Other sources are forwarded
   * untouched, as by any router.
   */
  clients4?: string[];
  clients6?: string[];
  /**
   * The rules outlive transgate (--fail-closed). A forward-hook chain rejects
   * what would have been intercepted, because nft's tproxy does not match when
   * no socket listens, and the packet would then be forwarded un-proxied.
   */
  failClosed?: boolean;
  /** mark for tproxy policy routing, e.g. 0x7467 */
  fwmark: number;
  /** e.g. 7467 (not 253/254/255: those are the system's tables) */
  routeTable: number;
  /** ip rule pref, e.g. 7467 */
  rulePriority: number;
  /**
   * tproxy mode: where the IPv4 listeners are bound, normally '127.0.0.1'.
   * Verified for forwarded traffic: `tproxy ip to 127.0.0.1:PORT` reaches a
   * transparent listener on 127.0.0.1:PORT *and* one on 0.0.0.0/:: (wildcard).
   * Empty/undefined → `tproxy ip to :PORT`, which only reaches a wildcard
   * listener (or one bound to the receiving interface's address).
   */
  tproxyAddress4?: string;
  /** Same for IPv6, normally '::1'. */
  tproxyAddress6?: string;
  /**
   * Reject UDP/443 (QUIC) that intercepted clients send through this box with
   * ICMP port-unreachable, so browsers fall back to TCP at once instead of
   * after a timeout. Destinations in the bypass sets are left alone.
   */
  rejectQuic?: boolean;
  /** Masquerade (SNAT to the interface address, both families) forwarded traffic leaving these interfaces. */
  masquerade?: string[];
  /** Also intercept this host's own outgoing connections (OUTPUT hook). Needs socketMark. */
  local?: boolean;
  /** The SO_MARK on transgate's own sockets: the OUTPUT rules skip it, so transgate never intercepts itself. */
  socketMark?: number;
  /**
   * Bridge mode: the box is a transparent bridge. Frames to the intercepted
   * ports (entering on lanInterfaces, when given: bridge ports) are taken up
   * to the IP layer — the nft form of ebtables' broute — and everything else
   * is bridged untouched. Needs the bridge's MAC address.
   */
  bridge?: { name: string; mac: string };
}

export interface RulesPlan {
  mode: RulesConfig['mode'];
  /** One `nft -f -` transaction. */
  nftScript: string;
  /** Policy routing (tproxy mode only; empty in redirect mode). */
  routes: PolicyRoute[];
  /** Human-readable: what is intercepted, to where, what is bypassed. */
  summary: string;
  /** Kept so revert(plan) can remove the policy routing. */
  fwmark: number;
  routeTable: number;
  rulePriority: number;
  /** Bridge mode: revert(plan) removes the bridge table too. */
  bridge?: { name: string; mac: string };
}

// ---------------------------------------------------------------------------
// validation helpers

function configError(msg: string): GatewayError {
  return new GatewayError(ErrorCodes.CONFIG, `rules: ${msg}`);
}

function checkPort(p: unknown, what: string): number {
  if (!isPort(p)) {
    throw configError(`${what} must be an integer port in 1..65535, got ${JSON.stringify(p)}`);
  }
  return p;
}

interface NormGroup {
  ports: number[];
  listenPort: number;
  allDestinations: boolean;
}

function normalizeGroups(groups: readonly PortGroup[] | undefined, proto: 'tcp' | 'udp'): NormGroup[] {
  const seen = new Map<number, number>();
  const out: NormGroup[] = [];
  for (const [i, g] of (groups ?? []).entries()) {
    const listenPort = checkPort(g?.listenPort, `${proto}[${i}].listenPort`);
    if (!Array.isArray(g.ports) || g.ports.length === 0) throw configError(`${proto}[${i}].ports must list at least one port`);
    const ports: number[] = [];
    for (const p of g.ports) {
      checkPort(p, `${proto}[${i}].ports`);
      if (ports.includes(p)) continue;
      const other = seen.get(p);
      if (other !== undefined) throw configError(`${proto} port ${p} is in two groups (→ ${other} and → ${listenPort})`);
      seen.set(p, listenPort);
      ports.push(p);
    }
    out.push({ ports, listenPort, allDestinations: g.allDestinations === true });
  }
  return out;
}

/** Validates a CIDR of the given family and returns it canonical, host bits cleared. */
export function normalizeCidr(cidr: string, family: 4 | 6, what = `bypass${family}`): string {
  if (typeof cidr !== 'string') throw configError(`${what} entries must be strings, got ${JSON.stringify(cidr)}`);
  const c = parseCidrOf(cidr, family);
  if (c === 'prefix') throw configError(`bad prefix length in ${what} entry "${cidr}"`);
  if (c === 'address') throw configError(`${what} entry "${cidr}" is not an IPv${family} address or CIDR`);
  return formatCidr(c);
}

function normalizeBypass(list: readonly string[] | undefined, family: 4 | 6, what = `bypass${family}`): string[] {
  const out: string[] = [];
  for (const c of list ?? []) {
    const n = normalizeCidr(c, family, what);
    if (!out.includes(n)) out.push(n);
  }
  return out;
}

/** Names (or, with `patterns`, prefixes with a trailing *) as they may stand in the nft script: see core/validate. */
function normalizeInterfaces(list: readonly string[] | undefined, patterns = false): string[] {
  const out: string[] = [];
  for (const name of list ?? []) {
    if (!(patterns ? isInterfacePattern(name) : isInterfaceName(name))) {
      throw configError(`bad interface name ${JSON.stringify(name)} (${INTERFACE_NAME_RULE}${patterns ? ', or a prefix with *' : ''})`);
    }
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

function checkAddress(addr: string | undefined, family: 4 | 6): string | undefined {
  if (addr === undefined || addr === '') return undefined;
  const bytes = family === 4 ? parseIPv4Bytes(addr) : parseIPv6Bytes(addr);
  if (!bytes) throw configError(`tproxyAddress${family} must be an IPv${family} address, got ${JSON.stringify(addr)}`);
  return family === 4 ? formatIPv4(bytes) : formatIPv6(bytes);
}

// ---------------------------------------------------------------------------
// plan

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

export function plan(cfg: RulesConfig): RulesPlan {
  if (cfg.mode !== 'tproxy' && cfg.mode !== 'redirect')
    throw configError(`mode must be "tproxy" or "redirect", got ${JSON.stringify(cfg.mode)}`);
  if (!cfg.ipv4 && !cfg.ipv6) throw configError('at least one of ipv4/ipv6 must be enabled');
  validatePolicyIds(cfg);
  if (!Number.isInteger(cfg.rulePriority) || cfg.rulePriority < 1 || cfg.rulePriority > 32765) {
    throw configError(`rulePriority must be an integer in 1..32765 (before the main table's 32766), got ${String(cfg.rulePriority)}`);
  }
  const tcp = normalizeGroups(cfg.tcp, 'tcp');
  const udp = normalizeGroups(cfg.udp, 'udp');
  if (tcp.length === 0 && udp.length === 0) throw configError('nothing to intercept: no tcp or udp port groups');
  const bypass4 = cfg.ipv4 ? normalizeBypass(cfg.bypass4, 4) : [];
  const bypass6 = cfg.ipv6 ? normalizeBypass(cfg.bypass6, 6) : [];
  const lan = normalizeInterfaces(cfg.lanInterfaces, true);
  const tproxy = cfg.mode === 'tproxy';
  const addr4 = tproxy && cfg.ipv4 ? checkAddress(cfg.tproxyAddress4, 4) : undefined;
  const addr6 = tproxy && cfg.ipv6 ? checkAddress(cfg.tproxyAddress6, 6) : undefined;
  const mark = formatMark(cfg.fwmark);
  const families: Array<4 | 6> = [...(cfg.ipv4 ? [4 as const] : []), ...(cfg.ipv6 ? [6 as const] : [])];

  const local = cfg.local === true;
  let ownMark: string | undefined;
  if (local) {
    const m = cfg.socketMark;
    if (m === undefined || !Number.isInteger(m) || m < 1 || m > 0xffffffff || m === cfg.fwmark) {
      throw configError(`local interception needs a socketMark in 1..0xffffffff different from fwmark, got ${String(m)}`);
    }
    ownMark = formatMark(m);
  }
  const masq = normalizeInterfaces(cfg.masquerade);
  const quic = cfg.rejectQuic === true;

  const bridge = cfg.bridge;
  if (bridge) {
    normalizeInterfaces([bridge.name]);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(bridge.mac))
      throw configError(`bridge ${bridge.name}: bad MAC address ${JSON.stringify(bridge.mac)}`);
  }
  // lo is handled below; the bridge carries the clients in bridge mode.
  const uplinks = normalizeInterfaces(cfg.uplinks, true).filter((n) => n !== 'lo' && n !== bridge?.name);
  const clientsOn = (cfg.clients4?.length ?? 0) + (cfg.clients6?.length ?? 0) > 0;
  const clients4 = clientsOn && cfg.ipv4 ? normalizeBypass(cfg.clients4, 4, 'clients4') : [];
  const clients6 = clientsOn && cfg.ipv6 ? normalizeBypass(cfg.clients6, 6, 'clients6') : [];
  const failClosed = cfg.failClosed === true;
  const uplinkRule = uplinks.length > 0 ? [`iifname { ${uplinks.map((n) => `"${n}"`).join(', ')} } return`] : [];
  /** Sources not in --clients leave the chain; `local`: this host's own, back in on lo, are no client's. */
  const sourceRules = (skipLo: boolean): string[] =>
    clientsOn ? families.map((f) => `${skipLo ? 'iifname != "lo" ' : ''}${f === 4 ? 'ip' : 'ip6'} saddr != @clients${f} return`) : [];

  const rules: string[] = [];
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
  // Packets of connections our transparent sockets already own: delivered
  // locally as they are. Not a new SYN: when a client reuses its port to
  // the same destination while our side of the last connection is still in
  // TIME_WAIT, `socket` finds that TIME_WAIT socket and the SYN would reach
  // it, not our listener (the kernel then answers with a bare ACK, and the
  // client resets and sends its SYN again). The tproxy rule below handles a
  // SYN that meets a TIME_WAIT socket: it ends it and hands the SYN to the listener.
  if (tproxy) rules.push(`meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set ${mark} accept`);
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
  if (cfg.ipv4) rules.push('ip daddr @bypass4 return');
  if (cfg.ipv6) rules.push('ip6 daddr @bypass6 return');
  interceptRules(false);

  const bypassRules = [...(cfg.ipv4 ? ['ip daddr @bypass4 return'] : []), ...(cfg.ipv6 ? ['ip6 daddr @bypass6 return'] : [])];
  const allTcpPorts = tcp.flatMap((g) => g.ports).sort((a, b) => a - b);
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
  const listenPorts = [...new Set([...tcp, ...udp].map((g) => g.listenPort))].sort((a, b) => a - b);
  const inputRules = tproxy
    ? []
    : [`meta l4proto { tcp, udp } th dport ${portSet(listenPorts)} ct direction original ct status & dnat == 0 drop`];

  const lines: string[] = [`table ${TABLE} {}`, `delete table ${TABLE}`, `table ${TABLE} {`];
  if (cfg.ipv4) lines.push(...setBlock('bypass4', 'ipv4_addr', bypass4), '');
  if (cfg.ipv6) lines.push(...setBlock('bypass6', 'ipv6_addr', bypass6), '');
  if (clientsOn && cfg.ipv4) lines.push(...setBlock('clients4', 'ipv4_addr', clients4), '');
  if (clientsOn && cfg.ipv6) lines.push(...setBlock('clients6', 'ipv6_addr', clients6), '');
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
    if (cfg.ipv4) b.push(...setBlock('bypass4', 'ipv4_addr', bypass4), '');
    if (cfg.ipv6) b.push(...setBlock('bypass6', 'ipv6_addr', bypass6), '');
    if (clientsOn && cfg.ipv4) b.push(...setBlock('clients4', 'ipv4_addr', clients4), '');
    if (clientsOn && cfg.ipv6) b.push(...setBlock('clients6', 'ipv6_addr', clients6), '');
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
  const nftScript = `${lines.join('\n')}\n`;

  const routes = tproxy ? families.map((f) => policyRoute(f, cfg)) : [];

  // summary
  const fam = families.map((f) => `IPv${f}`).join(' + ');
  const s: string[] = [];
  s.push(`transgate netfilter rules: ${cfg.mode} mode, ${fam}, nftables table "${TABLE}"`);
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
  if (cfg.ipv4) s.push(`  IPv4 bypass: ${bypass4.length > 0 ? bypass4.join(', ') : '(none)'}`);
  if (cfg.ipv6) s.push(`  IPv6 bypass: ${bypass6.length > 0 ? bypass6.join(', ') : '(none)'}`);
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
  if (inputRules.length > 0)
    s.push(`  listener ports ${listenPorts.join(', ')}: packets not sent there by a redirect rule are dropped (chain listeners_input)`);
  if (masq.length > 0) s.push(`  masquerade: forwarded traffic leaving ${masq.join(', ')} gets that interface's address`);
  if (bridge) {
    s.push(
      `  bridge ${bridge.name}: frames to the intercepted ports${lan.length > 0 ? ` entering on ${lan.join(', ')}` : ''} are taken up to IP (table ${BRIDGE_TABLE}, dst MAC ${bridge.mac}); everything else is bridged untouched`,
    );
  }
  if (tproxy) {
    s.push(
      `  policy routing: packets marked ${mark} use routing table ${cfg.routeTable} (every destination local, via lo), ip rule pref ${cfg.rulePriority}`,
    );
    s.push(`  established flows of transgate's transparent sockets are marked ${mark} and delivered locally`);
  } else {
    s.push('  no policy routing (redirect mode)');
  }

  return {
    mode: cfg.mode,
    nftScript,
    routes,
    summary: s.join('\n'),
    fwmark: cfg.fwmark,
    routeTable: cfg.routeTable,
    rulePriority: cfg.rulePriority,
    ...(bridge ? { bridge } : {}),
  };
}

/** The `ip` command lines of a plan, in the order apply() runs them. */
export function routeCommands(p: RulesPlan): string[] {
  const out: string[] = [];
  for (const r of p.routes) {
    out.push(`ip ${formatCommand(r.routeArgs)}`, `ip ${formatCommand(r.ruleArgs)}`);
  }
  return out;
}

/** What `transgate rules` prints: summary, the exact script, the ip commands. */
export function renderPlan(p: RulesPlan): string {
  const parts = [p.summary, '', '# nftables (applied atomically with: nft -f -)', "nft -f - <<'EOF'", p.nftScript.trimEnd(), 'EOF'];
  const cmds = routeCommands(p);
  if (cmds.length > 0) parts.push('', '# policy routing', ...cmds);
  return `${parts.join('\n')}\n`;
}

/**
 * plan(): turns a RulesConfig into the exact nftables script and `ip`
 * commands that apply() will run. Pure and deterministic: same config, same
 * text — `transgate rules` prints it, tests compare it.
 *
 * Three steps, each a function of its own: normalizeRules() (here: checks
 * the config, puts it in canonical form), renderNft() (render-nft.ts: the
 * script) and summarize() (plan-summary.ts: what a human is told).
 */
import type { NormGroup, NormalizedRules } from './normalized';
import { ErrorCodes, GatewayError } from '../core/errors';
import { formatCidr, formatIPv4, formatIPv6, parseCidrOf, parseIPv4Bytes, parseIPv6Bytes } from '../core/ip';
import { INTERFACE_NAME_RULE, isInterfaceName, isInterfacePattern, isPort } from '../core/validate';
import { formatCommand } from './exec';
import { formatMark, policyRoute, validatePolicyIds, type PolicyRoute } from './policy-routing';

import { summarize } from './plan-summary';
import { renderNft } from './render-nft';

export { BRIDGE_TABLE, TABLE } from './render-nft';

export const DEFAULT_FWMARK = 0x7467;
export const DEFAULT_ROUTE_TABLE = 7467;

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
  /**
   * --direct-source client: direct connections leave from the client's own
   * address (transparent sockets), so the servers' answers are addressed to
   * the client and arrive on any interface (the uplink too). Their packets
   * are marked by the `socket transparent` match wherever they arrive and
   * delivered locally by the policy route, in redirect mode as well.
   */
  transparentDirect?: boolean;
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
// normalize → render, summarize

/** Checks a RulesConfig and puts it in canonical form; throws TG_ERR_CONFIG on the first problem. */
export type { NormalizedRules } from './normalized';

export function normalizeRules(cfg: RulesConfig): NormalizedRules {
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
  const masquerade = normalizeInterfaces(cfg.masquerade);

  const bridge = cfg.bridge;
  if (bridge) {
    normalizeInterfaces([bridge.name]);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(bridge.mac))
      throw configError(`bridge ${bridge.name}: bad MAC address ${JSON.stringify(bridge.mac)}`);
  }
  // lo is handled by the rules themselves; the bridge carries the clients in bridge mode.
  const uplinks = normalizeInterfaces(cfg.uplinks, true).filter((n) => n !== 'lo' && n !== bridge?.name);
  const clientsOn = (cfg.clients4?.length ?? 0) + (cfg.clients6?.length ?? 0) > 0;
  const clients4 = clientsOn && cfg.ipv4 ? normalizeBypass(cfg.clients4, 4, 'clients4') : [];
  const clients6 = clientsOn && cfg.ipv6 ? normalizeBypass(cfg.clients6, 6, 'clients6') : [];
  return {
    mode: cfg.mode,
    tproxy,
    ipv4: cfg.ipv4,
    ipv6: cfg.ipv6,
    families,
    tcp,
    udp,
    allTcpPorts: tcp.flatMap((g) => g.ports).sort((a, b) => a - b),
    listenPorts: [...new Set([...tcp, ...udp].map((g) => g.listenPort))].sort((a, b) => a - b),
    bypass4,
    bypass6,
    lan,
    uplinks,
    clientsOn,
    clients4,
    clients6,
    ...(addr4 !== undefined ? { addr4 } : {}),
    ...(addr6 !== undefined ? { addr6 } : {}),
    fwmark: cfg.fwmark,
    mark,
    routeTable: cfg.routeTable,
    rulePriority: cfg.rulePriority,
    local,
    ...(ownMark !== undefined ? { ownMark } : {}),
    masquerade,
    rejectQuic: cfg.rejectQuic === true,
    failClosed: cfg.failClosed === true,
    ...(bridge ? { bridge } : {}),
    transparentDirect: cfg.transparentDirect === true,
  };
}

/** normalize → render (the nft script, the policy routes) and summarize. */
export function plan(cfg: RulesConfig): RulesPlan {
  const n = normalizeRules(cfg);
  return {
    mode: n.mode,
    nftScript: renderNft(n),
    // Policy routing (tproxy only): marked packets are delivered locally, where the transparent listeners take them.
    routes: n.tproxy || n.transparentDirect ? n.families.map((f) => policyRoute(f, n)) : [],
    summary: summarize(n),
    fwmark: n.fwmark,
    routeTable: n.routeTable,
    rulePriority: n.rulePriority,
    ...(n.bridge ? { bridge: n.bridge } : {}),
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

import fs from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/config';
import { ErrorCodes, GatewayError } from '../core/errors';
import { describePlan, NftablesRuleBackend } from './index';
import { IptablesRuleBackend, planIptables, renderIptablesPlan } from './iptables';
import type { IptablesVariant } from './rule-backend';
import { run, type Runner } from './exec';
import { nftDeleteTable } from './nftables';
import { dropSysctlState, loadSysctlState, readSysctl, restorableAfterCrash, restoreSysctls } from './sysctl';
import { BRIDGE_TABLE, DEFAULT_BYPASS4, DEFAULT_BYPASS6, type RulesConfig } from './plan';
import { describeUplinks, detectUplinks, judgeUplinks, type UplinkJudgement } from './uplink';

import type { RuleBackend } from './rule-backend';

export type { RuleBackend } from './rule-backend';

/** Whether an executable of this name is on PATH (or in /usr/sbin, /sbin). */
export function haveBinary(name: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const dirs = [...(env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin'];
  return dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, name), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** --firewall: nftables unless asked otherwise; auto falls back to iptables when nft is missing. */
export function backendName(cfg: Pick<Config, 'firewall'>, have: (bin: string) => boolean = haveBinary): 'nftables' | IptablesVariant {
  if (cfg.firewall !== 'auto') return cfg.firewall;
  if (have('nft')) return 'nftables';
  if (have('iptables')) return 'iptables';
  if (have('iptables-legacy')) return 'iptables-legacy';
  return 'nftables'; // its error says what to install
}

export function createBackend(cfg: Config): RuleBackend {
  const name = backendName(cfg);
  return name === 'nftables' ? new NftablesRuleBackend() : new IptablesRuleBackend(name);
}

/** This host's uplinks as the rules of `cfg` see them (routes read now). */
export async function uplinksFor(cfg: Config, runner: Runner = run): Promise<UplinkJudgement> {
  const proxyHosts = [...new Set([...cfg.upstream.http, ...cfg.upstream.https].map((p) => p.host))];
  const host = await detectUplinks({ proxyHosts, ipv4: cfg.ipv4, ipv6: cfg.ipv6, runner });
  return judgeUplinks(host, cfg.lan, cfg.bridge);
}

/** The rules `run` installs: routes read now, the uplink decision logged. */
export async function rulesConfigForRun(cfg: Config, log: { info(m: string): void; warn(m: string): void }): Promise<RulesConfig> {
  const uplinks = await uplinksFor(cfg);
  for (const l of describeUplinks(uplinks)) {
    if (l.warn) log.warn(l.text);
    else log.info(l.text);
  }
  return rulesConfigFor(cfg, uplinks);
}

/** `transgate rules`: the plan of the backend `run` would use, with this host's uplinks. */
export async function describeRules(cfg: Config): Promise<string> {
  const name = backendName(cfg);
  const uplinks = await uplinksFor(cfg);
  const rc = rulesConfigFor(cfg, uplinks);
  const text = name === 'nftables' ? describePlan(rc) : renderIptablesPlan(planIptables(rc, name));
  return `${describeUplinks(uplinks)
    .map((l) => `# ${l.text}`)
    .join('\n')}\n${text}`;
}

/**
 * `transgate clear`: removes what any backend may have left (the nftables
 * table, iptables and iptables-legacy chains, the policy routes). Returns
 * the names of the backends that had something installed.
 */
export async function clearAll(cfg: Config): Promise<string[]> {
  // Without the bridge: clearing must work when the bridge is gone; the bridge table is removed below anyway.
  const rc = rulesConfigFor({ ...cfg, bridge: undefined });
  const removed: string[] = [];
  if (await new NftablesRuleBackend().clear(rc)) removed.push('nftables');
  // A crashed --bridge run's table, whether or not --bridge was given now.
  if ((await nftDeleteTable(run, BRIDGE_TABLE)) && !removed.includes('nftables')) removed.push('nftables');
  for (const v of ['iptables', 'iptables-legacy'] as const) {
    if (!haveBinary(v)) continue;
    if (await new IptablesRuleBackend(v).clear(rc)) removed.push(v);
  }
  // Sysctls a crashed run changed: put back those still holding transgate's value.
  const left = loadSysctlState();
  if (left.length > 0) {
    const back = restorableAfterCrash(left, readSysctl);
    restoreSysctls(back);
    dropSysctlState();
    if (back.length > 0) removed.push(`sysctls ${back.map((c) => `${c.key}=${c.from}`).join(' ')}`);
  }
  return removed;
}

/** The bridge's MAC address (frames for it go up to IP), from sysfs of this network namespace. */
function bridgeMac(name: string): string {
  try {
    if (!fs.existsSync(`/sys/class/net/${name}/bridge`)) throw new Error('not a bridge');
    return fs.readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim();
  } catch (err) {
    throw new GatewayError(
      ErrorCodes.CONFIG,
      `--bridge ${name}: no such bridge here (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ip link show type bridge lists them`,
    );
  }
}

/**
 * The rules a run configuration needs: defaults for special ranges plus
 * --bypass, one port group per listener. `uplinks`: what uplinksFor() found;
 * without it no interface is excluded (enough to revert or clear).
 */
export function rulesConfigFor(cfg: Config, uplinks?: UplinkJudgement): RulesConfig {
  const tcp = [
    { ports: cfg.httpPorts, listenPort: cfg.listen.http },
    { ports: cfg.tlsPorts, listenPort: cfg.listen.tls },
    { ports: cfg.tcpPorts, listenPort: cfg.listen.tcp },
  ].filter((g) => g.ports.length > 0);
  // DNS: UDP and TCP port 53 to the DNS listeners (one port for both).
  // Every destination: DHCP hands clients the gateway or an internal resolver, and those must be answered too.
  const dns = cfg.dns ? [{ ports: [53], listenPort: cfg.dns.listenPort, allDestinations: true }] : [];
  return {
    mode: cfg.mode,
    tcp: [...tcp, ...dns],
    udp: dns,
    ipv4: cfg.ipv4,
    ipv6: cfg.ipv6,
    bypass4: [...DEFAULT_BYPASS4, ...cfg.bypass4],
    bypass6: [...DEFAULT_BYPASS6, ...cfg.bypass6],
    lanInterfaces: cfg.lan,
    uplinks: uplinks?.excluded ?? [],
    clients4: cfg.clients4,
    clients6: cfg.clients6,
    failClosed: cfg.failClosed,
    fwmark: cfg.fwmark,
    routeTable: cfg.routeTable,
    // The rule must come before the main table's (32766), whatever the table number.
    rulePriority: Math.min(cfg.routeTable, 32765),
    // Listeners bind loopback under TPROXY (see listenerBind), so nobody reaches them without the rules.
    tproxyAddress4: '127.0.0.1',
    tproxyAddress6: '::1',
    rejectQuic: !cfg.allowQuic,
    masquerade: cfg.masquerade,
    local: cfg.local,
    socketMark: cfg.socketMark,
    transparentDirect: cfg.directSource === 'client',
    ...(cfg.bridge ? { bridge: { name: cfg.bridge, mac: bridgeMac(cfg.bridge) } } : {}),
  };
}

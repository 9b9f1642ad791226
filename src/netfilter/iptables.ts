/**
 * The iptables backend, for hosts without nft (or where the firewall is
 * managed with iptables): nft-based `iptables` or `iptables-legacy`, IPv4
 * and IPv6 (ip6tables), TPROXY and REDIRECT, in chains transgate owns.
 *
 *   planIptables(cfg, 'iptables')  → pure: iptables-restore input per family
 *   apply: remove anything of ours (jumps from the built-in chains, then our
 *          chains), then `iptables-restore --noflush` per family; each table
 *          section is one atomic commit. A restart after a crash therefore
 *          never duplicates a jump.
 *   revert: the same removal; needs no state, so `transgate clear` works
 *          after a crash.
 */
import { ErrorCodes, GatewayError, withContext } from '../core/errors';
import { INTERFACE_NAME_RULE, isInterfaceName, isInterfacePattern, isPort } from '../core/validate';
import { formatCommand, isNotFound, netnsRunner, run, type Runner } from './exec';
import { normalizeCidr, type RulesConfig } from './plan';
import { formatMark, installPolicyRoutes, policyRoute, removePolicyRoutes, validatePolicyIds, type PolicyIds } from './policy-routing';
import type { IptablesPlan, IptablesVariant, RevertTarget, RuleBackend, RuleBackendOptions } from './rule-backend';

/** Every chain transgate owns, in the table that holds it. */
const IPT_CHAINS = {
  pre: 'TRANSGATE',
  divert: 'TRANSGATE_DIVERT',
  out: 'TRANSGATE_OUT',
  quic: 'TRANSGATE_QUIC',
  post: 'TRANSGATE_POST',
  /** --fail-closed: filter FORWARD rejects what was not intercepted. */
  closed: 'TRANSGATE_CLOSED',
  /** redirect mode: filter INPUT drops what no REDIRECT sent to the listeners. */
  input: 'TRANSGATE_IN',
} as const;

/** Built-in chains our jumps may hang from, per table. */
const HOOKS: ReadonlyArray<[table: string, chain: string]> = [
  ['mangle', 'PREROUTING'],
  ['mangle', 'OUTPUT'],
  ['nat', 'PREROUTING'],
  ['nat', 'OUTPUT'],
  ['nat', 'POSTROUTING'],
  ['filter', 'FORWARD'],
  ['filter', 'OUTPUT'],
  ['filter', 'INPUT'],
];
const OWN_CHAINS: ReadonlyArray<[table: string, chain: string]> = [
  ['mangle', IPT_CHAINS.pre],
  ['mangle', IPT_CHAINS.divert],
  ['mangle', IPT_CHAINS.out],
  ['nat', IPT_CHAINS.pre],
  ['nat', IPT_CHAINS.out],
  ['nat', IPT_CHAINS.post],
  ['filter', IPT_CHAINS.quic],
  ['filter', IPT_CHAINS.closed],
  ['filter', IPT_CHAINS.input],
];

function configError(msg: string): GatewayError {
  return new GatewayError(ErrorCodes.CONFIG, `rules (iptables): ${msg}`);
}

/** The binaries of a variant for one family. */
export function iptablesBinaries(variant: IptablesVariant, family: 4 | 6): { cmd: string; restore: string; save: string } {
  const base = family === 4 ? 'iptables' : 'ip6tables';
  const v = variant === 'iptables-legacy' ? `${base}-legacy` : base;
  return { cmd: v, restore: `${v}-restore`, save: `${v}-save` };
}

/** multiport takes at most 15 ports per rule. */
function chunks(ports: readonly number[], n = 15): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < ports.length; i += n) out.push(ports.slice(i, i + n));
  return out;
}

/** A name (or, with `patterns`, a prefix with *) as an iptables argument; names with '+' cannot be said (see core/validate). */
function ifaceArg(name: string, patterns = false): string {
  if (!(patterns ? isInterfacePattern(name) : isInterfaceName(name))) {
    throw configError(`bad interface name ${JSON.stringify(name)} (${INTERFACE_NAME_RULE}${patterns ? ', or a prefix with *' : ''})`);
  }
  // nft's wildcard `veth*` is iptables' `veth+`.
  return name.endsWith('*') ? `${name.slice(0, -1)}+` : name;
}

function checkPort(p: unknown, what: string): number {
  if (!isPort(p)) throw configError(`${what} must be a port in 1..65535, got ${JSON.stringify(p)}`);
  return p;
}

/** Pure: the restore input for one family. */
function familyRestore(cfg: RulesConfig, family: 4 | 6): string {
  const C = IPT_CHAINS;
  const tproxy = cfg.mode === 'tproxy';
  const mark = formatMark(cfg.fwmark);
  const fullMark = `${mark}/0xffffffff`;
  const local = cfg.local === true;
  const ownMark = local ? formatMark(cfg.socketMark!) : undefined;
  const bypass = [...new Set((family === 4 ? cfg.bypass4 : cfg.bypass6).map((c) => normalizeCidr(c, family)))];
  const lan = [...new Set(cfg.lanInterfaces)].map((n) => ifaceArg(n, true));
  const masq = [...new Set(cfg.masquerade ?? [])].map((n) => ifaceArg(n));
  const bypassRules = (chain: string): string[] => [
    `-A ${chain} -m addrtype --dst-type LOCAL -j RETURN`,
    ...bypass.map((c) => `-A ${chain} -d ${c} -j RETURN`),
  ];
  const uplinks = [...new Set(cfg.uplinks ?? [])].filter((n) => n !== 'lo').map((n) => ifaceArg(n, true));
  const clientsOn = (cfg.clients4?.length ?? 0) + (cfg.clients6?.length ?? 0) > 0;
  const clients = [
    ...new Set((family === 4 ? (cfg.clients4 ?? []) : (cfg.clients6 ?? [])).map((c) => normalizeCidr(c, family, `clients${family}`))),
  ];
  // One jump per LAN interface and --clients CIDR (no ipset needed); with
  // --clients and none of this family, no jump: nobody of it is intercepted.
  const fromClients = (builtin: string, chain: string, op = '-A'): string[] =>
    (lan.length > 0 ? lan.map((i) => `-i ${i}`) : ['! -i lo']).flatMap((iif) =>
      clientsOn ? clients.map((c) => `${op} ${builtin} ${iif} -s ${c} -j ${chain}`) : [`${op} ${builtin} ${iif} -j ${chain}`],
    );
  // iptables cannot negate a list of interfaces in a jump: the uplinks return first thing in the chain.
  const uplinkReturns = (chain: string): string[] => uplinks.map((i) => `-A ${chain} -i ${i} -j RETURN`);
  const addr = family === 4 ? (cfg.tproxyAddress4 ?? '') : (cfg.tproxyAddress6 ?? '');
  const allPorts = cfg.tcp.flatMap((g) => g.ports).sort((a, b) => a - b);

  const mangle: string[] = [];
  const nat: string[] = [];
  const filter: string[] = [];
  const ownSocketJump = `-A PREROUTING -p tcp ! --syn -m socket --transparent -j ${C.divert}`;
  if (tproxy) {
    mangle.push(`:${C.pre} - [0:0]`, `:${C.divert} - [0:0]`);
    if (local) mangle.push(`:${C.out} - [0:0]`);
    mangle.push(`-A ${C.divert} -j MARK --set-xmark ${fullMark}`, `-A ${C.divert} -j ACCEPT`, ...uplinkReturns(C.pre));
    // Packets of connections our transparent sockets already own: deliver
    // locally. Not a new SYN, which may meet our TIME_WAIT socket of the
    // client's last connection from the same port: TPROXY below hands that
    // one to the listener (see the nftables plan).
    if (!cfg.transparentDirect) mangle.push(`-A ${C.pre} -p tcp ! --syn -m socket --transparent -j ${C.divert}`);
    // Groups for every destination (DNS) come before the local and bypass returns.
    const tproxyRules = (everywhere: boolean): void => {
      for (const [proto, groups] of [
        ['tcp', cfg.tcp],
        ['udp', cfg.udp],
      ] as const) {
        for (const g of groups) {
          if ((g.allDestinations === true) !== everywhere) continue;
          for (const ports of chunks(g.ports)) {
            mangle.push(
              `-A ${C.pre} -p ${proto} -m multiport --dports ${ports.join(',')} -j TPROXY${addr ? ` --on-ip ${addr}` : ''} --on-port ${g.listenPort} --tproxy-mark ${fullMark}`,
            );
          }
        }
      }
    };
    tproxyRules(true);
    mangle.push(...bypassRules(C.pre));
    tproxyRules(false);
    // --direct-source client: the answers to direct connections made from the
    // client's address arrive on the uplink too, which never jumps to C.pre.
    if (cfg.transparentDirect) mangle.push(ownSocketJump);
    mangle.push(...fromClients('PREROUTING', C.pre));
    if (local) {
      // This host's own connections come back in on lo after OUTPUT marked them.
      mangle.push(`-A PREROUTING -i lo -m mark --mark ${mark} -j ${C.pre}`);
      mangle.push(`-A ${C.out} -m mark --mark ${ownMark} -j RETURN`, `-A ${C.out} -o lo -j RETURN`, ...bypassRules(C.out));
      // A changed mark in mangle OUTPUT makes the kernel route the packet again: to lo, by the policy route.
      for (const ports of chunks(allPorts))
        mangle.push(`-A ${C.out} -p tcp -m multiport --dports ${ports.join(',')} -j MARK --set-xmark ${fullMark}`);
      mangle.push(`-A OUTPUT -j ${C.out}`);
    }
  } else {
    if (cfg.transparentDirect) {
      // The answers to direct connections made from the client's address (the nftables plan's divert chain).
      mangle.push(`:${C.divert} - [0:0]`, `-A ${C.divert} -j MARK --set-xmark ${fullMark}`, `-A ${C.divert} -j ACCEPT`, ownSocketJump);
    }
    nat.push(`:${C.pre} - [0:0]`);
    if (local) nat.push(`:${C.out} - [0:0]`);
    nat.push(...uplinkReturns(C.pre));
    const redirects = (chain: string, proto: 'tcp' | 'udp', groups: RulesConfig['tcp']): string[] =>
      groups.flatMap((g) =>
        chunks(g.ports).map(
          (ports) => `-A ${chain} -p ${proto} -m multiport --dports ${ports.join(',')} -j REDIRECT --to-ports ${g.listenPort}`,
        ),
      );
    // Groups for every destination (DNS) come before the local and bypass returns.
    const everywhere = (groups: RulesConfig['tcp']): RulesConfig['tcp'] => groups.filter((g) => g.allDestinations === true);
    const elsewhere = (groups: RulesConfig['tcp']): RulesConfig['tcp'] => groups.filter((g) => g.allDestinations !== true);
    nat.push(...redirects(C.pre, 'tcp', everywhere(cfg.tcp)), ...redirects(C.pre, 'udp', everywhere(cfg.udp)));
    nat.push(...bypassRules(C.pre));
    nat.push(
      ...redirects(C.pre, 'tcp', elsewhere(cfg.tcp)),
      ...redirects(C.pre, 'udp', elsewhere(cfg.udp)),
      ...fromClients('PREROUTING', C.pre),
    );
    if (local) {
      nat.push(
        `-A ${C.out} -m mark --mark ${ownMark} -j RETURN`,
        `-A ${C.out} -o lo -j RETURN`,
        ...bypassRules(C.out),
        ...redirects(C.out, 'tcp', cfg.tcp),
      );
      nat.push(`-A OUTPUT -j ${C.out}`);
    }
  }
  if (masq.length > 0) {
    nat.push(`:${C.post} - [0:0]`, ...masq.map((i) => `-A ${C.post} -o ${i} -j MASQUERADE`), `-A POSTROUTING -j ${C.post}`);
  }
  if (cfg.rejectQuic) {
    filter.push(`:${C.quic} - [0:0]`, ...uplinkReturns(C.quic), ...bypass.map((c) => `-A ${C.quic} -d ${c} -j RETURN`));
    filter.push(
      `-A ${C.quic} -p udp --dport 443 -j REJECT --reject-with ${family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable'}`,
    );
    filter.push(...fromClients('FORWARD', C.quic));
    if (local) filter.push(`-A OUTPUT -j ${C.quic}`);
  }
  if (cfg.failClosed) {
    // With the rules left and no listener, REDIRECT meets a closed port (the
    // kernel resets) and TPROXY drops the packet (xt_TPROXY: no socket), so
    // neither forwards. This chain refuses what would still be forwarded
    // (flows conntrack knew before the rules), as nftables' closed_forward does.
    // Inserted first: an ACCEPT earlier in FORWARD must not let it pass.
    const rejects = (everywhere: boolean): string[] =>
      (['tcp', 'udp'] as const).flatMap((proto) => {
        const ports = (proto === 'tcp' ? cfg.tcp : cfg.udp)
          .filter((g) => (g.allDestinations === true) === everywhere)
          .flatMap((g) => g.ports);
        const how = proto === 'tcp' ? 'tcp-reset' : family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable';
        return chunks([...new Set(ports)].sort((a, b) => a - b)).map(
          (ps) => `-A ${C.closed} -p ${proto} -m multiport --dports ${ps.join(',')} -j REJECT --reject-with ${how}`,
        );
      });
    filter.push(
      `:${C.closed} - [0:0]`,
      ...uplinkReturns(C.closed),
      ...rejects(true),
      ...bypass.map((c) => `-A ${C.closed} -d ${c} -j RETURN`),
      ...rejects(false),
    );
    filter.push(...fromClients('FORWARD', C.closed, '-I'));
  }
  if (!tproxy) {
    // REDIRECT needs listeners on every address: only what a REDIRECT sent
    // there may reach them (see the nftables plan; UDP DNS would be an open resolver).
    const ports = [...new Set([...cfg.tcp, ...cfg.udp].map((g) => g.listenPort))].sort((a, b) => a - b);
    filter.push(`:${C.input} - [0:0]`);
    for (const proto of ['tcp', 'udp']) {
      for (const ps of chunks(ports))
        filter.push(
          `-A ${C.input} -p ${proto} -m multiport --dports ${ps.join(',')} -m conntrack --ctdir ORIGINAL ! --ctstate DNAT -j DROP`,
        );
    }
    filter.push(`-I INPUT -j ${C.input}`);
  }
  const out: string[] = [];
  for (const [table, lines] of [
    ['mangle', mangle],
    ['nat', nat],
    ['filter', filter],
  ] as const) {
    if (lines.length > 0) out.push(`*${table}`, ...lines, 'COMMIT');
  }
  return `${out.join('\n')}\n`;
}

/** Pure: what apply() will install with this variant. */
export function planIptables(cfg: RulesConfig, variant: IptablesVariant = 'iptables'): IptablesPlan {
  if (cfg.mode !== 'tproxy' && cfg.mode !== 'redirect')
    throw configError(`mode must be "tproxy" or "redirect", got ${JSON.stringify(cfg.mode)}`);
  if (!cfg.ipv4 && !cfg.ipv6) throw configError('at least one of ipv4/ipv6 must be enabled');
  validatePolicyIds(cfg);
  if ((cfg.tcp?.length ?? 0) + (cfg.udp?.length ?? 0) === 0) throw configError('nothing to intercept: no tcp or udp port groups');
  for (const [proto, groups] of [
    ['tcp', cfg.tcp ?? []],
    ['udp', cfg.udp ?? []],
  ] as const) {
    for (const [i, g] of groups.entries()) {
      checkPort(g.listenPort, `${proto}[${i}].listenPort`);
      if (!Array.isArray(g.ports) || g.ports.length === 0) throw configError(`${proto}[${i}].ports must list at least one port`);
      for (const p of g.ports) checkPort(p, `${proto}[${i}].ports`);
    }
  }
  if (cfg.local && (cfg.socketMark === undefined || cfg.socketMark < 1 || cfg.socketMark > 0xffffffff || cfg.socketMark === cfg.fwmark)) {
    throw configError(`local interception needs a socketMark different from fwmark, got ${String(cfg.socketMark)}`);
  }
  const tproxy = cfg.mode === 'tproxy';
  const families: Array<4 | 6> = [...(cfg.ipv4 ? [4 as const] : []), ...(cfg.ipv6 ? [6 as const] : [])];
  const s: string[] = [
    `transgate netfilter rules: ${cfg.mode} mode, ${families.map((f) => `IPv${f}`).join(' + ')}, ${variant} (chains ${Object.values(IPT_CHAINS).join(', ')})`,
    cfg.lanInterfaces.length > 0
      ? `  intercepting traffic arriving on: ${cfg.lanInterfaces.join(', ')}`
      : '  intercepting traffic arriving on: every interface except lo',
    ...cfg.tcp.map((g) => `  TCP ${g.ports.join(', ')} → ${tproxy ? 'TPROXY' : 'REDIRECT'} to port ${g.listenPort}`),
    ...cfg.udp.map((g) => `  UDP ${g.ports.join(', ')} → ${tproxy ? 'TPROXY' : 'REDIRECT'} to port ${g.listenPort}`),
  ];
  if ((cfg.uplinks ?? []).length > 0) s.push(`  never intercepted: traffic arriving on the uplink(s) ${cfg.uplinks!.join(', ')}`);
  if ((cfg.clients4?.length ?? 0) + (cfg.clients6?.length ?? 0) > 0) {
    s.push(
      `  only these sources are intercepted (--clients): ${[...(cfg.clients4 ?? []), ...(cfg.clients6 ?? [])].join(', ')}; other sources are forwarded untouched`,
    );
  }
  if (cfg.local)
    s.push(
      `  this host's own connections are intercepted too; transgate's sockets carry mark ${formatMark(cfg.socketMark!)} and are skipped`,
    );
  s.push(cfg.rejectQuic ? '  QUIC: UDP port 443 from clients is rejected (ICMP port unreachable)' : '  QUIC: UDP port 443 is left alone');
  if (cfg.failClosed) {
    s.push(
      `  fail-closed: the rules stay when transgate stops or crashes (chain ${IPT_CHAINS.closed} rejects what is not intercepted${tproxy ? '; TPROXY with no listener drops, so clients time out instead of getting a reset' : ''}); 'transgate clear' removes them`,
    );
  }
  if (!tproxy) s.push(`  listener ports: packets not sent there by REDIRECT are dropped (chain ${IPT_CHAINS.input})`);
  if ((cfg.masquerade ?? []).length > 0) s.push(`  masquerade: forwarded traffic leaving ${cfg.masquerade!.join(', ')}`);
  if (tproxy || cfg.transparentDirect)
    s.push(`  policy routing: packets marked ${formatMark(cfg.fwmark)} use routing table ${cfg.routeTable}`);
  if (cfg.transparentDirect)
    s.push(
      `  direct connections leave from the client's address (--direct-source client): their answers are marked ${formatMark(cfg.fwmark)} (chain ${IPT_CHAINS.divert}) and delivered locally`,
    );
  return {
    backend: variant,
    mode: cfg.mode,
    ...(cfg.ipv4 ? { restore4: familyRestore(cfg, 4) } : {}),
    ...(cfg.ipv6 ? { restore6: familyRestore(cfg, 6) } : {}),
    routes: tproxy || cfg.transparentDirect ? families.map((f) => policyRoute(f, cfg)) : [],
    summary: s.join('\n'),
    fwmark: cfg.fwmark,
    routeTable: cfg.routeTable,
    rulePriority: cfg.rulePriority,
  };
}

/** What `transgate rules --firewall iptables` prints. */
export function renderIptablesPlan(p: IptablesPlan): string {
  const parts = [p.summary];
  for (const f of [4, 6] as const) {
    const text = f === 4 ? p.restore4 : p.restore6;
    if (!text) continue;
    const b = iptablesBinaries(p.backend, f);
    parts.push('', `# IPv${f}: after removing earlier transgate chains and jumps`, `${b.restore} --noflush <<'EOF'`, text.trimEnd(), 'EOF');
  }
  if (p.routes.length > 0) {
    parts.push('', '# policy routing');
    for (const r of p.routes) parts.push(`ip ${formatCommand(r.routeArgs)}`, `ip ${formatCommand(r.ruleArgs)}`);
  }
  return `${parts.join('\n')}\n`;
}

/**
 * Pure: the `-D` commands that remove our jumps from one built-in chain,
 * given `iptables -t T -S CHAIN` output.
 */
export function jumpDeletes(listing: string, chain: string): string[][] {
  const out: string[][] = [];
  for (const line of listing.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== '-A' || words[1] !== chain) continue;
    const j = words.indexOf('-j');
    if (j < 0 || !/^TRANSGATE(_[A-Z]+)?$/.test(words[j + 1] ?? '')) continue;
    out.push(['-D', ...words.slice(1)]);
  }
  return out;
}

function restoreError(bin: string, stderr: string): GatewayError {
  const text = stderr.trim().split('\n').slice(0, 6).join('\n') || 'failed';
  if (/Permission denied|Operation not permitted|you must be root/i.test(text)) {
    return new GatewayError(ErrorCodes.PERMISSION, `${bin}: ${text}: run as root or with CAP_NET_ADMIN (sudo -E npx transgate)`);
  }
  const mod = /(TPROXY|socket|addrtype|multiport|REDIRECT|MASQUERADE|REJECT)/.exec(text);
  const hint =
    /No chain\/target\/match|Couldn't load|does not exist|not supported/i.test(text) && mod
      ? `: the kernel lacks the ${mod[1]} extension (xt_${mod[1]})`
      : '';
  return new GatewayError(ErrorCodes.RULES, `${bin} failed${hint}: ${text}`);
}

const DEFAULT_IDS: PolicyIds = { fwmark: 0x7467, routeTable: 7467 };

export class IptablesRuleBackend implements RuleBackend<IptablesPlan> {
  readonly name: IptablesVariant;
  private readonly runner: Runner;
  private applied: PolicyIds | undefined;

  constructor(variant: IptablesVariant = 'iptables', options: RuleBackendOptions = {}) {
    this.name = variant;
    const base = options.runner ?? run;
    this.runner = options.netns ? netnsRunner(options.netns, base) : base;
  }

  plan(cfg: RulesConfig): IptablesPlan {
    return planIptables(cfg, this.name);
  }

  /** Checks the binaries exist and may be used (listing needs CAP_NET_ADMIN too). */
  async check(x: IptablesPlan | RulesConfig): Promise<void> {
    const p = this.toPlan(x);
    for (const f of [4, 6] as const) {
      if (!(f === 4 ? p.restore4 : p.restore6)) continue;
      const b = iptablesBinaries(this.name, f);
      const res = await this.runner([b.cmd, '-w', '-t', 'mangle', '-S', 'PREROUTING']);
      if (res.code !== 0) throw restoreError(b.cmd, res.stderr);
    }
  }

  async apply(x: IptablesPlan | RulesConfig): Promise<IptablesPlan> {
    const p = this.toPlan(x);
    const ids = { fwmark: p.fwmark, routeTable: p.routeTable };
    await this.check(p);
    await this.removeChains();
    try {
      for (const f of [4, 6] as const) {
        const text = f === 4 ? p.restore4 : p.restore6;
        if (!text) continue;
        const b = iptablesBinaries(this.name, f);
        const res = await this.runner([b.restore, '-w', '--noflush'], { input: text, timeoutMs: 30_000 });
        if (res.code !== 0) throw restoreError(`${b.restore} --noflush`, res.stderr);
      }
      if (p.routes.length > 0) await installPolicyRoutes(this.runner, p.routes, ids);
      else await removePolicyRoutes(this.runner, ids);
    } catch (err) {
      try {
        await this.revert(ids);
      } catch {
        /* report the original failure */
      }
      throw withContext(`apply ${this.name} rules (reverted)`, err, ErrorCodes.RULES);
    }
    this.applied = ids;
    return p;
  }

  async revert(target?: RevertTarget<IptablesPlan>): Promise<boolean> {
    const ids = target ? { fwmark: target.fwmark, routeTable: target.routeTable } : (this.applied ?? DEFAULT_IDS);
    validatePolicyIds(ids);
    let removed = await this.removeChains();
    if ((await removePolicyRoutes(this.runner, ids)) > 0) removed = true;
    this.applied = undefined;
    return removed;
  }

  clear(target?: RevertTarget<IptablesPlan>): Promise<boolean> {
    return this.revert(target);
  }

  async isInstalled(): Promise<boolean> {
    return (await this.describeChains()).length > 0;
  }

  async describeInstalled(): Promise<string> {
    const lines = await this.describeChains();
    return lines.length > 0
      ? `${this.name} rules of transgate:\n${lines.map((l) => `  ${l}`).join('\n')}\n`
      : `${this.name}: no transgate chains\n`;
  }

  /** Every rule line that names one of our chains, both families ("ip6tables -t nat: -A ..."). */
  private async describeChains(): Promise<string[]> {
    const out: string[] = [];
    for (const f of [4, 6] as const) {
      const b = iptablesBinaries(this.name, f);
      for (const table of ['mangle', 'nat', 'filter']) {
        let res;
        try {
          res = await this.runner([b.cmd, '-w', '-t', table, '-S']);
        } catch (err) {
          if (isNotFound(err)) return out;
          throw err;
        }
        if (res.code !== 0) continue;
        for (const l of res.stdout.split('\n')) if (/TRANSGATE/.test(l)) out.push(`${b.cmd} -t ${table}: ${l.trim()}`);
      }
    }
    return out;
  }

  /** Removes our jumps, then flushes and deletes our chains, both families. Idempotent; a missing binary means nothing to remove. */
  private async removeChains(): Promise<boolean> {
    let removed = false;
    for (const f of [4, 6] as const) {
      const b = iptablesBinaries(this.name, f);
      try {
        for (const [table, chain] of HOOKS) {
          const res = await this.runner([b.cmd, '-w', '-t', table, '-S', chain]);
          if (res.code !== 0) {
            if (/Permission denied|Operation not permitted/i.test(res.stderr)) throw restoreError(b.cmd, res.stderr);
            continue;
          }
          for (const del of jumpDeletes(res.stdout, chain)) {
            const d = await this.runner([b.cmd, '-w', '-t', table, ...del]);
            if (d.code === 0) removed = true;
          }
        }
        for (const [table, chain] of OWN_CHAINS) {
          const fl = await this.runner([b.cmd, '-w', '-t', table, '-F', chain]);
          if (fl.code !== 0) continue;
          const x = await this.runner([b.cmd, '-w', '-t', table, '-X', chain]);
          if (x.code !== 0) throw restoreError(`${b.cmd} -t ${table} -X ${chain}`, x.stderr);
          removed = true;
        }
      } catch (err) {
        if (isNotFound(err)) continue;
        throw err;
      }
    }
    return removed;
  }

  private toPlan(x: IptablesPlan | RulesConfig): IptablesPlan {
    return 'summary' in x && 'backend' in x ? x : planIptables(x, this.name);
  }
}

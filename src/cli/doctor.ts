/**
 * `transgate doctor`: checks this host, its kernel and the upstream proxy,
 * each with OK / WARN / FAIL and, for anything not OK, a concrete fix.
 * Changes nothing, except a throwaway nftables check (`nft -c`) that the
 * kernel validates and discards. Exit status 1 on any FAIL.
 */
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/config';
import type { ProxyEndpoint } from '../config/proxy-url';
import { ErrorCodes, GatewayError } from '../core/errors';
import { formatIPv4, formatIPv6, maskBytes, parseIPv4Bytes, parseIPv6Bytes } from '../core/ip';
import { parseAuthority } from '../core/names';
import { hostPort } from '../core/types';
import { interfaceMatches } from '../core/validate';
import { backendName, haveBinary, rulesConfigFor, uplinksFor } from '../netfilter/backend';
import { run, type Runner } from '../netfilter/exec';
import { NftablesRuleBackend } from '../netfilter/index';
import { IptablesRuleBackend, iptablesBinaries } from '../netfilter/iptables';
import {
  bridgesBlockingTproxy,
  hostBridges,
  ipv4Interfaces,
  ipv6Interfaces,
  loadSysctlState,
  readSysctl,
  type SysctlReader,
} from '../netfilter/sysctl';
import { openTunnel } from '../outbound/http-connect';

export type CheckStatus = 'OK' | 'WARN' | 'FAIL';

export interface Check {
  /** Short stable name: privileges, kernel, sysctl, return-path, uplink, proxy, leftovers. */
  name: string;
  status: CheckStatus;
  message: string;
  /** What to do about it (WARN and FAIL). */
  fix?: string;
}

export interface DoctorDeps {
  runner: Runner;
  readSysctl: SysctlReader;
  isRoot: () => boolean;
  /** Other transgate processes in this network namespace. */
  runningTransgate: () => number[];
  /** Bridges on this host (default: read from sysfs). */
  bridges?: () => string[];
  timeoutMs: number;
}

const ok = (name: string, message: string): Check => ({ name, status: 'OK', message });
const warn = (name: string, message: string, fix: string): Check => ({ name, status: 'WARN', message, fix });
const fail = (name: string, message: string, fix: string): Check => ({ name, status: 'FAIL', message, fix });

/** CAP_NET_ADMIN (bit 12) in the effective set, or uid 0. */
export function hasNetAdmin(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? (BigInt(`0x${m[1]}`) & (1n << 12n)) !== 0n : false;
  } catch {
    return false;
  }
}

/** Pids of other transgate processes (bin/transgate.js run, not doctor/rules/clear) in our network namespace. */
export function runningTransgate(): number[] {
  let ours: string;
  try {
    ours = fs.readlinkSync('/proc/self/ns/net');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (!argv.some((a) => /(^|\/)transgate(\.js)?$/.test(a))) continue;
      if (argv.some((a) => a === 'doctor' || a === 'rules' || a === 'clear')) continue;
      if (fs.readlinkSync(`/proc/${e}/ns/net`) !== ours) continue;
      out.push(Number(e));
    } catch {
      /* gone or not ours to read */
    }
  }
  return out;
}

export const defaultDoctorDeps = (): DoctorDeps => ({
  runner: run,
  readSysctl,
  isRoot: hasNetAdmin,
  runningTransgate,
  timeoutMs: 5000,
});

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------

function checkPrivileges(d: DoctorDeps): Check {
  return d.isRoot()
    ? ok('privileges', 'running with CAP_NET_ADMIN (root)')
    : fail(
        'privileges',
        'not root and no CAP_NET_ADMIN: transgate cannot install rules, and most checks below cannot look',
        'run as root: sudo -E npx transgate doctor (-E keeps http_proxy)',
      );
}

async function checkKernel(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const backend = backendName(cfg);
  const rc = rulesConfigFor(cfg);
  const out: Check[] = [];
  const what = cfg.mode === 'tproxy' ? 'TPROXY, socket match' : 'nat REDIRECT';
  try {
    if (backend === 'nftables') {
      if (!haveBinary('nft')) {
        out.push(fail('kernel', 'nft is not installed', 'apt-get install nftables (or use --firewall iptables)'));
        return out;
      }
      // nft -c: the kernel validates the whole transaction and throws it away.
      await new NftablesRuleBackend({ runner: d.runner }).check(rc);
      out.push(
        ok('kernel', `nftables accepts transgate's ${cfg.mode} ruleset (${what}, fib, sets) — checked with nft -c, nothing installed`),
      );
    } else {
      const b = iptablesBinaries(backend, 4);
      if (!haveBinary(b.cmd)) {
        out.push(fail('kernel', `${b.cmd} is not installed`, 'apt-get install iptables'));
        return out;
      }
      const plan = new IptablesRuleBackend(backend, { runner: d.runner }).plan(rc);
      for (const [f, text] of [
        [4, plan.restore4],
        [6, plan.restore6],
      ] as const) {
        if (!text) continue;
        const bin = iptablesBinaries(backend, f).restore;
        const res = await d.runner([bin, '--test', '--noflush'], { input: text });
        if (res.code !== 0) throw new Error(`${bin} --test: ${res.stderr.trim().split('\n')[0] ?? 'failed'}`);
      }
      out.push(ok('kernel', `${backend} accepts transgate's ${cfg.mode} rules (${what}) — checked with ${b.restore} --test`));
    }
  } catch (err) {
    out.push(
      fail(
        'kernel',
        `the kernel or ${backend} rejects transgate's rules: ${errText(err)}`,
        cfg.mode === 'tproxy'
          ? 'load the modules (modprobe nft_tproxy nft_socket xt_TPROXY xt_socket) or try --mode redirect'
          : 'load the modules (modprobe nft_chain_nat nft_redir) or try --mode tproxy',
      ),
    );
  }
  if (cfg.mode === 'tproxy') {
    const res = await d.runner(['ip', '-4', 'rule', 'show']).catch((e: unknown) => ({ code: -1, stdout: '', stderr: errText(e) }));
    out.push(
      res.code === 0
        ? ok('kernel', 'policy routing (ip rule) is available')
        : fail(
            'kernel',
            `policy routing is not available: ${res.stderr.trim()}`,
            'a kernel with CONFIG_IP_MULTIPLE_TABLES, and iproute2 installed; or --mode redirect',
          ),
    );
  }
  return out;
}

function checkSysctls(cfg: Config, d: DoctorDeps): Check[] {
  const out: Check[] = [];
  const read = (path: string[]): string | undefined => {
    try {
      return d.readSysctl(path);
    } catch {
      return undefined;
    }
  };
  const auto = '';
  const persist =
    'make it permanent in /etc/sysctl.d/99-transgate.conf (systemd-networkd resets it unless the .network file says IPForward=yes)' +
    (cfg.sysctl ? '; `transgate run` also sets it while it runs' : ' (--no-sysctl: transgate leaves it alone)');
  if (cfg.ipv4) {
    const v = read(['net', 'ipv4', 'ip_forward']);
    out.push(
      v === '1'
        ? ok('sysctl', 'net.ipv4.ip_forward = 1')
        : fail(
            'sysctl',
            `net.ipv4.ip_forward = ${v ?? '?'}: the clients' other IPv4 traffic dies at this box`,
            `${auto}sysctl -w net.ipv4.ip_forward=1; ${persist}`,
          ),
    );
    const lan = cfg.lan.length > 0 ? cfg.lan.filter((i) => !i.endsWith('*')) : ipv4Interfaces();
    const on = [['all'], ...lan.map((i) => [i])]
      .filter(([i]) => read(['net', 'ipv4', 'conf', i!, 'send_redirects']) === '1')
      .map(([i]) => i!);
    // The kernel sends redirects when `all` OR the interface says so.
    out.push(
      on.length === 0
        ? ok('sysctl', 'send_redirects is off: clients are not told to skip this gateway')
        : warn(
            'sysctl',
            `send_redirects is on (${on.map((i) => `net.ipv4.conf.${i.replace(/\./g, '/')}.send_redirects`).join(', ')}): ICMP redirects teach clients on the same subnet as the router to bypass this gateway`,
            `sysctl -w ${on.map((i) => `net.ipv4.conf.${i.replace(/\./g, '/')}.send_redirects=0`).join(' ')}${cfg.sysctl ? ' (`transgate run` also does this while it runs)' : ''}`,
          ),
    );
    const rp = read(['net', 'ipv4', 'conf', 'all', 'rp_filter']);
    out.push(
      ok(
        'sysctl',
        `net.ipv4.conf.all.rp_filter = ${rp ?? '?'}: strict (1) and loose (2) both work with ${cfg.mode}, the clients' source stays on the interface it came in on`,
      ),
    );
  }
  if (!cfg.bridge && cfg.mode === 'tproxy') {
    const blocked = bridgesBlockingTproxy({ lan: cfg.lan, read: (p) => read(p), bridges: d.bridges ? d.bridges() : hostBridges() });
    if (blocked.length > 0) {
      out.push(
        fail(
          'sysctl',
          `net.bridge.bridge-nf-call-iptables = 1 and clients arrive through bridge ${blocked.join(', ')}: br_netfilter runs TPROXY inside the bridge path, where intercepted connections never complete`,
          '--mode redirect (works with br_netfilter; what Docker hosts need), or sysctl -w net.bridge.bridge-nf-call-iptables=0 if nothing here needs it (Docker does, for its filtering between containers)',
        ),
      );
    }
  }
  if (cfg.bridge && cfg.mode === 'tproxy') {
    const v = read(['net', 'bridge', 'bridge-nf-call-iptables']);
    if (v === '1') {
      const msg =
        'net.bridge.bridge-nf-call-iptables = 1: br_netfilter runs TPROXY inside the bridge path, where intercepted connections never complete';
      const fix = 'sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0, or --mode redirect';
      out.push(cfg.sysctl ? warn('sysctl', `${msg} (\`transgate run\` sets it to 0 while it runs)`, fix) : fail('sysctl', msg, fix));
    } else {
      out.push(ok('sysctl', `bridge mode: net.bridge.bridge-nf-call-iptables = ${v ?? 'absent (no br_netfilter)'}`));
    }
  }
  if (cfg.ipv6) {
    const v = read(['net', 'ipv6', 'conf', 'all', 'forwarding']);
    if (v === undefined) out.push(warn('sysctl', 'IPv6 is not available here', 'run with --no-ipv6, or enable IPv6'));
    // With forwarding on, accept_ra=1 means RAs are ignored: an uplink's RA default route expires.
    const uplinks = ipv6Interfaces().filter((i) => !cfg.lan.includes(i));
    const ignoring = uplinks.filter((i) => read(['net', 'ipv6', 'conf', i, 'accept_ra']) === '1');
    if (v === '1' && ignoring.length > 0) {
      out.push(
        warn(
          'sysctl',
          `IPv6 forwarding is on and accept_ra is 1 on ${ignoring.join(', ')}: router advertisements are ignored there, so a default route learned from them expires`,
          `sysctl -w ${ignoring.map((i) => `net.ipv6.conf.${i.replace(/\./g, '/')}.accept_ra=2`).join(' ')}${cfg.sysctl ? ' (`transgate run` does this while it runs)' : ''}`,
        ),
      );
    }
    if (v !== undefined)
      out.push(
        v === '1'
          ? ok('sysctl', 'net.ipv6.conf.all.forwarding = 1')
          : fail(
              'sysctl',
              `net.ipv6.conf.all.forwarding = ${v}: the clients' other IPv6 traffic dies at this box`,
              `${auto}sysctl -w net.ipv6.conf.all.forwarding=1; ${persist}`,
            ),
      );
  }
  return out;
}

interface IpAddr {
  ifname: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope: string }>;
}

/** Another address in the subnet of `local` (the first host that is not `local`), for route look-ups. */
export function neighbourOf(local: string, prefixlen: number, family: 4 | 6): string | undefined {
  // Host routes and point-to-point /31, /127 have no other host to ask about.
  if (prefixlen > (family === 4 ? 30 : 126)) return undefined;
  const bytes = family === 4 ? parseIPv4Bytes(local) : parseIPv6Bytes(local);
  if (!bytes) return undefined;
  // The prefix leaves at least two host bits, so the network's last byte has room for +1 and +2.
  const host = maskBytes(bytes.slice(), prefixlen);
  const last = host.length - 1;
  host[last] = host[last]! + 1;
  if (host.every((b, i) => b === bytes[i])) host[last] = host[last]! + 1;
  return family === 4 ? formatIPv4(host) : formatIPv6(host);
}

/**
 * Whether replies can come back through this box. We cannot see the
 * clients' default route; what we can check: every LAN interface has an
 * address and a connected route to its prefix (so replies to the clients go
 * out where they came in), and this box has a default route (so forwarded
 * and proxied traffic can leave).
 */
async function checkReturnPath(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const out: Check[] = [];
  const res = await d.runner(['ip', '-j', 'addr', 'show']).catch(() => undefined);
  if (!res || res.code !== 0) return [warn('return-path', 'cannot list addresses (ip -j addr show failed)', 'install iproute2')];
  let addrs: IpAddr[];
  try {
    addrs = JSON.parse(res.stdout) as IpAddr[];
  } catch {
    return [warn('return-path', 'cannot parse `ip -j addr show`', 'install a newer iproute2')];
  }
  const lan =
    cfg.lan.length > 0 ? addrs.filter((a) => cfg.lan.some((l) => interfaceMatches(l, a.ifname))) : addrs.filter((a) => a.ifname !== 'lo');
  if (cfg.lan.length > 0) {
    for (const l of cfg.lan) {
      if (!lan.some((a) => interfaceMatches(l, a.ifname))) {
        out.push(fail('return-path', `--lan ${l}: no such interface`, `ip link show; pass the interface your clients are on`));
      }
    }
  }
  const prefixes: string[] = [];
  const asymmetric = new Set<string>();
  for (const a of lan) {
    for (const i of a.addr_info ?? []) {
      if (i.scope !== 'global') continue;
      if ((i.family === 'inet' && !cfg.ipv4) || (i.family === 'inet6' && !cfg.ipv6)) continue;
      const r = await d.runner(['ip', i.family === 'inet6' ? '-6' : '-4', 'route', 'show', 'dev', a.ifname, 'proto', 'kernel']);
      const hasConnected = r.code === 0 && r.stdout.trim().length > 0;
      const p = `${i.local}/${i.prefixlen} on ${a.ifname}`;
      prefixes.push(p);
      if (!hasConnected) {
        out.push(
          warn(
            'return-path',
            `no connected route for ${p}: replies to clients there may leave by another way`,
            `ip route add <client prefix> dev ${a.ifname}, or give ${a.ifname} an address in the clients' subnet`,
          ),
        );
        continue;
      }
      // A more specific route (or a policy rule) can still send replies to
      // part of the clients' subnet out another interface: ask the kernel
      // where a reply to a neighbour of ours would go.
      const probe = neighbourOf(i.local, i.prefixlen, i.family === 'inet6' ? 6 : 4);
      if (probe) {
        const g = await d.runner(['ip', i.family === 'inet6' ? '-6' : '-4', 'route', 'get', probe]);
        const dev = /\bdev (\S+)/.exec(g.stdout)?.[1];
        if (g.code === 0 && dev && dev !== a.ifname) {
          asymmetric.add(p);
          out.push(
            fail(
              'return-path',
              `replies to clients in ${p} leave by ${dev}, not ${a.ifname} (ip route get ${probe}: ${g.stdout.trim().split('\n')[0]}): the clients see answers from the wrong way or none (asymmetric routing)`,
              `remove the route that takes ${probe} out of ${dev} (ip route show match ${probe}), or give the clients a subnet of their own on ${a.ifname}`,
            ),
          );
        }
      }
    }
  }
  if (prefixes.length === 0) {
    out.push(
      warn(
        'return-path',
        `no global address on ${cfg.lan.length > 0 ? cfg.lan.join(', ') : 'any interface'}: clients cannot use this box as their gateway`,
        "give the LAN interface an address in the clients' subnet",
      ),
    );
  } else if (prefixes.some((p) => !asymmetric.has(p))) {
    out.push(
      ok(
        'return-path',
        `this box's LAN addresses ${prefixes.filter((p) => !asymmetric.has(p)).join(', ')} have connected routes, so replies to clients there leave where the clients came in; the clients must use one of them as their default gateway (checked: addresses, connected and default routes; not checkable from here: the clients' own routes)`,
      ),
    );
  }
  for (const f of [...(cfg.ipv4 ? [4] : []), ...(cfg.ipv6 ? [6] : [])]) {
    const r = await d.runner(['ip', `-${f}`, 'route', 'show', 'default']);
    if (r.code === 0 && r.stdout.trim()) out.push(ok('return-path', `IPv${f} default route: ${r.stdout.trim().split('\n')[0]}`));
    else
      out.push(
        warn(
          'return-path',
          `no IPv${f} default route: forwarded traffic and the proxy connection may have nowhere to go`,
          `ip -${f} route add default via <uplink router>`,
        ),
      );
  }
  return out;
}

/**
 * Whether hosts on the uplink can use the gateway. The rules leave the
 * uplinks alone, except on a one-armed gateway and where --lan names one:
 * then any host there that routes through this box reaches the proxy as
 * this box and is answered by its DNS.
 */
async function checkUplink(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const j = await uplinksFor(cfg, d.runner);
  const why = (n: string): string =>
    j.uplinks
      .filter((u) => u.name === n)
      .map((u) => u.why)
      .join(', ');
  const clients = [...cfg.clients4, ...cfg.clients6];
  const out: Check[] = [];
  if (j.excluded.length > 0) {
    out.push(
      ok(
        'uplink',
        `${j.excluded.map((n) => `${n} (${why(n)})`).join(', ')}: traffic arriving there is not intercepted, so hosts on the uplink cannot use the proxy or this box's DNS`,
      ),
    );
  }
  for (const i of j.intercepted) {
    const msg = `uplink ${i.name} (${why(i.name)}) is intercepted, ${i.why}: any host there that routes through this box reaches the proxy as this box and is answered by its DNS`;
    out.push(
      clients.length > 0
        ? ok('uplink', `${msg}, but only sources in --clients ${clients.join(',')} are intercepted`)
        : warn(
            'uplink',
            msg,
            i.why.startsWith('--lan')
              ? `leave ${i.name} out of --lan, or name the clients' subnets with --clients CIDR,...`
              : "name the clients' subnets with --clients CIDR,...",
          ),
    );
  }
  if (j.uplinks.length === 0)
    out.push(ok('uplink', 'no uplink found (no default route, no route to a proxy address): no interface is excluded'));
  for (const n of j.notes) out.push(warn('uplink', n, 'check the routes (ip route) and the proxy URL'));
  return out;
}

/**
 * --doctor-target as the CONNECT it becomes: a validated host and a port
 * that must be written (no default). The host goes into a request line, so
 * it is parsed as any authority is (core/names): `[v6]:port`, canonical.
 */
function splitTarget(target: string): { host: string; port: number } | undefined {
  // Port 0 stands for "none given" (`host`, `host:`): parseAuthority never returns it for a written port.
  const a = parseAuthority(target, 0);
  return a === undefined || a.port === 0 ? undefined : { host: a.target.host, port: a.port };
}

async function tryConnect(proxy: ProxyEndpoint, host: string, port: number, timeoutMs: number): Promise<GatewayError | undefined> {
  try {
    const sock = await openTunnel({ proxy, host, port, timeoutMs });
    sock.destroy();
    return undefined;
  } catch (err) {
    return err instanceof GatewayError ? err : new GatewayError(ErrorCodes.UPSTREAM_STATUS, errText(err));
  }
}

async function checkProxy(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const out: Check[] = [];
  const target = splitTarget(cfg.doctorTarget);
  if (!target) return [fail('proxy', `--doctor-target '${cfg.doctorTarget}' is not host:port`, 'e.g. --doctor-target example.com:443')];
  const seen = new Set<string>();
  const proxies = [
    ['http_proxy', cfg.upstream.http],
    ['https_proxy', cfg.upstream.https],
  ] as const;
  if (!cfg.upstream.http && !cfg.upstream.https) {
    return [
      warn(
        'proxy',
        'no http_proxy/https_proxy set: transgate would connect directly',
        'export http_proxy=http://user:password@proxy:3128 (and sudo -E to keep it)',
      ),
    ];
  }
  for (const [name, p] of proxies) {
    if (!p || seen.has(p.display + (p.authorization ?? ''))) continue;
    seen.add(p.display + (p.authorization ?? ''));
    const where = hostPort(p.host, p.port);
    // Reachability first: a refused TCP connect says more than a failed CONNECT.
    const reach = await new Promise<string | undefined>((resolve) => {
      const s = net.connect({ host: p.host, port: p.port });
      const t = setTimeout(() => {
        s.destroy();
        resolve(`no answer within ${d.timeoutMs} ms`);
      }, d.timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        s.destroy();
        resolve(undefined);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(t);
        resolve(e.code ?? e.message);
      });
    });
    if (reach) {
      out.push(
        fail(
          'proxy',
          `${name} ${p.display}: cannot connect to ${where} (${reach})`,
          `check the host and port in ${name}, that the proxy runs, and that this box may reach it (firewall, route)`,
        ),
      );
      continue;
    }
    out.push(ok('proxy', `${name} ${p.display}: reachable`));
    const e443 = await tryConnect(p, target.host, target.port, d.timeoutMs);
    if (!e443) {
      out.push(
        ok('proxy', `${name}: CONNECT ${hostPort(target.host, target.port)} allowed${p.authorization ? ' (credentials accepted)' : ''}`),
      );
    } else if (e443.status === 407) {
      out.push(
        fail(
          'proxy',
          `${name}: CONNECT ${hostPort(target.host, target.port)}: 407, the proxy ${p.authorization ? 'rejects the credentials' : 'wants credentials'}`,
          p.authorization
            ? `check user and password in ${name} (percent-encode special characters: @ is %40, space is %20)`
            : `put them in the URL: ${name}=http://user:password@${where}`,
        ),
      );
      continue;
    } else if (e443.status === 403) {
      out.push(
        fail(
          'proxy',
          `${name}: CONNECT ${hostPort(target.host, target.port)}: 403, refused by the proxy's policy`,
          'try another --doctor-target the proxy allows, or ask the proxy admins to allow it',
        ),
      );
      continue;
    } else {
      out.push(
        fail(
          'proxy',
          `${name}: CONNECT ${hostPort(target.host, target.port)} failed: ${e443.message}`,
          '--doctor-target a name the proxy can resolve and reach (e.g. example.com:443)',
        ),
      );
      continue;
    }
    const tcpProxy = cfg.upstream.https ?? cfg.upstream.http;
    if (cfg.tcpPorts.length > 0 && tcpProxy && tcpProxy.display === p.display && tcpProxy.authorization === p.authorization) {
      const port = cfg.tcpPorts[0]!;
      const eOther = await tryConnect(p, target.host, port, d.timeoutMs);
      if (!eOther) out.push(ok('proxy', `${name}: CONNECT to port ${port} (--tcp-proxy-dports) allowed`));
      else if (eOther.status === 403 || eOther.status === 405)
        out.push(
          warn(
            'proxy',
            `${name}: CONNECT ${hostPort(target.host, port)}: ${eOther.status}, the proxy allows CONNECT to 443 only: connections to --tcp-proxy-dports ${cfg.tcpPorts.join(',')} will be refused`,
            'ask for those ports to be allowed (squid: http_access allow CONNECT to them), or drop them from --tcp-proxy-dports',
          ),
        );
      else out.push(ok('proxy', `${name}: CONNECT to port ${port} is not refused by policy (${eOther.message})`));
    }
  }
  return out;
}

async function checkLeftovers(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const rc = rulesConfigFor(cfg);
  const found: string[] = [];
  try {
    if (await new NftablesRuleBackend({ runner: d.runner }).isInstalled(rc)) found.push('nftables table inet transgate or its ip rules');
  } catch {
    /* no nft, or no permission: reported above */
  }
  for (const v of ['iptables', 'iptables-legacy'] as const) {
    if (!haveBinary(v)) continue;
    try {
      if (await new IptablesRuleBackend(v, { runner: d.runner }).isInstalled()) found.push(`${v} TRANSGATE chains`);
    } catch {
      /* as above */
    }
  }
  const sysctls = loadSysctlState().filter((c) => d.readSysctl(c.path) === c.to);
  if (sysctls.length > 0) found.push(`sysctls set by transgate (${sysctls.map((c) => `${c.key}=${c.to}, was ${c.from}`).join('; ')})`);
  const running = d.runningTransgate();
  if (found.length === 0) return [ok('leftovers', 'no transgate rules installed')];
  if (running.length > 0) return [ok('leftovers', `${found.join(', ')} installed by the running transgate (pid ${running.join(', ')})`)];
  if (cfg.failClosed) {
    return [
      warn(
        'leftovers',
        `${found.join(', ')} present but no transgate runs: left by --fail-closed, clients are refused until transgate runs again`,
        'start transgate, or sudo npx transgate clear to give the clients plain forwarding',
      ),
    ];
  }
  return [
    fail(
      'leftovers',
      `${found.join(', ')} present but no transgate runs: a crashed run left them, clients' traffic goes to a dead listener`,
      'sudo npx transgate clear',
    ),
  ];
}

/** Runs every check; never throws (a check that breaks is reported as FAIL). */
export async function runDoctor(cfg: Config, deps: DoctorDeps = defaultDoctorDeps()): Promise<Check[]> {
  const checks: Check[] = [checkPrivileges(deps)];
  const guard = async (name: string, f: () => Promise<Check[]> | Check[]): Promise<void> => {
    try {
      checks.push(...(await f()));
    } catch (err) {
      checks.push(fail(name, `check failed: ${errText(err)}`, 'report this with the output of transgate doctor --json'));
    }
  };
  if (deps.isRoot()) await guard('kernel', () => checkKernel(cfg, deps));
  await guard('sysctl', () => checkSysctls(cfg, deps));
  await guard('return-path', () => checkReturnPath(cfg, deps));
  await guard('uplink', () => checkUplink(cfg, deps));
  await guard('proxy', () => checkProxy(cfg, deps));
  if (deps.isRoot()) await guard('leftovers', () => checkLeftovers(cfg, deps));
  return checks;
}

export function formatChecks(checks: readonly Check[]): string {
  const lines = ['transgate doctor'];
  for (const c of checks) {
    lines.push(`${c.status.padEnd(4)}  ${c.name}: ${c.message}`);
    if (c.fix) lines.push(`      fix: ${c.fix}`);
  }
  const n = (s: CheckStatus) => checks.filter((c) => c.status === s).length;
  lines.push(`${n('FAIL')} FAIL, ${n('WARN')} WARN, ${n('OK')} OK`);
  return `${lines.join('\n')}\n`;
}

/** `transgate doctor`: prints, returns the exit status. */
export async function doctorCommand(cfg: Config, write: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  const checks = await runDoctor(cfg);
  const failed = checks.some((c) => c.status === 'FAIL');
  write(cfg.json ? `${JSON.stringify({ ok: !failed, checks }, null, 2)}\n` : formatChecks(checks));
  return failed ? 1 : 0;
}

// Exported for unit tests.
export const _internal = { splitTarget, checkSysctls, checkUplink };

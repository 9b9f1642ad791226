/**
 * Which interfaces are uplinks, so that the rules leave them alone.
 *
 * Without --lan every interface but lo used to be intercepted: a host on the
 * WAN segment that routes through this box then reached the internet through
 * the proxy as this box, and this box's DNS answered it (an open resolver).
 * The uplinks are the interfaces of the default routes (both families) and
 * of the route to each upstream proxy address (a box may have no default
 * route and reach its proxy directly). Their traffic is not intercepted,
 * unless the clients use them too: a one-armed gateway on the clients' own
 * subnet (then every interface is an uplink), or one --lan names.
 *
 * detectUplinks() asks `ip` (a Runner, so tests can fake it); judgeUplinks()
 * and the parsers are pure.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { interfaceMatches } from '../core/validate';
import type { Runner } from './exec';

export interface HostRoutes {
  /** Interfaces holding a default route or the route to a proxy, each with why. */
  uplinks: Array<{ name: string; why: string }>;
  /** Interfaces that can carry clients: up, not lo, not a bridge port. */
  interfaces: string[];
  /** Look-ups that failed (nothing is excluded because of them). */
  notes: string[];
}

export interface UplinkJudgement {
  /** Every uplink found, with why. */
  uplinks: Array<{ name: string; why: string }>;
  /** Uplinks whose arriving traffic the rules do not intercept. */
  excluded: string[];
  /** Uplinks intercepted anyway, and why. */
  intercepted: Array<{ name: string; why: string }>;
  notes: string[];
}

/** The `dev` of each route in `ip -j route show|get` output (multipath: each next hop); not lo, not local routes. */
export function parseRouteDevs(json: string): string[] {
  let routes: unknown;
  try {
    routes = JSON.parse(json || '[]');
  } catch {
    return [];
  }
  if (!Array.isArray(routes)) return [];
  const out: string[] = [];
  for (const r of routes as Array<{ type?: string; dev?: string; nexthops?: Array<{ dev?: string }> }>) {
    if (r.type === 'local') continue;
    for (const dev of [r.dev, ...(r.nexthops ?? []).map((h) => h.dev)]) {
      if (typeof dev === 'string' && dev !== 'lo' && !out.includes(dev)) out.push(dev);
    }
  }
  return out;
}

/** Interfaces in `ip -j link show` output that may carry clients: administratively up, not lo, not enslaved to a bridge or bond. */
export function parseLinks(json: string): string[] {
  let links: unknown;
  try {
    links = JSON.parse(json || '[]');
  } catch {
    return [];
  }
  if (!Array.isArray(links)) return [];
  return (links as Array<{ ifname?: string; flags?: string[]; master?: string }>)
    .filter((l) => typeof l.ifname === 'string' && l.ifname !== 'lo' && l.master === undefined && (l.flags ?? []).includes('UP'))
    .map((l) => l.ifname!);
}

/** Whether a --lan entry (a trailing * is a prefix) names the interface. */
function lanNames(lan: readonly string[], name: string): boolean {
  return lan.some((l) => interfaceMatches(l, name));
}

/** Pure: which uplinks the rules exclude, and which they intercept anyway (and why). */
export function judgeUplinks(host: HostRoutes, lan: readonly string[], bridge?: string): UplinkJudgement {
  // Bridge mode: the bridge carries the clients, whatever routes over it.
  const uplinks = host.uplinks.filter((u) => u.name !== bridge);
  const names = [...new Set(uplinks.map((u) => u.name))];
  const res: UplinkJudgement = { uplinks, excluded: [], intercepted: [], notes: host.notes };
  if (lan.length > 0) {
    // --lan enumerates what is intercepted: the other interfaces are left alone already.
    for (const n of names) if (lanNames(lan, n)) res.intercepted.push({ name: n, why: '--lan names it' });
    return res;
  }
  // Every interface an uplink: the clients are on the uplink's subnet (one-armed).
  // An empty list (the look-up failed) is read the same way: nothing is excluded.
  if (host.interfaces.every((i) => names.includes(i))) {
    for (const n of names) res.intercepted.push({ name: n, why: 'it is the only interface (a one-armed gateway)' });
    return res;
  }
  res.excluded = names;
  return res;
}

/** Proxy hosts to route-look-up: IP literals as they are, names resolved (bounded: a slow resolver must not hold up the start). */
async function proxyAddresses(
  hosts: readonly string[],
  notes: string[],
  timeoutMs: number,
): Promise<Array<{ host: string; address: string }>> {
  const out: Array<{ host: string; address: string }> = [];
  for (const host of [...new Set(hosts)]) {
    if (isIP(host) !== 0) {
      out.push({ host, address: host });
      continue;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      const found = await Promise.race([
        lookup(host, { all: true }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      for (const a of found) out.push({ host, address: a.address });
    } catch (err) {
      notes.push(`proxy ${host}: cannot resolve it (${(err as Error).message}), so the interface towards it is not known`);
    } finally {
      clearTimeout(timer);
    }
  }
  return out;
}

/** Asks the kernel for the default routes, the routes to the proxies and the interfaces. */
export async function detectUplinks(opts: {
  proxyHosts: readonly string[];
  ipv4: boolean;
  ipv6: boolean;
  runner: Runner;
  resolveTimeoutMs?: number;
}): Promise<HostRoutes> {
  const { runner } = opts;
  const notes: string[] = [];
  const uplinks: Array<{ name: string; why: string }> = [];
  const add = (name: string, why: string): void => {
    if (!uplinks.some((u) => u.name === name && u.why === why)) uplinks.push({ name, why });
  };
  const ask = async (argv: string[]): Promise<string | undefined> => {
    try {
      const r = await runner(argv, { timeoutMs: 5000 });
      return r.code === 0 ? r.stdout : undefined;
    } catch (err) {
      notes.push(`${argv.join(' ')}: ${(err as Error).message}`);
      return undefined;
    }
  };
  for (const f of [...(opts.ipv4 ? [4] : []), ...(opts.ipv6 ? [6] : [])]) {
    const out = await ask(['ip', '-j', `-${f}`, 'route', 'show', 'default']);
    for (const dev of parseRouteDevs(out ?? '')) add(dev, `IPv${f} default route`);
  }
  for (const { host, address } of await proxyAddresses(opts.proxyHosts, notes, opts.resolveTimeoutMs ?? 3000)) {
    const out = await ask(['ip', '-j', 'route', 'get', address]);
    if (out === undefined) continue; // unreachable: no interface towards it
    for (const dev of parseRouteDevs(out)) add(dev, `route to proxy ${host === address ? host : `${host} (${address})`}`);
  }
  const links = await ask(['ip', '-j', 'link', 'show']);
  if (links === undefined) notes.push('ip -j link show failed: the interfaces are not known');
  return { uplinks, interfaces: parseLinks(links ?? ''), notes };
}

/** One line per decision, for the start's log and `transgate rules`; `warn`: worth a warning. */
export function describeUplinks(j: UplinkJudgement): Array<{ warn: boolean; text: string }> {
  const why = (n: string): string =>
    j.uplinks
      .filter((u) => u.name === n)
      .map((u) => u.why)
      .join(', ');
  const out: Array<{ warn: boolean; text: string }> = [];
  if (j.excluded.length > 0) {
    out.push({
      warn: false,
      text: `uplink ${j.excluded.map((n) => `${n} (${why(n)})`).join(', ')}: traffic arriving there is not intercepted (--lan to choose otherwise)`,
    });
  }
  for (const i of j.intercepted) {
    out.push({
      warn: true,
      text: `uplink ${i.name} (${why(i.name)}) is intercepted, ${i.why}: hosts on its segment that route through this box use the proxy and this box's DNS (--clients limits who may)`,
    });
  }
  if (j.uplinks.length === 0)
    out.push({ warn: false, text: 'no uplink found (no default route, no route to a proxy address): no interface is excluded' });
  for (const n of j.notes) out.push({ warn: true, text: n });
  return out;
}

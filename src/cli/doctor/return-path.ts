import type { Config } from '../../config/config';
import { formatIPv4, formatIPv6, maskBytes, parseIPv4Bytes, parseIPv6Bytes } from '../../core/ip';
import { interfaceMatches } from '../../core/validate';
import { fail, ok, warn, type Check, type DoctorDeps } from './check';

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
  if (host.every((b, i) => b === bytes[i])) host[last] = host[last] + 1;
  return family === 4 ? formatIPv4(host) : formatIPv6(host);
}

/**
 * Whether replies can come back through this box. We cannot see the
 * clients' default route; what we can check: every LAN interface has an
 * address and a connected route to its prefix (so replies to the clients go
 * out where they came in), and this box has a default route (so forwarded
 * and proxied traffic can leave).
 */
export async function checkReturnPath(cfg: Config, d: DoctorDeps): Promise<Check[]> {
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

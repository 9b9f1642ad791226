import type { Config } from '../../config/config';
import { uplinksFor } from '../../netfilter/backend';
import { ok, warn, type Check, type DoctorDeps } from './check';

/**
 * Whether hosts on the uplink can use the gateway. The rules leave the
 * uplinks alone, except on a one-armed gateway and where --lan names one:
 * then any host there that routes through this box reaches the proxy as
 * this box and is answered by its DNS.
 */
export async function checkUplink(cfg: Config, d: DoctorDeps): Promise<Check[]> {
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

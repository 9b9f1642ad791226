import type { Config } from '../../config/config';
import type { ProxyEndpoint } from '../../config/proxy-url';
import { ErrorCodes, GatewayError } from '../../core/errors';
import { splitTarget } from '../../core/names';
import { hostPort } from '../../core/types';
import { UPSTREAM_CODES, dialTcp } from '../../outbound/dial';
import { openTunnel } from '../../outbound/http-connect';
import { errText, fail, ok, warn, type Check, type DoctorDeps } from './check';

/**
 * A failure as the gateway itself would log it: the message and code from
 * the one table (outbound/failures.ts) that the addon's and the JS
 * executors' failures go through, so doctor's words match the access log's.
 */
function said(name: string, e: GatewayError): string {
  return `${name}: ${e.message} (${e.code})`;
}

async function tryConnect(
  proxy: ProxyEndpoint,
  host: string,
  port: number,
  timeoutMs: number,
  onAccepted?: (scheme: string | undefined) => void,
): Promise<GatewayError | undefined> {
  try {
    const sock = await openTunnel({ proxy, host, port, timeoutMs, onAccepted });
    sock.destroy();
    return undefined;
  } catch (err) {
    return err instanceof GatewayError ? err : new GatewayError(ErrorCodes.UPSTREAM_STATUS, errText(err));
  }
}

/** Each upstream with the name the user set it by: http_proxy/https_proxy, or its place in --upstream. */
function labelledUpstreams(up: Config['upstream']): [string, ProxyEndpoint][] {
  if (up.http === up.https) return up.http.map((p, i) => [up.http.length > 1 ? `upstream ${i + 1}` : 'upstream', p]);
  return [
    ...up.http.map((p): [string, ProxyEndpoint] => ['http_proxy', p]),
    ...up.https.map((p): [string, ProxyEndpoint] => ['https_proxy', p]),
  ];
}

export async function checkProxy(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const out: Check[] = [];
  const target = splitTarget(cfg.doctorTarget);
  if (!target) return [fail('proxy', `--doctor-target '${cfg.doctorTarget}' is not host:port`, 'e.g. --doctor-target example.com:443')];
  const seen = new Set<string>();
  const proxies = labelledUpstreams(cfg.upstream);
  if (proxies.length === 0) {
    return [
      warn(
        'proxy',
        'no http_proxy/https_proxy set: transgate would connect directly',
        'export http_proxy=http://user:password@proxy:3128 (and sudo -E to keep it)',
      ),
    ];
  }
  for (const [name, p] of proxies) {
    if (seen.has(p.display + (p.authorization ?? ''))) continue;
    seen.add(p.display + (p.authorization ?? ''));
    const where = hostPort(p.host, p.port);
    // Reachability first: a refused TCP connect says more than a failed CONNECT.
    const started = performance.now();
    const reach = await dialTcp({ host: p.host, port: p.port, timeoutMs: d.timeoutMs }, UPSTREAM_CODES, `proxy ${p.display}`).then(
      (s) => void s.destroy(),
      (e: unknown) => (e instanceof GatewayError ? e : new GatewayError(ErrorCodes.UPSTREAM_UNREACHABLE, errText(e))),
    );
    if (reach) {
      out.push(
        fail(
          'proxy',
          `${said(name, reach)}: cannot connect to ${where}`,
          `check the host and port in ${name}, that the proxy runs, and that this box may reach it (firewall, route)`,
        ),
      );
      continue;
    }
    out.push(ok('proxy', `${name} ${p.display}: reachable (connect ${Math.round(performance.now() - started)} ms)`));
    let scheme: string | undefined;
    const e443 = await tryConnect(p, target.host, target.port, d.timeoutMs, (s) => (scheme = s));
    if (!e443) {
      const how =
        scheme === undefined ? '' : ` (${scheme === 'ntlm' ? 'NTLM' : scheme === 'digest' ? 'Digest' : 'Basic'} credentials accepted)`;
      out.push(ok('proxy', `${name}: CONNECT ${hostPort(target.host, target.port)} allowed${how}`));
    } else if (e443.status === 407) {
      out.push(
        fail(
          'proxy',
          said(name, e443),
          p.authorization
            ? `check user and password in ${name} (percent-encode special characters: @ is %40, space is %20)`
            : `put them in the URL: ${name}=http://user:password@${where}`,
        ),
      );
      continue;
    } else if (e443.status === 403) {
      out.push(fail('proxy', said(name, e443), 'try another --doctor-target the proxy allows, or ask the proxy admins to allow it'));
      continue;
    } else {
      out.push(fail('proxy', said(name, e443), '--doctor-target a name the proxy can resolve and reach (e.g. example.com:443)'));
      continue;
    }
    if (cfg.tcpPorts.length > 0 && cfg.upstream.https.some((q) => q.display === p.display && q.authorization === p.authorization)) {
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

import { ErrorCodes, GatewayError } from '../core/errors';
import type { LogLevel } from '../core/log';
import { parseCidr } from '../route/cidr';
import { parseNoProxy, type NoProxy } from '../route/no-proxy';
import type { FlagValues } from './flags';
import { proxyFromEnv, type ProxyEndpoint } from './proxy-url';

export type Mode = 'tproxy' | 'redirect';

export interface Config {
  mode: Mode;
  httpPorts: number[];
  tlsPorts: number[];
  tcpPorts: number[];
  listen: { http: number; tls: number; tcp: number };
  upstream: { http?: ProxyEndpoint; https?: ProxyEndpoint };
  noProxy: NoProxy;
  noProxyRaw: string;
  bypass4: string[];
  bypass6: string[];
  lan: string[];
  ipv4: boolean;
  ipv6: boolean;
  installRules: boolean;
  fwmark: number;
  routeTable: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Byte pump after the tunnel is open; splice falls back to js when the addon lacks it. */
  relay: 'splice' | 'js';
  sniffTimeoutMs: number;
  logLevel: LogLevel;
  warnings: string[];
}

function configError(message: string): GatewayError {
  return new GatewayError(ErrorCodes.CONFIG, message);
}

/** Builds the run configuration from parsed flags and the environment; every check that can fail before start-up fails here. */
export function buildConfig(values: FlagValues, env: NodeJS.ProcessEnv): Config {
  const warnings: string[] = [];
  let proxies: ReturnType<typeof proxyFromEnv>;
  try {
    proxies = proxyFromEnv(env);
  } catch (err) {
    throw configError(`proxy environment: ${(err as Error).message}`);
  }
  const noProxy = parseNoProxy(proxies.noProxy);
  for (const bad of noProxy.invalid) warnings.push(`no_proxy: ignoring '${bad}' (not a name, address or CIDR)`);

  const bypass4: string[] = [];
  const bypass6: string[] = [];
  for (const raw of values['bypass'] as string[]) {
    const c = parseCidr(raw);
    if (!c) throw configError(`--bypass: '${raw}' is not an address or CIDR (e.g. 203.0.113.0/24, 2001:db8::/32)`);
    (c.family === 4 ? bypass4 : bypass6).push(raw.includes('/') ? raw : `${raw}/${c.family === 4 ? 32 : 128}`);
  }

  const httpPorts = values['http-ports'] as number[];
  const tlsPorts = values['tls-ports'] as number[];
  const tcpPorts = values['tcp-proxy-dports'] as number[];
  const seen = new Map<number, string>();
  for (const [flag, ports] of [['http-ports', httpPorts], ['tls-ports', tlsPorts], ['tcp-proxy-dports', tcpPorts]] as const) {
    for (const p of ports) {
      const other = seen.get(p);
      if (other) throw configError(`port ${p} is in both --${other} and --${flag}: give each port one meaning`);
      seen.set(p, flag);
    }
  }
  const listen = {
    http: values['http-proxy-listen'] as number,
    tls: values['https-proxy-listen'] as number,
    tcp: values['tcp-proxy-listen'] as number,
  };
  for (const [k, v] of Object.entries(listen)) {
    if (v < 1 || v > 65535) throw configError(`listen port for ${k} must be between 1 and 65535, not ${v}`);
  }
  if (new Set(Object.values(listen)).size !== 3) {
    throw configError('--http-proxy-listen, --https-proxy-listen and --tcp-proxy-listen must be three different ports');
  }
  const ipv4 = values['ipv4'] as boolean;
  const ipv6 = values['ipv6'] as boolean;
  if (!ipv4 && !ipv6) throw configError('--no-ipv4 and --no-ipv6 together leave nothing to intercept');
  for (const iface of values['lan'] as string[]) {
    if (!/^[A-Za-z0-9_.:@+-]{1,15}$/.test(iface)) throw configError(`--lan: '${iface}' is not an interface name`);
  }
  if (!proxies.http && !proxies.https) {
    warnings.push('no http_proxy/https_proxy set: connections go directly (export http_proxy=http://proxy:3128 to use a proxy)');
  }

  return {
    mode: values['mode'] as Mode,
    httpPorts,
    tlsPorts,
    tcpPorts,
    listen,
    upstream: { http: proxies.http, https: proxies.https },
    noProxy,
    noProxyRaw: proxies.noProxy,
    bypass4,
    bypass6,
    lan: values['lan'] as string[],
    ipv4,
    ipv6,
    installRules: values['rules'] as boolean,
    fwmark: values['fwmark'] as number,
    routeTable: values['route-table'] as number,
    connectTimeoutMs: values['connect-timeout'] as number,
    idleTimeoutMs: values['idle-timeout'] as number,
    relay: values['relay'] as Config['relay'],
    sniffTimeoutMs: values['sniff-timeout'] as number,
    logLevel: values['log-level'] as LogLevel,
    warnings,
  };
}

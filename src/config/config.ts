import fs from 'node:fs';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import type { LogLevel } from '../core/log';
import { normalizeIp, parseCidr } from '../core/ip';
import { INTERFACE_NAME_RULE, isInterfaceName, isInterfacePattern, isPort, parsePort } from '../core/validate';
import { parseNoProxy, type NoProxy } from './no-proxy';
import type { FlagValues } from './flags';
import { parseProxyUrl, proxyFromEnv, type ProxyEndpoint } from './proxy-url';
import type { Config, DnsSettings, Mode } from './types';

export type { Config } from './types';

/** ADDR or ADDR:PORT ([v6]:port for IPv6 with a port); port 53 by default. */
function parseDnsServer(raw: string, flag: string): { host: string; port: number } {
  const text = raw.trim();
  let host = text;
  let port = 53;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracketed) {
    host = bracketed[1]!;
    portText = bracketed[2];
  } else if (!normalizeIp(text)) {
    const m = /^([^:]+):(\d+)$/.exec(text);
    if (m) {
      host = m[1]!;
      portText = m[2];
    }
  }
  const ip = normalizeIp(host);
  if (!ip) throw configError(`--${flag}: '${raw}' is not an address or address:port (e.g. 10.0.0.53, 10.0.0.53:5353, [2001:db8::53]:53)`);
  if (portText !== undefined) {
    const p = parsePort(portText);
    if (p === undefined) throw configError(`--${flag}: port in '${raw}' must be between 1 and 65535`);
    port = p;
  }
  // Canonical, as every address that reaches a request line must be (CONNECT host:53 through the proxy).
  return { host: ip.text, port };
}

function buildDns(values: FlagValues, noProxy: NoProxy, listenPorts: number[]): DnsSettings | undefined {
  if (!(values['dns'] as boolean)) return undefined;
  const listenPort = values['dns-proxy-listen'] as number;
  if (!isPort(listenPort)) throw configError(`--dns-proxy-listen must be between 1 and 65535, not ${listenPort}`);
  if (listenPorts.includes(listenPort))
    throw configError(`--dns-proxy-listen ${listenPort} is already another listener's port: pick a free one`);
  const given = values['private-domains'] as string[];
  const privateDomains = given.length > 0 ? given : noProxy.domainSuffixes();
  for (const d of privateDomains) {
    if (!/^(\*?\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$/.test(d)) throw configError(`--private-domains: '${d}' is not a domain name`);
  }
  const privateRaw = values['private-dns'] as string;
  const publicRaw = values['public-dns'] as string;
  const dohEnabled = values['dns-over-https-enabled'] as boolean;
  let dohUrl: URL | undefined;
  if (dohEnabled) {
    try {
      dohUrl = new URL(values['doh-url'] as string);
    } catch {
      throw configError(`--doh-url: '${String(values['doh-url'])}' is not a URL (e.g. https://dns.example/dns-query)`);
    }
    if (dohUrl.protocol !== 'https:') throw configError(`--doh-url must be an https:// URL, not ${dohUrl.protocol}`);
  }
  const dohCa = values['doh-ca'] as string;
  const cacheSize = values['dns-cache-size'] as number;
  const timeoutMs = values['dns-timeout'] as number;
  if (timeoutMs < 1) throw configError('--dns-timeout must be longer than 0');
  return {
    listenPort,
    privateDomains,
    privateDns: privateRaw ? parseDnsServer(privateRaw, 'private-dns') : undefined,
    publicDns: publicRaw ? parseDnsServer(publicRaw, 'public-dns') : undefined,
    overTcpDisabled: values['dns-over-tcp-disabled'] as boolean,
    dohEnabled,
    dohUrl,
    dohCaFile: dohCa === '' ? undefined : dohCa,
    timeoutMs,
    cacheSize,
  };
}

/** A flag's addresses and CIDRs, IPv4 and IPv6 apart, a bare address as a /32 or /128. */
function cidrsByFamily(list: readonly string[], flag: string, example: string): [string[], string[]] {
  const v4: string[] = [];
  const v6: string[] = [];
  for (const raw of list) {
    const c = parseCidr(raw);
    if (!c) throw configError(`--${flag}: '${raw}' is not an address or CIDR (e.g. ${example})`);
    (c.family === 4 ? v4 : v6).push(raw.includes('/') ? raw : `${raw}/${c.family === 4 ? 32 : 128}`);
  }
  return [v4, v6];
}

/**
 * The upstreams of each kind of port, in order of preference: --upstream
 * for every port when given (several, for failover), else the environment's
 * one proxy per kind. A URL named twice is one upstream.
 */
function buildUpstreams(given: readonly string[], env: { http?: ProxyEndpoint; https?: ProxyEndpoint }): Config['upstream'] {
  if (given.length === 0) return { http: env.http ? [env.http] : [], https: env.https ? [env.https] : [] };
  const list: ProxyEndpoint[] = [];
  for (const raw of given) {
    let p: ProxyEndpoint;
    try {
      p = parseProxyUrl(raw);
    } catch (err) {
      throw configError(`--upstream: ${(err as Error).message}`);
    }
    if (!list.some((q) => q.display === p.display)) list.push(p);
  }
  return { http: list, https: list };
}

/**
 * --proxy-credentials FILE: `user:password` on its first line, for every
 * upstream whose URL carries none. The file must be readable by its owner
 * only (the password is the gateway's, not its users'), and its text is
 * never put in a message.
 */
function withCredentials(up: Config['upstream'], file: string): Config['upstream'] {
  if (file === '') return up;
  let st: fs.Stats;
  let text: string;
  try {
    st = fs.statSync(file);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw configError(`--proxy-credentials: cannot read ${file} (${errnoOf(err) ?? (err as Error).message})`);
  }
  if ((st.mode & 0o077) !== 0) {
    throw configError(`--proxy-credentials: ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 ${file}`);
  }
  const line = text.split(/\r?\n/, 1)[0]!;
  const colon = line.indexOf(':');
  if (colon <= 0) throw configError(`--proxy-credentials: the first line of ${file} must be user:password`);
  const auth = { user: line.slice(0, colon), password: line.slice(colon + 1) };
  const authorization = `Basic ${Buffer.from(`${auth.user}:${auth.password}`, 'utf8').toString('base64')}`;
  const cache = new Map<ProxyEndpoint, ProxyEndpoint>();
  // The same endpoint object stays the same (the http and https lists may share them, the health keys on display).
  const fill = (p: ProxyEndpoint): ProxyEndpoint => {
    if (p.auth) return p;
    let q = cache.get(p);
    if (q === undefined) {
      q = { ...p, auth, authorization };
      cache.set(p, q);
    }
    return q;
  };
  const http = up.http.map(fill);
  return { http, https: up.https === up.http ? http : up.https.map(fill) };
}

function configError(message: string): GatewayError {
  return new GatewayError(ErrorCodes.CONFIG, message);
}

/** Builds the run configuration from parsed flags and the environment; every check that can fail before start-up fails here. */
/** Joined the --http-ports default after the other ports (see buildConfig). */
const HKP_PORT = 11371;

/** `given`: the flags set on the command line (parseArgs), so that a default yields to them where they overlap. */
export function buildConfig(values: FlagValues, env: NodeJS.ProcessEnv, given: ReadonlySet<string> = new Set()): Config {
  const warnings: string[] = [];
  let proxies: ReturnType<typeof proxyFromEnv>;
  try {
    proxies = proxyFromEnv(env);
  } catch (err) {
    throw configError(`proxy environment: ${(err as Error).message}`);
  }
  const noProxy = parseNoProxy(proxies.noProxy);
  for (const bad of noProxy.invalid) warnings.push(`no_proxy: ignoring '${bad}' (not a name, address or CIDR)`);

  const [bypass4, bypass6] = cidrsByFamily(values['bypass'] as string[], 'bypass', '203.0.113.0/24, 2001:db8::/32');

  // 11371 (HKP) joined the --http-ports default late: a command line that names it in another port flag
  // (`--tcp-proxy-dports 22,11371`) worked before and must go on starting, so there the default yields.
  // Other overlaps stay errors (`--tls-ports 80` is more likely a mistake than a wish).
  const explicit = (flag: string): number[] => (given.has(flag) ? (values[flag] as number[]) : []);
  const named = new Set([...explicit('http-ports'), ...explicit('tls-ports'), ...explicit('tcp-proxy-dports')]);
  const ports = (flag: string): number[] =>
    given.has(flag) ? (values[flag] as number[]) : (values[flag] as number[]).filter((p) => !(p === HKP_PORT && named.has(p)));
  const httpPorts = ports('http-ports');
  const tlsPorts = ports('tls-ports');
  const tcpPorts = ports('tcp-proxy-dports');
  const seen = new Map<number, string>();
  for (const [flag, list] of [
    ['http-ports', httpPorts],
    ['tls-ports', tlsPorts],
    ['tcp-proxy-dports', tcpPorts],
  ] as const) {
    for (const p of list) {
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
    if (!isPort(v)) throw configError(`listen port for ${k} must be between 1 and 65535, not ${v}`);
  }
  if (new Set(Object.values(listen)).size !== 3) {
    throw configError('--http-proxy-listen, --https-proxy-listen and --tcp-proxy-listen must be three different ports');
  }
  const ipv4 = values['ipv4'] as boolean;
  const ipv6 = values['ipv6'] as boolean;
  if (!ipv4 && !ipv6) throw configError('--no-ipv4 and --no-ipv6 together leave nothing to intercept');
  for (const iface of values['lan'] as string[]) {
    // A trailing * matches a prefix (docker's br-*), as in nft.
    if (!isInterfacePattern(iface))
      throw configError(`--lan: '${iface}' is not an interface name (or a prefix with *, like br-*): ${INTERFACE_NAME_RULE}`);
  }
  const masquerade = values['masquerade'] as string[];
  for (const iface of masquerade) {
    if (!isInterfaceName(iface))
      throw configError(`--masquerade: '${iface}' is not an interface name (the uplink, e.g. eth0): ${INTERFACE_NAME_RULE}`);
  }
  const bridge = values['bridge'] as string;
  if (bridge && !isInterfaceName(bridge)) throw configError(`--bridge: '${bridge}' is not an interface name: ${INTERFACE_NAME_RULE}`);
  if (bridge && (values['firewall'] === 'iptables' || values['firewall'] === 'iptables-legacy')) {
    throw configError('--bridge needs the nftables backend (bridge-family rules): drop --firewall or use --firewall nftables');
  }
  const [clients4, clients6] = cidrsByFamily(values['clients'] as string[], 'clients', '192.168.1.0/24, 2001:db8:1::/64');
  const local = values['local'] as boolean;
  const socketMark = values['socket-mark'] as number;
  if (socketMark < 1 || socketMark === (values['fwmark'] as number)) {
    throw configError('--socket-mark must be a non-zero mark different from --fwmark');
  }
  const directSource = values['direct-source'] as Config['directSource'];
  // --local's connections are this host's own: their source already is the client's, and this host's
  // own address is not where a reply to "the client" could be routed back from.
  if (directSource === 'client' && local) {
    throw configError("--direct-source client cannot be used with --local: this host's own connections already come from its address");
  }
  if (directSource === 'client' && masquerade.length > 0) {
    warnings.push(
      `--direct-source client with --masquerade ${masquerade.join(',')}: direct connections leaving there are masqueraded to this host's address anyway`,
    );
  }
  const upstream = withCredentials(buildUpstreams(values['upstream'] as string[], proxies), values['proxy-credentials'] as string);
  if (upstream.http.length === 0 && upstream.https.length === 0) {
    warnings.push('no http_proxy/https_proxy set: connections go directly (export http_proxy=http://proxy:3128 to use a proxy)');
  }
  const upstreamCheckMs = values['upstream-check-interval'] as number;

  return {
    mode: values['mode'] as Mode,
    httpPorts,
    tlsPorts,
    tcpPorts,
    listen,
    upstream,
    upstreamCheckMs,
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
    sysctl: values['sysctl'] as boolean,
    allowQuic: values['allow-quic'] as boolean,
    masquerade,
    local,
    socketMark,
    firewall: values['firewall'] as Config['firewall'],
    ...(bridge ? { bridge } : {}),
    doctorTarget: values['doctor-target'] as string,
    json: values['json'] as boolean,
    connectTimeoutMs: values['connect-timeout'] as number,
    idleTimeoutMs: values['idle-timeout'] as number,
    relay: values['relay'] as Config['relay'],
    directSource,
    sniffTimeoutMs: values['sniff-timeout'] as number,
    dns: buildDns(values, noProxy, Object.values(listen)),
    logLevel: values['log-level'] as LogLevel,
    clients4,
    clients6,
    maxConnsPerClient: values['max-conns-per-client'] as number,
    maxConns: values['max-conns'] as number,
    failClosed: values['fail-closed'] as boolean,
    dnsClientRate: values['dns-client-rate'] as number,
    warnings,
  };
}

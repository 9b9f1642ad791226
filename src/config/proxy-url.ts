import { ErrorCodes, GatewayError } from '../core/errors';
import { normalizeIp, parseIPv6Bytes } from '../core/ip';
import { hostPort } from '../core/types';
import { parsePort } from '../core/validate';
import { normalizeHostname } from '../core/names';

/** The upstream HTTP proxy every proxied connection is CONNECTed through. */
export interface ProxyEndpoint {
  /** Lowercase name or bare IP (IPv6 without brackets). */
  host: string;
  port: number;
  auth?: { user: string; password: string };
  /** Ready-made Proxy-Authorization value: "Basic base64(user:password)". */
  authorization?: string;
  /**
   * `http://host:port`: what messages, error pages and logs name. Never the
   * user: error pages go to every client, and the user name is half of the
   * gateway's credentials.
   */
  display: string;
}

/**
 * Port used when the proxy URL names none. This is curl's rule: 1080 for
 * every non-HTTPS proxy, with or without an http:// prefix (libcurl's
 * CURL_DEFAULT_PROXY_PORT; it does not apply the scheme's port 80).
 * Go and Python would use 80 for `http://proxy`; we follow curl because
 * its behaviour for http_proxy is what most shell users have checked
 * theirs against. Writing an explicit port avoids the question.
 */
export const DEFAULT_PROXY_PORT = 1080;

const EXPECTED_FORM = 'expected http://[user:password@]host[:port], e.g. http://proxy.example:3128';

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

/** Replaces the password in a URL-ish string so errors and logs never carry it. */
export function maskProxyPassword(value: string): string {
  const scheme = SCHEME.exec(value);
  const start = scheme ? scheme[0].length : 0;
  // The last '@' ends the userinfo: unencoded '@' in passwords is common in the wild.
  const at = value.lastIndexOf('@');
  if (at < start) return value;
  const userinfo = value.slice(start, at);
  const colon = userinfo.indexOf(':');
  if (colon === -1) return value;
  return `${value.slice(0, start)}${userinfo.slice(0, colon)}:***${value.slice(at)}`;
}

function configError(value: string, problem: string): GatewayError {
  return new GatewayError(ErrorCodes.CONFIG, `invalid proxy URL "${maskProxyPassword(value)}": ${problem}; ${EXPECTED_FORM}`);
}

function percentDecode(value: string, part: string, original: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw configError(original, `bad percent-encoding in the ${part}`);
  }
}

function parseHostAndPort(hostport: string, original: string): { host: string; port: number } {
  let hostText: string;
  let portText: string | undefined;
  if (hostport.startsWith('[')) {
    const close = hostport.indexOf(']');
    if (close === -1) throw configError(original, 'unterminated [ in the host');
    hostText = hostport.slice(1, close);
    const rest = hostport.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) throw configError(original, 'unexpected text after ]');
    if (rest !== '') portText = rest.slice(1);
    if (!parseIPv6Bytes(hostText)) throw configError(original, 'bad IPv6 address in the host');
  } else {
    const colon = hostport.lastIndexOf(':');
    hostText = colon === -1 ? hostport : hostport.slice(0, colon);
    if (colon !== -1) portText = hostport.slice(colon + 1);
    if (hostText.includes(':')) throw configError(original, 'IPv6 addresses must be in brackets');
  }

  if (hostText === '') throw configError(original, 'empty host');

  let host: string;
  const ip = normalizeIp(hostText);
  if (ip) {
    // Canonical, so that it compares equal to the addresses sockets report (the gateway's proxy-address set).
    host = ip.text;
  } else {
    const name = normalizeHostname(hostText);
    if (name === undefined) throw configError(original, `bad host name "${hostText}"`);
    host = name;
  }

  let port = DEFAULT_PROXY_PORT;
  if (portText !== undefined) {
    const n = parsePort(portText);
    if (n === undefined) throw configError(original, `bad port "${portText}" (1-65535)`);
    port = n;
  }
  return { host, port };
}

/**
 * Parses an upstream proxy URL as found in http_proxy or on the command
 * line. A missing scheme means http://. Only plain-HTTP proxies are
 * supported; a path, if any, is ignored as curl does. Throws a
 * GatewayError (TG_ERR_CONFIG) whose message shows the value with its
 * password masked.
 */
export function parseProxyUrl(value: string): ProxyEndpoint {
  const original = value.trim();
  if (original === '') throw configError(value, 'empty value');

  const scheme = SCHEME.exec(original);
  if (scheme) {
    const name = scheme[1]!.toLowerCase();
    if (name === 'https' || name.startsWith('socks')) {
      throw configError(original, `${name}:// proxies are not supported yet, use an http:// proxy`);
    }
    if (name !== 'http') throw configError(original, `unsupported scheme ${name}://`);
  }
  const afterScheme = scheme ? original.slice(scheme[0].length) : original;

  const at = afterScheme.lastIndexOf('@');
  const userinfo = at === -1 ? undefined : afterScheme.slice(0, at);
  const rest = at === -1 ? afterScheme : afterScheme.slice(at + 1);
  const authorityEnd = rest.search(/[/?#]/);
  const hostport = authorityEnd === -1 ? rest : rest.slice(0, authorityEnd);

  const { host, port } = parseHostAndPort(hostport, original);
  const endpoint: ProxyEndpoint = { host, port, display: `http://${hostPort(host, port)}` };

  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    const user = percentDecode(colon === -1 ? userinfo : userinfo.slice(0, colon), 'user name', original);
    const password = colon === -1 ? '' : percentDecode(userinfo.slice(colon + 1), 'password', original);
    if (user === '') throw configError(original, 'empty user name before @');
    endpoint.auth = { user, password };
    endpoint.authorization = `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;
  }
  return endpoint;
}

/** First non-empty value among the names, in order: empty strings mean unset. */
function firstSet(env: NodeJS.ProcessEnv, names: string[]): string | undefined {
  for (const name of names) {
    const v = env[name];
    if (v !== undefined && v.trim() !== '') return v;
  }
  return undefined;
}

/**
 * Reads the conventional proxy variables. Lowercase wins over uppercase
 * when both are set, as in curl. https_proxy falls back to the http one,
 * since transgate tunnels both through the same kind of HTTP proxy.
 * Throws like parseProxyUrl, naming the variable.
 */
export function proxyFromEnv(env: NodeJS.ProcessEnv): { http?: ProxyEndpoint; https?: ProxyEndpoint; noProxy: string } {
  const fromVar = (names: string[]): ProxyEndpoint | undefined => {
    for (const name of names) {
      const v = env[name];
      if (v === undefined || v.trim() === '') continue;
      try {
        return parseProxyUrl(v);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        throw new GatewayError(ErrorCodes.CONFIG, `${name}: ${msg}`, { cause: err });
      }
    }
    return undefined;
  };

  const http = fromVar(['http_proxy', 'HTTP_PROXY']);
  const https = fromVar(['https_proxy', 'HTTPS_PROXY']) ?? http;
  const result: { http?: ProxyEndpoint; https?: ProxyEndpoint; noProxy: string } = {
    noProxy: firstSet(env, ['no_proxy', 'NO_PROXY']) ?? '',
  };
  if (http) result.http = http;
  if (https) result.https = https;
  return result;
}

/**
 * The run configuration's types, apart from the code that builds them
 * (config.ts) so that the modules a Config configures can name its parts
 * without importing the builder, and config/ imports nothing outside
 * core/ and config/.
 */
import type { LogLevel } from '../core/log';
import type { NoProxy } from './no-proxy';
import type { ProxyEndpoint } from './proxy-url';

/** A DNS server: an IP address in canonical text, and a port. */
export interface DnsServer {
  host: string;
  port: number;
}

export interface DnsSettings {
  listenPort: number;
  privateDomains: string[];
  privateDns: DnsServer | undefined;
  publicDns: DnsServer | undefined;
  overTcpDisabled: boolean;
  dohEnabled: boolean;
  dohUrl: URL | undefined;
  /** Extra CA certificates (PEM file) trusted for the DoH server. */
  dohCaFile: string | undefined;
  timeoutMs: number;
  cacheSize: number;
}

export type Mode = 'tproxy' | 'redirect';

export interface Config {
  mode: Mode;
  httpPorts: number[];
  tlsPorts: number[];
  tcpPorts: number[];
  listen: { http: number; tls: number; tcp: number };
  /** The proxies for HTTP ports and for the others, in order of preference (empty: direct). */
  upstream: { http: readonly ProxyEndpoint[]; https: readonly ProxyEndpoint[] };
  /** How often each upstream is probed (0: never; failures of real connections still count). */
  upstreamCheckMs: number;
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
  /** Set ip_forward/forwarding/send_redirects while running (--no-sysctl: leave them). */
  sysctl: boolean;
  /** Let clients' QUIC (UDP/443) through instead of rejecting it. */
  allowQuic: boolean;
  /** Uplink interfaces to masquerade forwarded traffic on. */
  masquerade: string[];
  /** Also intercept this host's own connections. */
  local: boolean;
  /** SO_MARK on transgate's outgoing sockets when local (loop avoidance). */
  socketMark: number;
  firewall: 'auto' | 'nftables' | 'iptables' | 'iptables-legacy';
  /** Bridge mode: the bridge whose frames to the intercepted ports are taken up to IP. */
  bridge?: string;
  /** doctor: host:port to CONNECT to through the proxy. */
  doctorTarget: string;
  json: boolean;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /**
   * Where direct connections come from: this host's address, or the client's
   * own (IP_TRANSPARENT + bind(client ip, 0)), so that servers reached
   * directly see who is really connecting.
   */
  directSource: 'gateway' | 'client';
  /** Byte pump after the tunnel is open; splice falls back to js when the addon lacks it. */
  relay: 'splice' | 'js';
  sniffTimeoutMs: number;
  /** The DNS gateway; undefined with --no-dns. */
  dns: DnsSettings | undefined;
  logLevel: LogLevel;
  /** Source CIDRs allowed to use the gateway (--clients); empty: any source on the LAN interfaces. */
  clients4: string[];
  clients6: string[];
  /** Open connections per client address; 0: no limit. */
  maxConnsPerClient: number;
  /** Open connections in all; 0: derived from RLIMIT_NOFILE at start. */
  maxConns: number;
  /** Leave rules (and sysctls) in place at stop and crash (--fail-closed). */
  failClosed: boolean;
  /** DNS queries per second per client; 0: no limit. */
  dnsClientRate: number;
  warnings: string[];
}

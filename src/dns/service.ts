import fs from 'node:fs';
import type net from 'node:net';
import type { DnsSettings } from '../config/types';
import type { ConnContext } from '../core/context';
import { ErrorCodes, GatewayError } from '../core/errors';
import type { Logger } from '../core/log';
import { hostPort } from '../core/types';
import type { Datagram } from '../inbound/udp-listener';
import { DIRECT_CODES, dialTcp } from '../outbound/dial';
import { ClientRateLimiter, InflightLimit, type Refusal } from './client-limit';
import { NameMap } from './name-map';
import { DnsResolver, isPrivateName, type DnsRoute, type DnsRouter, type DnsStats } from './resolver';
import { DohTransport, TcpTransport, UdpTransport, frame, unframe, type DnsTransport, type Server, type StreamOpener } from './transports';

export interface DnsServiceOptions {
  dns: DnsSettings;
  /**
   * A CONNECT tunnel through the upstreams (with their failover:
   * Outbounds.tunnel), and what the log calls them; undefined: no proxy.
   */
  proxy: { open: StreamOpener; display: string } | undefined;
  connectTimeoutMs: number;
  /** Where public names go when the destination of a query is unknown (UDP after REDIRECT). */
  fallbackServer: Server | undefined;
  /**
   * Classifies the address a client asked: 'local' (this gateway), 'internal'
   * (a private or bypassed range: an internal resolver), or 'public'.
   */
  classify?: (address: string) => 'local' | 'internal' | 'public';
  /**
   * The gateway's own resolver (the first nameserver of /etc/resolv.conf):
   * where private names go without --private-dns when the client did not
   * ask an internal server.
   */
  ownResolver?: Server;
  /** SO_MARK on every upstream socket (--local), so the gateway's own DNS is not intercepted again. */
  mark?: number;
  /** --dns-client-rate: queries per second one client may send, bursts of twice that; 0 or unset: no limit. */
  clientRate?: number;
  /** Whether a source may use the gateway (--clients); refused ones get no answer, their TCP connections are closed. */
  allowClient?: (address: string) => boolean;
  /** Queries one client may have in flight (default 256) and all clients together (default 4096); more are dropped. */
  maxInflightPerClient?: number;
  maxInflight?: number;
  log: Logger;
}

/** A TCP DNS client that sends nothing for this long is closed (RFC 7766 6.2.3 suggests seconds). */
const TCP_IDLE_MS = 10_000;
/** Queries one TCP client may have outstanding; more wait until earlier ones are answered. */
const TCP_MAX_PENDING = 128;
/**
 * In flight: a query from its arrival to its answer. A client's hundreds
 * are a benchmark (dnsperf -q 100) or a flood; a few thousand in all keep
 * memory and upstream sockets bounded when many clients flood at once.
 */
const MAX_INFLIGHT_PER_CLIENT = 256;
const MAX_INFLIGHT = 4096;

/**
 * The DNS gateway: routes each name (private names to the internal DNS
 * directly, public names over TCP through the proxy, over DoH, or directly),
 * answers UDP datagrams and TCP connections from the interception listeners,
 * and remembers names for addresses (NameMap) so that connections without
 * Host/SNI can be sent to the proxy by name.
 */
export class DnsService implements DnsRouter {
  readonly names = new NameMap(65536);
  readonly resolver: DnsResolver;
  private readonly transports = new Map<string, DnsTransport>();
  private readonly privateSuffixes: string[];
  private readonly tcpClients = new Set<net.Socket>();
  private readonly ca: string[] | undefined;
  private readonly rate: ClientRateLimiter;
  private readonly inflight: InflightLimit;

  constructor(private readonly opts: DnsServiceOptions) {
    this.rate = new ClientRateLimiter(opts.clientRate ?? 0);
    this.inflight = new InflightLimit(opts.maxInflightPerClient ?? MAX_INFLIGHT_PER_CLIENT, opts.maxInflight ?? MAX_INFLIGHT);
    this.privateSuffixes = opts.dns.privateDomains.map((d) =>
      d
        .toLowerCase()
        .replace(/^\*?\./, '')
        .replace(/\.$/, ''),
    );
    if (opts.dns.dohCaFile) {
      try {
        this.ca = [fs.readFileSync(opts.dns.dohCaFile, 'utf8')];
      } catch (err) {
        throw new GatewayError(ErrorCodes.CONFIG, `--doh-ca ${opts.dns.dohCaFile}: ${(err as Error).message}`, { cause: err });
      }
    }
    this.resolver = new DnsResolver({
      router: this,
      timeoutMs: opts.dns.timeoutMs,
      cacheSize: opts.dns.cacheSize,
      names: this.names,
      log: opts.log,
    });
  }

  /** How a name leaves; undefined when there is no server to ask. */
  route(name: string, asked: Server | undefined): DnsRoute | undefined {
    const d = this.opts.dns;
    const where = asked && this.opts.classify ? this.opts.classify(asked.host) : 'public';
    // A client that asked this gateway itself: there is no server here but us.
    if (where === 'local') asked = undefined;
    if (isPrivateName(name, this.privateSuffixes)) {
      // Without --private-dns, a private name goes to the server the client
      // asked only when that is an internal one, as it would without the
      // gateway. Any other server gets it from the gateway's own resolver:
      // sent by UDP to a public address the client picked, a private name
      // is a way out past the proxy for whatever is encoded in it.
      const server = d.privateDns ?? (where === 'internal' ? asked : undefined) ?? this.opts.ownResolver;
      if (!server) return undefined;
      return { kind: 'private', transport: this.direct(server), upstream: `udp ${hostPort(server.host, server.port)}` };
    }
    if (d.dohEnabled && d.dohUrl) {
      return { kind: 'doh', transport: this.doh(d.dohUrl), upstream: d.dohUrl.href };
    }
    let server = d.publicDns ?? asked ?? this.opts.fallbackServer;
    // A client that asked the internal DNS for a public name: that name must
    // not reach the internal DNS, and no public server is known.
    if (!d.publicDns && server && d.privateDns && sameServer(server, d.privateDns)) server = this.opts.fallbackServer;
    if (!server) return undefined;
    // Without --public-dns, a query to an internal resolver goes to it
    // directly, as it would without the gateway: the proxy cannot reach it.
    if (!d.publicDns && where === 'internal' && server === asked) {
      return { kind: 'direct', transport: this.direct(server), upstream: `udp ${hostPort(server.host, server.port)}` };
    }
    if (this.opts.proxy && !d.overTcpDisabled) {
      return { kind: 'proxy', transport: this.viaProxy(server, this.opts.proxy), upstream: `tcp ${hostPort(server.host, server.port)}` };
    }
    return { kind: 'direct', transport: this.direct(server), upstream: `udp ${hostPort(server.host, server.port)}` };
  }

  private cached(key: string, make: () => DnsTransport): DnsTransport {
    let t = this.transports.get(key);
    if (!t) {
      t = make();
      this.transports.set(key, t);
    }
    return t;
  }

  private readonly openDirect: StreamOpener = (host, port, signal) =>
    dialTcp(
      { host, port, timeoutMs: this.opts.connectTimeoutMs, signal, mark: this.opts.mark },
      DIRECT_CODES,
      `direct ${hostPort(host, port)}`,
    );

  private direct(server: Server): DnsTransport {
    const where = hostPort(server.host, server.port);
    return this.cached(
      `direct ${where}`,
      () => new UdpTransport(server, new TcpTransport(server, this.openDirect, `tcp ${where}`), this.opts.mark),
    );
  }

  private viaProxy(server: Server, proxy: { open: StreamOpener; display: string }): DnsTransport {
    const where = hostPort(server.host, server.port);
    return this.cached(`proxy ${where}`, () => new TcpTransport(server, proxy.open, `tcp ${where} via proxy ${proxy.display}`));
  }

  private doh(url: URL): DnsTransport {
    const open = this.opts.proxy ? this.opts.proxy.open : this.openDirect;
    return this.cached(`doh ${url.href}`, () => new DohTransport({ url, open, ca: this.ca, connectTimeoutMs: this.opts.connectTimeoutMs }));
  }

  /** Counters (DNS_STATS), shared with the resolver. */
  get stats(): DnsStats {
    return this.resolver.stats;
  }

  /**
   * Whether a query from `client` may start: the source is served, it has
   * tokens left and there is room in flight. Counted when not; the caller
   * then drops it (UDP) or closes the connection (TCP). A REFUSED answer
   * would tell a flooder nothing it needs, and would let a spoofed source
   * bounce packets off the gateway.
   */
  private admit(client: string): Refusal | undefined {
    let why: Refusal | undefined;
    if (this.opts.allowClient && !this.opts.allowClient(client)) why = 'refused';
    else if (!this.rate.take(client)) why = 'rateLimited';
    else why = this.inflight.enter(client);
    if (why) this.resolver.stats[why]++;
    return why;
  }

  /** A datagram from the UDP listener. */
  onDatagram(d: Datagram): void {
    const client = d.client.address;
    if (this.admit(client)) return;
    this.resolver.handle(d.data, { client: d.client, destination: d.destination, protocol: 'udp' }).then(
      (answer) => {
        this.inflight.leave(client);
        if (answer) d.reply(answer);
      },
      (err: unknown) => {
        this.inflight.leave(client);
        this.internalError(err);
      },
    );
  }

  /** A client's DNS-over-TCP connection (RFC 1035 4.2.2 framing; pipelined queries answered as they complete). */
  acceptTcp(sock: net.Socket, ctx: ConnContext): void {
    const client = ctx.client.address;
    if (this.opts.allowClient && !this.opts.allowClient(client)) {
      this.resolver.stats.refused++;
      sock.destroy();
      return;
    }
    this.tcpClients.add(sock);
    let buffered: Buffer = Buffer.alloc(0);
    let pending = 0;
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('close', () => this.tcpClients.delete(sock));
    sock.on('end', () => {
      if (pending === 0) sock.end();
    });
    sock.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const { messages, rest } = unframe(buffered);
      buffered = rest;
      for (const m of messages) {
        // Over its rate or its room in flight, a TCP client loses the
        // connection: a query silently skipped would stall its pipeline.
        if (this.admit(client)) {
          sock.destroy();
          return;
        }
        pending++;
        if (pending >= TCP_MAX_PENDING) sock.pause();
        this.resolver.handle(m, { client: ctx.client, destination: ctx.destination, protocol: 'tcp' }).then(
          (answer) => {
            this.inflight.leave(client);
            pending--;
            if (sock.destroyed) return;
            if (answer) sock.write(frame(answer));
            if (pending < TCP_MAX_PENDING && sock.isPaused()) sock.resume();
            if (pending === 0 && sock.readableEnded) sock.end();
          },
          (err: unknown) => {
            this.inflight.leave(client);
            this.internalError(err);
            sock.destroy();
          },
        );
      }
    });
    sock.resume();
  }

  /** handle() turns every traffic error into an answer; reaching here is a bug, logged rather than crashing the gateway. */
  private internalError(err: unknown): void {
    this.opts.log.error(`dns internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }

  close(): void {
    this.rate.clear();
    this.resolver.close();
    for (const t of this.transports.values()) t.close();
    this.transports.clear();
    for (const s of this.tcpClients) s.destroy();
    this.tcpClients.clear();
  }
}

function sameServer(a: Server, b: Server): boolean {
  return a.port === b.port && a.host.toLowerCase() === b.host.toLowerCase();
}

/** The first usable nameserver in a resolv.conf (loopback ones would be the gateway's own stub, not the clients'). */
export function resolvConfServer(file = '/etc/resolv.conf'): Server | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const host = m[1]!.replace(/%.*$/, '');
    if (host.startsWith('127.') || host === '::1') continue;
    return { host, port: 53 };
  }
  return undefined;
}

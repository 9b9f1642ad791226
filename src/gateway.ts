import dns from 'node:dns';
import net from 'node:net';
import type { Config } from './config/config';
import type { ConnContext, ListenerKind } from './core/context';
import { field, type Logger } from './core/log';
import { formatAddress, type Address } from './core/types';
import { LocalAddresses } from './inbound/local-addresses';
import { TcpListener } from './inbound/tcp-listener';
import { UdpListener } from './inbound/udp-listener';
import { DnsService, resolvConfServer } from './dns/service';
import { Interception } from './netfilter/interception';
import { DEFAULT_BYPASS4, DEFAULT_BYPASS6 } from './netfilter/plan';
import type { RuleBackend } from './netfilter/rule-backend';
import { Outbounds } from './outbound/outbounds';
import { JsRelay } from './relay/js-relay';
import { SpliceRelay } from './relay/splice-relay';
import { hasSplice, hasTunnel, loadNative, raiseNofileLimit } from './native';
import type { Relay } from './relay/relay';
import { CidrSet } from './core/ip';
import { Router } from './route/router';
import { UpstreamHealth } from './route/upstream-health';
import { UpstreamProber } from './outbound/upstream-probe';
import type { ProxyEndpoint } from './config/proxy-url';
import { splitTarget } from './core/names';
import type { StreamOpener } from './dns/transports';
import { HEADERS_TIMEOUT_MS, HttpSession } from './relay/http-session';
import { runNode, type StreamDeps } from './relay/node-executor';
import { closeFramed } from './relay/http-framed';
import { NativeExecutor } from './relay/native-executor';
import { ErrorCodes, GatewayError, type ErrorCode } from './core/errors';
import { Admission, RefusalLog, connectionBudget } from './inbound/admission';
import { HostVerifier } from './route/host-verify';

/**
 * --max-conns by default: the open-files limit, its soft value raised to
 * the hard one first (the addon; Node raises it too at start where it can),
 * so that a flood meets the limit and its log line instead of EMFILE.
 */
function defaultMaxConns(log: Logger): number {
  let soft: number;
  try {
    soft = raiseNofileLimit().soft;
  } catch (err) {
    log.warn(`cannot read RLIMIT_NOFILE (${(err as Error).message}): no --max-conns limit`);
    return 0;
  }
  const n = connectionBudget(soft);
  log.info(`limits: ${n > 0 ? `${n} connections` : 'no connection limit'} (RLIMIT_NOFILE ${soft}; --max-conns to change)`);
  return n;
}

/** Where intercepting listeners bind: loopback only under TPROXY, so that nobody can reach them directly. */
export function listenerBind(cfg: Config): string[] {
  if (cfg.mode === 'tproxy') {
    const out: string[] = [];
    if (cfg.ipv4) out.push('127.0.0.1');
    if (cfg.ipv6) out.push('::1');
    return out;
  }
  // REDIRECT rewrites the destination to the incoming interface's address, so
  // the listener must accept on every address; direct connections are refused
  // by the original-destination check.
  return cfg.ipv6 ? ['::'] : ['0.0.0.0'];
}

/**
 * The composition root: builds routing, outbounds, relay and listeners from
 * the configuration and starts them in stages. Rules go in last (nothing is
 * intercepted before a listener can take it) and come out first.
 */
export class Gateway {
  private readonly listeners: TcpListener[] = [];
  private readonly active = new Set<net.Socket>();
  private readonly local = new LocalAddresses();
  /** The upstream proxies' addresses (literals in the proxy URLs): no client may name them as a destination. */
  private readonly proxyAddresses = new Set<string>();
  private readonly admission: Admission;
  /** --max-conns, or what the open-files limit allows (0: no limit known). */
  private readonly maxConns: number;
  private readonly refusals: RefusalLog;
  private readonly verifier: HostVerifier;
  /** Counters of what clients did that the gateway refused or survived. */
  readonly stats = { refused: 0, internalErrors: 0, authRejected: 0 };
  /** Upstreams whose credentials were rejected, told once each (until one of their connections gets through again). */
  private readonly rejectedBy = new Set<string>();
  private readonly router: Router;
  /** Up/down per upstream, shared by every path. */
  private readonly health: UpstreamHealth;
  /** Probes the upstreams when there are several to choose from. */
  private readonly prober: UpstreamProber | undefined;
  private readonly outbounds: Outbounds;
  private readonly relay: Relay;
  private readonly http: HttpSession;
  /** What the Node path of a TLS or TCP connection needs; the same for every connection. */
  private readonly streamDeps: StreamDeps;
  /** A connection ended: its log line. */
  private readonly logDone = (ctx: ConnContext): void => this.logConn(ctx);
  /** TLS and TCP ports carried by the addon from accept to splice; undefined with --relay js. */
  private readonly streams: NativeExecutor | undefined;
  private readonly dns: DnsService | undefined;
  private udp: UdpListener | undefined;
  /** Sysctls, rules and policy routes: planned, applied last, reverted first. */
  private readonly interception: Interception;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    rules: RuleBackend | undefined,
  ) {
    this.interception = new Interception(cfg, log, rules);
    // --local: every socket of the gateway's own carries the mark, so its own rules skip it.
    const mark = cfg.local ? cfg.socketMark : undefined;
    this.health = new UpstreamHealth((p, st) =>
      st.up
        ? log.info(`upstream ${p.display} is up again${st.latencyMs !== undefined ? ` (${st.latencyMs} ms)` : ''}`)
        : log.warn(`upstream ${p.display} is down: ${st.lastError ?? 'failed'}; retried in ${Math.max(0, st.retryAt - Date.now())} ms`),
    );
    this.router = new Router(cfg.upstream, cfg.noProxy, this.health);
    const upstreams = [...new Set([...cfg.upstream.http, ...cfg.upstream.https])];
    for (const p of upstreams) if (net.isIP(p.host)) this.proxyAddresses.add(p.host);
    const clients = new CidrSet();
    for (const c of [...cfg.clients4, ...cfg.clients6]) clients.add(c);
    this.maxConns = cfg.maxConns > 0 ? cfg.maxConns : defaultMaxConns(log);
    this.admission = new Admission({
      perClient: cfg.maxConnsPerClient,
      total: this.maxConns,
      allow: cfg.clients4.length + cfg.clients6.length > 0 ? (a) => clients.has(a) : undefined,
    });
    this.refusals = new RefusalLog(10_000, (line) => log.warn(line));
    const fromClient = cfg.directSource === 'client';
    this.outbounds = new Outbounds(cfg.connectTimeoutMs, mark, fromClient, this.health);
    const target = splitTarget(cfg.doctorTarget);
    if (upstreams.length > 1 && target) {
      this.prober = new UpstreamProber({
        proxies: upstreams,
        health: this.health,
        intervalMs: cfg.upstreamCheckMs,
        probe: (p, signal) => this.outbounds.probe(p, target.host, target.port, signal),
      });
    }
    // The splice relay needs the addon; without it the JS relay carries the same traffic, only with more copies.
    // Without the addon start() stops with TG_ERR_NATIVE; hasSplice() is false only then.
    this.relay = cfg.relay === 'splice' && hasSplice() ? new SpliceRelay() : new JsRelay();
    if (cfg.dns) {
      // After REDIRECT a UDP query's destination is gone (no SO_ORIGINAL_DST for UDP).
      const own = resolvConfServer();
      const fallback = cfg.mode === 'redirect' && !cfg.dns.publicDns ? own : undefined;
      if (cfg.mode === 'redirect' && !cfg.dns.publicDns) {
        log.warn(
          `dns: in redirect mode a UDP query's destination is unknown; public names asked over UDP go to ` +
            `${fallback ? `${fallback.host} (from /etc/resolv.conf)` : 'no server (SERVFAIL)'}: set --public-dns ADDR`,
        );
      }
      const internal = new CidrSet();
      // ::ffff:0:0/96 is left out: CidrSet reads mapped addresses as IPv4, where it would mean every address.
      for (const c of [...DEFAULT_BYPASS4, ...DEFAULT_BYPASS6, ...cfg.bypass4, ...cfg.bypass6])
        if (!c.startsWith('::ffff:')) internal.add(c);
      this.dns = new DnsService({
        dns: cfg.dns,
        proxy: this.dnsProxy(cfg.upstream.https.length > 0 ? cfg.upstream.https : cfg.upstream.http),
        connectTimeoutMs: cfg.connectTimeoutMs,
        fallbackServer: fallback,
        ownResolver: own,
        clientRate: cfg.dnsClientRate,
        allowClient: this.admission.allows,
        classify: (address) => (this.local.has(address) ? 'local' : internal.has(address) ? 'internal' : 'public'),
        mark,
        log,
      });
    }
    // Verification asks the gateway's own resolver (getaddrinfo: /etc/hosts, then its DNS), and the client's recent answers.
    this.verifier = new HostVerifier({
      names: this.dns?.names,
      resolve: (name) => dns.promises.lookup(name, { all: true, verbatim: true }).then((list) => list.map((a) => a.address)),
    });
    this.streamDeps = {
      router: this.router,
      verifier: this.verifier,
      isLocal: (address) => this.local.has(address),
      isForbiddenAddress: this.isForbiddenAddress,
      http: (sock, ctx, head) => this.http.accept(sock, ctx, head, this.logDone),
      outbounds: this.outbounds,
      relay: this.relay,
      idleTimeoutMs: cfg.idleTimeoutMs,
      headTimeoutMs: HEADERS_TIMEOUT_MS,
      sniffTimeoutMs: cfg.sniffTimeoutMs,
      names: this.dns?.names,
      onDone: this.logDone,
      warn: (message) => this.log.warn(message),
      debug: log.enabled('debug') ? (message) => this.log.debug(message) : undefined,
    };
    if (this.relay.name === 'splice' && hasTunnel()) {
      this.streams = new NativeExecutor({
        router: this.router,
        health: this.health,
        handshakes: upstreams.length > 1 || upstreams.some((p) => p.auth !== undefined),
        names: this.dns?.names,
        sniffTimeoutMs: cfg.sniffTimeoutMs,
        connectTimeoutMs: cfg.connectTimeoutMs,
        idleTimeoutMs: cfg.idleTimeoutMs,
        mark,
        directFromClient: fromClient,
        redirect: cfg.mode === 'redirect',
        isLocal: (address) => this.local.has(address),
        isForbiddenAddress: this.isForbiddenAddress,
        admission: this.admission,
        onRefused: (client, code) => this.logRefused(client, code),
        verifier: this.verifier,
        closing: () => this.closing !== undefined,
        onDone: this.logDone,
        takeOver: (sock, ctx, head) => {
          this.admission.adopt(ctx.client.address);
          this.track(sock, ctx.client.address);
          this.runNode(sock, ctx, head);
        },
        takeOverHttp: (sock, ctx, head) => {
          this.admission.adopt(ctx.client.address);
          this.track(sock, ctx.client.address);
          this.http.accept(sock, ctx, head, this.logDone);
        },
        onUnusable: (client, err) => this.logRejected(client, err),
        onInternalError: (ctx, err) => this.internalError(undefined, ctx, err),
        onAcceptError: this.logAcceptError,
        warn: (message) => this.log.warn(message),
        debug: log.enabled('debug') ? (message) => this.log.debug(message) : undefined,
      });
    }
    this.http = new HttpSession({
      router: this.router,
      outbounds: this.outbounds,
      relay: this.relay,
      log,
      connectTimeoutMs: cfg.connectTimeoutMs,
      idleTimeoutMs: cfg.idleTimeoutMs,
      socketMark: mark,
      directFromClient: fromClient,
      verifier: this.verifier,
      isLocal: this.isForbiddenAddress,
      onInternalError: (ctx, err) => this.internalError(undefined, ctx, err),
    });
  }

  /** This host's addresses and the proxies': never a destination a client may name (route/targets.ts). */
  private readonly isForbiddenAddress = (address: string): boolean => this.local.has(address) || this.proxyAddresses.has(address);

  /** The DNS gateway, when on (for tests and metrics). */
  get dnsService(): DnsService | undefined {
    return this.dns;
  }

  async start(): Promise<void> {
    // Interception needs the addon in both modes, whatever --relay says: the
    // listeners are transparent sockets (TPROXY) and a redirected connection's
    // destination is read with SO_ORIGINAL_DST, neither of which Node offers.
    try {
      loadNative();
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw new GatewayError(ErrorCodes.NATIVE, `interception needs the native addon (in both modes, with either relay): ${why}`, {
        cause: err,
      });
    }
    this.log.info(`relay ${this.relay.name}`);
    // Only reads (and logs what is odd): nothing changes before the listeners are up.
    await this.interception.plan();
    const bind = listenerBind(this.cfg);
    const kinds: Array<[ListenerKind, number[], number]> = [
      ['http', this.cfg.httpPorts, this.cfg.listen.http],
      ['tls', this.cfg.tlsPorts, this.cfg.listen.tls],
      ['tcp', this.cfg.tcpPorts, this.cfg.listen.tcp],
    ];
    for (const [kind, ports, port] of kinds) {
      if (ports.length === 0) continue;
      const l = await this.startTcpListener(kind, port, bind);
      this.log.info(`started ${l.description} for ports ${ports.join(',')}`);
    }
    if (this.dns) await this.startDns(bind);
    await this.interception.apply();
    if (this.prober) {
      this.prober.start();
      // The first round at once: a dead upstream is known before the first clients meet it.
      void this.prober.tick();
    }
  }

  /**
   * Idempotent; safe after a failed start. TPROXY: rules first, so clients stop being sent to listeners that are
   * going away (a TPROXY rule without its socket lets the packet through unproxied). REDIRECT: connections first:
   * the kernel translates only while a nat chain exists (nf_nat unregisters its hooks with the last one), and once
   * the rules were gone the FIN or reset that ends a redirected connection left un-NATed, from the listener's
   * address: the client never heard of it and its connection hung until it next sent. A connection that comes in
   * between meets a closed port and is refused.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const rulesFirst = this.cfg.mode !== 'redirect';
      // --fail-closed: rules and sysctls stay (Interception.revert).
      if (rulesFirst) await this.interception.revert();
      let listenersClosed: Promise<unknown>;
      let streamsClosed: Promise<void> | undefined;
      try {
        // Listeners stop accepting at once; net.Server.close() then waits for every connection, so those are ended
        // before it is awaited (awaiting first left a stop hanging for as long as any client kept a connection open).
        listenersClosed = Promise.all(this.listeners.map((l) => l.close()));
        this.udp?.close();
        this.dns?.close();
        this.prober?.close();
        this.http.close();
        // A destroyed socket's descriptor is closed at once (libuv), so its FIN or reset is out before the rules go.
        for (const s of this.active) s.destroy();
        this.active.clear();
        // Ends the addon's connections at once; resolves when each was told.
        streamsClosed = this.streams?.close();
      } finally {
        // Whatever went wrong above (close() also runs after an internal error), the rules come out.
        if (!rulesFirst) await this.interception.revert();
      }
      await streamsClosed;
      await this.relay.close?.();
      await closeFramed();
      await listenersClosed;
    })();
    return this.closing;
  }

  get activeConnections(): number {
    return this.active.size + (this.streams?.active ?? 0);
  }

  /** The DNS service's way through the upstreams (public names over TCP, DoH), with the connections' failover. */
  private dnsProxy(list: readonly ProxyEndpoint[]): { open: StreamOpener; display: string } | undefined {
    if (list.length === 0) return undefined;
    return {
      open: (host, port, signal) => this.outbounds.tunnel(this.health.order(list), host, port, signal),
      display: list.map((p) => p.display).join(','),
    };
  }

  /** Keeps the socket for close(); its admission is released when it closes. */
  private track(sock: net.Socket, client: string): void {
    this.active.add(sock);
    sock.once('close', () => {
      this.active.delete(sock);
      this.admission.release(client);
    });
  }

  /** accept(2) failed (EMFILE): one line per errno every 10 s, with how often it happened; both paths. */
  private readonly logAcceptError = (errno: string): void => {
    const hint =
      errno === 'EMFILE' || errno === 'ENFILE'
        ? ': out of file descriptors; raise the limit (ulimit -n, LimitNOFILE=) or lower --max-conns'
        : '';
    this.refusals.note(`accept ${errno}`, `accept: ${errno}${hint}; accepting again shortly`);
  };

  /** A connection refused at accept: one line per reason every 10 s, with how many there were. */
  private logRefused(client: Address, code: ErrorCode): void {
    this.stats.refused++;
    const why =
      code === ErrorCodes.CLIENT_LIMIT
        ? `client has ${this.admission.of(client.address)} connections open (--max-conns-per-client ${this.cfg.maxConnsPerClient})`
        : code === ErrorCodes.LIMIT
          ? `${this.admission.open} connections open (--max-conns ${this.maxConns})`
          : 'source not in --clients';
    this.refusals.note(code, `conn refused client=${formatAddress(client)} result=${code} ${field(why)}`);
  }

  private onUnusable(sock: net.Socket, client: Address, err: GatewayError): void {
    this.logRejected(client, err);
    sock.destroy();
  }

  private logRejected(client: Address, err: GatewayError): void {
    this.log.warn(`conn rejected client=${formatAddress(client)} result=${err.code} ${field(err.message)}`);
  }

  private onConnection(sock: net.Socket, ctx: ConnContext): void {
    if (this.closing) {
      sock.destroy();
      return;
    }
    const refused = this.admission.admit(ctx.client.address);
    if (refused) {
      this.logRefused(ctx.client, refused);
      sock.resetAndDestroy();
      return;
    }
    // DNS over TCP to the gateway's own address is intercepted on purpose
    // (clients are handed it as their resolver, and retry truncated answers
    // over TCP); only a direct connection to the listener is a loop.
    const ownDns = ctx.kind === 'dns' && ctx.destination.port === 53;
    if (!ownDns && this.local.has(ctx.destination.address)) {
      ctx.refuseLoop();
      sock.destroy();
      this.admission.release(ctx.client.address);
      this.logConn(ctx);
      return;
    }
    this.track(sock, ctx.client.address);
    if (ctx.kind === 'dns' && this.dns) {
      this.dns.acceptTcp(sock, ctx);
      return;
    }
    this.runNode(sock, ctx);
  }

  /** A connection on Node's sockets (pipeline: relay/node-executor.ts); `head`: first bytes already read (see NativeExecutor). */
  private runNode(sock: net.Socket, ctx: ConnContext, head?: Buffer): void {
    // A weak reference: the handler lives as long as the connection, and a
    // strong one would keep the (by then destroyed) socket of every
    // spliced connection in memory.
    const ref = new WeakRef(sock);
    runNode(sock, ctx, this.streamDeps, head).catch((err: unknown) => this.internalError(ref.deref(), ctx, err));
  }

  /** Starts an intercepting TCP listener and keeps it for close(). */
  private async startTcpListener(kind: ListenerKind, port: number, bind: string[]): Promise<TcpListener> {
    const l = new TcpListener({
      kind,
      mode: this.cfg.mode,
      port,
      bind,
      onConnection: (sock, ctx) => this.onConnection(sock, ctx),
      onUnusable: (sock, client, err) => this.onUnusable(sock, client, err),
      onAcceptError: this.logAcceptError,
      nativeAccept: this.streams && kind !== 'dns' ? (fd) => this.streams!.listen(kind, fd) : undefined,
    });
    await l.start();
    this.listeners.push(l);
    return l;
  }

  /** DNS on port 53: UDP (TPROXY: native transparent socket; REDIRECT: dgram) and TCP on one listen port. */
  private async startDns(bind: string[]): Promise<void> {
    const dns = this.dns!;
    const port = this.cfg.dns!.listenPort;
    const tcp = await this.startTcpListener('dns', port, bind);
    const udp = new UdpListener({
      mode: this.cfg.mode,
      port,
      bind,
      onDatagram: (d) => dns.onDatagram(d),
      onSendError: (err, to) => this.log.debug(`dns answer to ${formatAddress(to)} dropped: ${(err as Error).message}`),
    });
    await udp.start();
    this.udp = udp;
    this.log.info(`started ${tcp.description} and ${udp.description} for port 53`);
  }

  /** A bug met by one connection: it ends with a log line and a count, never the gateway. */
  private internalError(sock: net.Socket | undefined, ctx: ConnContext, err: unknown): void {
    this.stats.internalErrors++;
    ctx.result = ErrorCodes.INTERNAL;
    ctx.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    sock?.destroy();
    this.logConn(ctx);
  }

  private logConn(ctx: ConnContext): void {
    const line =
      `conn id=${ctx.id} kind=${ctx.kind} client=${formatAddress(ctx.client)} dst=${formatAddress(ctx.destination)} ` +
      `name=${field(ctx.name)} route=${ctx.route ?? '-'} via=${field(ctx.via)} up=${ctx.bytesUp} down=${ctx.bytesDown} ` +
      `ms=${ctx.durationMs()}${ctx.kind === 'http' ? ` requests=${ctx.requests}` : ''} result=${ctx.result}` +
      (ctx.error ? ` error=${field(ctx.error)}` : '');
    if (ctx.result === 'ok') this.log.info(line);
    else this.log.warn(line);
    if (ctx.via === undefined || ctx.route !== 'proxy') return;
    if (ctx.result === ErrorCodes.UPSTREAM_407) {
      this.stats.authRejected++;
      if (!this.rejectedBy.has(ctx.via)) {
        // Every connection through this proxy will fail the same way: one line that says what to fix, not one per client.
        this.rejectedBy.add(ctx.via);
        this.log.error(`upstream ${ctx.via} rejects the gateway's credentials: ${ctx.error ?? 'proxy answered 407'}`);
      }
    } else if (ctx.result === 'ok' && this.rejectedBy.delete(ctx.via)) {
      this.log.info(`upstream ${ctx.via} accepts the gateway's credentials again`);
    }
  }
}

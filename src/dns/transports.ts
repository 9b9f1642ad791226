import crypto from 'node:crypto';
import dgram from 'node:dgram';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { DnsServer } from '../config/types';
import { ErrorCodes, GatewayError } from '../core/errors';
import { normalizeIp } from '../core/ip';
import { hostPort } from '../core/types';
import { setMark } from '../native/index';
import { readHeader } from './message';

/** Sends one DNS message and resolves with the answer; rejects with a GatewayError (code TG_ERR_DNS) or on abort. */
export interface DnsTransport {
  readonly description: string;
  query(msg: Buffer, signal: AbortSignal): Promise<Buffer>;
  close(): void;
}

/** Where a transport sends its queries (config/types: the DNS settings name servers so). */
export type Server = DnsServer;

/** Opens a stream to host:port: directly, or a CONNECT tunnel through the proxy. */
export type StreamOpener = (host: string, port: number, signal: AbortSignal) => Promise<net.Socket>;

function dnsError(message: string, cause?: unknown): GatewayError {
  return new GatewayError(ErrorCodes.DNS, message, { cause });
}

function aborted(signal: AbortSignal, what: string): GatewayError {
  return dnsError(`${what}: ${signal.reason instanceof Error ? signal.reason.message : 'cancelled'}`);
}

/** Frames a message for DNS over TCP (RFC 1035 4.2.2): a 16-bit length first. */
export function frame(msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 2);
  out.writeUInt16BE(msg.length, 0);
  msg.copy(out, 2);
  return out;
}

/**
 * Splits a TCP byte stream into DNS messages. Returns the messages complete
 * so far and the bytes left over.
 */
export function unframe(buf: Buffer): { messages: Buffer[]; rest: Buffer } {
  const messages: Buffer[] = [];
  let off = 0;
  while (buf.length - off >= 2) {
    const len = buf.readUInt16BE(off);
    if (buf.length - off - 2 < len) break;
    messages.push(buf.subarray(off + 2, off + 2 + len));
    off += 2 + len;
  }
  return { messages, rest: off === 0 ? buf : buf.subarray(off) };
}

/**
 * An ID for an upstream query: unpredictable (RFC 5452 9.2), because the
 * gateway's sockets live long and a guessed ID is all an off-path attacker
 * needs to slip a forged answer into the cache, and into the name map.
 * Math.random is not: its state can be recovered from a few outputs.
 */
export function randomId(): number {
  return crypto.randomInt(0x10000);
}

function withId(msg: Buffer, id: number): Buffer {
  const out = Buffer.from(msg);
  out.writeUInt16BE(id, 0);
  return out;
}

interface Pending {
  resolve(answer: Buffer): void;
  reject(err: Error): void;
}

/**
 * The answer to one query in flight: settled by the answer, by an error, or
 * when the query's signal aborts (then `onAbort` forgets the query and says
 * why). The abort listener never outlives the query.
 */
function awaitAnswer(signal: AbortSignal, onAbort: () => Error, register: (p: Pending) => void): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const abort = (): void => reject(onAbort());
    signal.addEventListener('abort', abort, { once: true });
    register({
      resolve: (a) => {
        signal.removeEventListener('abort', abort);
        resolve(a);
      },
      reject: (e) => {
        signal.removeEventListener('abort', abort);
        reject(e);
      },
    });
  });
}

/** One DNS-over-TCP connection carrying many queries at once, told apart by ID (RFC 7766 6.2.1.1). */
class PipelinedConnection {
  readonly pending = new Map<number, Pending>();
  private buffered: Buffer = Buffer.alloc(0);
  private idleTimer: NodeJS.Timeout | undefined;
  dead = false;
  /** Takes no more queries: it has been sent as many as the server answers on one connection. */
  draining = false;
  sent = 0;
  answered = 0;

  constructor(
    private readonly sock: net.Socket,
    private readonly idleMs: number,
    /** `byPeer`: the server (or proxy) ended or reset the connection with queries still unanswered. */
    private readonly onDead: (c: PipelinedConnection, byPeer: boolean) => void,
    /** Queries one connection may carry, once the server has shown how many it answers; undefined: no limit. */
    private readonly maxQueries: () => number | undefined,
  ) {
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.fail(dnsError(`DNS over TCP connection failed: ${err.message}`, err), true));
    // The server's FIN: nothing more will be answered here. Without failing
    // now, queries written between its FIN and the close would be answered
    // by a reset (EPIPE), not retried.
    sock.on('end', () => this.fail(dnsError('DNS over TCP connection closed by the server or proxy'), true));
    sock.on('close', () => this.fail(dnsError('DNS over TCP connection closed by the server or proxy'), true));
    sock.resume();
    this.armIdle();
  }

  get usable(): boolean {
    return !this.dead && !this.draining;
  }

  send(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    let id: number;
    do id = randomId();
    while (this.pending.has(id));
    this.sent++;
    const max = this.maxQueries();
    if (max !== undefined && this.sent >= max) this.draining = true;
    this.disarmIdle();
    const answer = awaitAnswer(
      signal,
      () => {
        this.pending.delete(id);
        this.settled();
        return aborted(signal, 'DNS over TCP');
      },
      (p) => this.pending.set(id, p),
    );
    this.sock.write(frame(withId(msg, id)));
    return answer;
  }

  private onData(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const { messages, rest } = unframe(this.buffered);
    this.buffered = rest;
    for (const m of messages) {
      if (m.length < 2) continue;
      const id = m.readUInt16BE(0);
      const p = this.pending.get(id);
      if (!p) continue; // answer to a query given up on
      this.pending.delete(id);
      this.answered++;
      p.resolve(m);
    }
    this.settled();
  }

  /** A query left: a drained connection closes, an idle one starts its idle timer. */
  private settled(): void {
    if (this.pending.size > 0 || this.dead) return;
    if (this.draining) this.close();
    else this.armIdle();
  }

  private armIdle(): void {
    if (this.pending.size > 0 || this.dead) return;
    this.disarmIdle();
    this.idleTimer = setTimeout(() => this.close(), this.idleMs);
    this.idleTimer.unref();
  }

  private disarmIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** `byPeer`: the other side ended it (FIN, reset, EPIPE), not close() (idle, drained, transport closed). */
  private fail(err: Error, byPeer = false): void {
    if (!this.dead) {
      this.dead = true;
      this.disarmIdle();
      this.onDead(this, byPeer && this.pending.size > 0);
      this.sock.destroy();
    }
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  close(): void {
    this.fail(dnsError('DNS over TCP connection closed'));
  }
}

/** Times one query is sent before it fails: the server or proxy may close a connection with queries on it at any time. */
const TCP_ATTEMPTS = 3;
/**
 * The fewest answers per connection learned from a server that closed one
 * with queries pending: below this it was more likely a restart or a
 * hiccup than a per-connection limit.
 */
const MIN_LEARNED_QUERIES = 8;

/**
 * DNS over TCP to one server, over connections from `open` (a proxy tunnel
 * or a direct connection): a few connections, each pipelining many queries,
 * reconnecting after a failure. Servers may close a connection whenever
 * they like (RFC 7766 6.2.3; dnsmasq does after 100 queries), so a query
 * whose connection ended before its answer came is sent again on another
 * one, up to TCP_ATTEMPTS times; and a server that closed a connection with
 * queries unanswered has shown how many it takes per connection: later
 * connections are given no more than that, and a fresh one takes over.
 */
export class TcpTransport implements DnsTransport {
  private readonly conns = new Set<PipelinedConnection>();
  private connecting: Promise<PipelinedConnection> | undefined;
  private closed = false;
  /** Queries per connection the server answers, once learned. */
  private maxQueries: number | undefined;
  private readonly limit = (): number | undefined => this.maxQueries;
  /** Connections in a row that the peer ended before they carried a single answer. */
  private barren = 0;
  /** Queries sent again after their connection ended (for tests and metrics). */
  retries = 0;

  constructor(
    readonly server: Server,
    private readonly open: StreamOpener,
    readonly description: string,
    private readonly opts: { maxConnections?: number; perConnection?: number; idleMs?: number } = {},
  ) {}

  /** Queries per connection learned from the server, if any. */
  get learnedLimit(): number | undefined {
    return this.maxQueries;
  }

  async query(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    for (let attempt = 1, waits = 0; ;) {
      if (this.closed) throw dnsError(`${this.description}: closed`);
      if (signal.aborted) throw aborted(signal, this.description);
      // Chosen with no await before the send: when a connection ends, all
      // its queries come back here at once, and had they all waited for the
      // same new connection they would all be sent on it, past what the
      // server takes on one (dnsmasq: 100); a query past that limit is lost
      // with those before it (the server closes with it unread, and its
      // reset discards answers still on their way). Waiters choose again.
      const conn = this.choose();
      if (!conn) {
        // A server that takes connections and closes them unanswered must
        // not be dialled in a loop: then one new connection per query.
        if (++waits > 1 && this.barren >= TCP_ATTEMPTS) throw dnsError(`${this.description}: connections closed before any answer`);
        await this.connected(signal);
        continue;
      }
      try {
        return await conn.send(msg, signal);
      } catch (err) {
        // Only a connection that ended under the query: an abort or a
        // closing transport is final. DNS queries are idempotent.
        if (signal.aborted || this.closed || !conn.dead || attempt >= TCP_ATTEMPTS) throw err;
        attempt++;
        this.retries++;
      }
    }
  }

  /** The least busy connection that takes another query, unless a new one is due. */
  private choose(): PipelinedConnection | undefined {
    const per = this.opts.perConnection ?? 64;
    const max = this.opts.maxConnections ?? 4;
    let best: PipelinedConnection | undefined;
    let usable = 0;
    for (const c of this.conns) {
      if (!c.usable) continue;
      usable++;
      if (!best || c.pending.size < best.pending.size) best = c;
    }
    if (best && (best.pending.size < per || usable >= max)) return best;
    return undefined;
  }

  private connected(signal: AbortSignal): Promise<PipelinedConnection> {
    this.connecting ??= this.connect(signal).finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async connect(signal: AbortSignal): Promise<PipelinedConnection> {
    let sock: net.Socket;
    try {
      sock = await this.open(this.server.host, this.server.port, signal);
    } catch (err) {
      throw dnsError(`${this.description}: ${(err as Error).message}`, err);
    }
    if (this.closed) {
      sock.destroy();
      throw dnsError(`${this.description}: closed`);
    }
    const c = new PipelinedConnection(sock, this.opts.idleMs ?? 30_000, (dead, byServer) => this.onDead(dead, byServer), this.limit);
    this.conns.add(c);
    return c;
  }

  private onDead(c: PipelinedConnection, byPeer: boolean): void {
    this.conns.delete(c);
    if (c.answered > 0) this.barren = 0;
    else if (byPeer) this.barren++;
    // The most answers seen on such a connection: a reset from the server
    // can discard answers already on their way (through a proxy, whose
    // side of the tunnel is reset), so fewer arriving proves nothing.
    if (byPeer && c.answered >= MIN_LEARNED_QUERIES && (this.maxQueries === undefined || c.answered > this.maxQueries)) {
      this.maxQueries = c.answered;
    }
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.conns]) c.close();
    this.conns.clear();
  }
}

/** A UDP socket of the pool, with the queries it has outstanding by ID. */
interface PooledSocket {
  sock: dgram.Socket;
  pending: Map<number, Pending>;
  ready: Promise<void>;
  uses: number;
  retired: boolean;
}

/** Sockets per server, and how many queries each carries before a fresh source port replaces it. */
const UDP_POOL = 8;
const UDP_USES_PER_SOCKET = 500;

/**
 * DNS over UDP to one server. A small pool of sockets with random IDs (a
 * socket per query costs a bind and a close each time); each socket is
 * replaced after a few hundred queries, so source ports keep changing.
 * Truncated answers are asked again over TCP.
 */
export class UdpTransport implements DnsTransport {
  readonly description: string;
  private readonly sockets: PooledSocket[] = [];
  private next = 0;
  private closed = false;
  /** The server's address as dgram reports senders (IPv6 in canonical form). */
  private readonly serverAddress: string;

  constructor(
    readonly server: Server,
    private readonly tcp: TcpTransport,
    private readonly mark?: number,
  ) {
    this.description = `udp ${hostPort(server.host, server.port)}`;
    this.serverAddress = normalizeIp(server.host)?.text ?? server.host;
  }

  async query(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    const answer = await this.udp(msg, signal);
    if (readHeader(answer).tc) return this.tcp.query(msg, signal);
    return answer;
  }

  private pick(): PooledSocket {
    if (this.sockets.length < UDP_POOL) {
      const s = this.open();
      this.sockets.push(s);
      return s;
    }
    const i = this.next++ % this.sockets.length;
    let s = this.sockets[i]!;
    if (s.uses >= UDP_USES_PER_SOCKET) {
      this.retire(s);
      s = this.open();
      this.sockets[i] = s;
    }
    return s;
  }

  private open(): PooledSocket {
    const sock = dgram.createSocket(net.isIPv6(this.server.host) ? 'udp6' : 'udp4');
    const s: PooledSocket = { sock, pending: new Map(), ready: Promise.resolve(), uses: 0, retired: false };
    sock.on('error', (err) => this.fail(s, dnsError(`${this.description}: ${err.message}`, err)));
    sock.on('message', (data, rinfo) => {
      // Only the server's answer to an ID this socket asked counts: anything else could be spoofed.
      if (rinfo.port !== this.server.port || rinfo.address !== this.serverAddress || data.length < 12) return;
      const p = s.pending.get(data.readUInt16BE(0));
      if (!p) return;
      s.pending.delete(data.readUInt16BE(0));
      p.resolve(data);
      if (s.retired && s.pending.size === 0) sock.close();
    });
    // Pooled sockets must not keep the process alive; close() ends them anyway.
    sock.unref();
    if (this.mark !== undefined) {
      // The mark must be on the socket before its first packet: bind, mark, then send.
      s.ready = new Promise<void>((resolve, reject) => {
        sock.bind(0, () => {
          try {
            const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
            if (typeof fd !== 'number' || fd < 0) throw new Error('no file descriptor for the UDP socket');
            setMark(fd, this.mark!);
            resolve();
          } catch (err) {
            reject(dnsError(`${this.description}: SO_MARK: ${(err as Error).message}`, err));
          }
        });
      });
      s.ready.catch(() => undefined);
    }
    return s;
  }

  private retire(s: PooledSocket): void {
    s.retired = true;
    if (s.pending.size === 0) s.sock.close();
  }

  private fail(s: PooledSocket, err: Error): void {
    const i = this.sockets.indexOf(s);
    if (i >= 0) this.sockets.splice(i, 1);
    for (const p of s.pending.values()) p.reject(err);
    s.pending.clear();
    try {
      s.sock.close();
    } catch {
      /* already closed */
    }
  }

  private async udp(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    if (this.closed) throw dnsError(`${this.description}: closed`);
    if (signal.aborted) throw aborted(signal, this.description);
    const s = this.pick();
    s.uses++;
    await s.ready;
    let id: number;
    do id = randomId();
    while (s.pending.has(id));
    const answer = awaitAnswer(
      signal,
      () => {
        s.pending.delete(id);
        if (s.retired && s.pending.size === 0) s.sock.close();
        return aborted(signal, this.description);
      },
      (p) => s.pending.set(id, p),
    );
    s.sock.send(withId(msg, id), this.server.port, this.server.host, (err) => {
      if (!err) return;
      const p = s.pending.get(id);
      s.pending.delete(id);
      p?.reject(dnsError(`${this.description}: ${err.message}`, err));
    });
    return answer;
  }

  close(): void {
    this.closed = true;
    for (const s of [...this.sockets]) this.fail(s, dnsError(`${this.description}: closed`));
    this.tcp.close();
  }
}

export interface DohOptions {
  url: URL;
  open: StreamOpener;
  /** Extra trusted CA certificates (PEM), on top of Node's roots. */
  ca?: string[];
  connectTimeoutMs: number;
}

/**
 * DNS over HTTPS (RFC 8484, POST with application/dns-message) through a
 * stream from `open`, TLS from the gateway. HTTP/2 when the server offers it
 * (one session, many streams); otherwise HTTP/1.1, one connection per query.
 */
export class DohTransport implements DnsTransport {
  readonly description: string;
  private session: Promise<{ h2?: http2.ClientHttp2Session; socket?: tls.TLSSocket }> | undefined;
  private closed = false;
  private readonly usedH1 = new WeakSet<tls.TLSSocket>();
  private readonly host: string;
  private readonly port: number;
  private readonly ca: string[] | undefined;

  constructor(private readonly opts: DohOptions) {
    this.description = `doh ${opts.url.href}`;
    this.host = opts.url.hostname.replace(/^\[|\]$/g, '');
    this.port = Number(opts.url.port || 443);
    this.ca = opts.ca && opts.ca.length > 0 ? [...tls.rootCertificates, ...opts.ca] : undefined;
  }

  async query(msg: Buffer, signal: AbortSignal): Promise<Buffer> {
    // RFC 8484 4.1: ID 0 keeps HTTP caches effective; the caller matches by question.
    const body = withId(msg, 0);
    const s = await this.connect(signal);
    if (s.h2) {
      try {
        return await this.h2Query(s.h2, body, signal);
      } catch (err) {
        if (signal.aborted || this.closed || !s.h2.destroyed) throw err;
        // The session died under us (GOAWAY, idle close): once more on a new one.
        return this.h2Query((await this.connect(signal)).h2!, body, signal);
      }
    }
    // HTTP/1.1 carries one query per connection: a query that shared a
    // handshake with another one gets its own.
    let socket = s.socket!;
    if (this.usedH1.has(socket)) {
      const fresh = await this.handshake(signal);
      if (fresh.h2) return this.h2Query(fresh.h2, body, signal);
      socket = fresh.socket!;
    }
    this.usedH1.add(socket);
    return this.h1Query(socket, body, signal);
  }

  private connect(signal: AbortSignal): Promise<{ h2?: http2.ClientHttp2Session; socket?: tls.TLSSocket }> {
    if (this.closed) return Promise.reject(dnsError(`${this.description}: closed`));
    if (this.session) return this.session;
    const p = this.handshake(signal).then(
      (s) => {
        if (!s.h2) {
          // HTTP/1.1: this connection is used by one query; the next one handshakes again.
          if (this.session === p) this.session = undefined;
          return s;
        }
        const forget = (): void => {
          if (this.session === p) this.session = undefined;
        };
        s.h2.on('close', forget);
        s.h2.on('goaway', forget);
        s.h2.on('error', forget);
        s.h2.setTimeout(60_000, () => s.h2!.close());
        s.h2.unref();
        return s;
      },
      (err: unknown) => {
        if (this.session === p) this.session = undefined;
        throw err;
      },
    );
    this.session = p;
    return p;
  }

  private async handshake(signal: AbortSignal): Promise<{ h2?: http2.ClientHttp2Session; socket?: tls.TLSSocket }> {
    let raw: net.Socket;
    try {
      raw = await this.opts.open(this.host, this.port, signal);
    } catch (err) {
      throw dnsError(`${this.description}: ${(err as Error).message}`, err);
    }
    const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({
        socket: raw,
        // The certificate is checked against host (an IP literal gets no SNI but must still match).
        host: this.host,
        servername: net.isIP(this.host) ? undefined : this.host,
        ALPNProtocols: ['h2', 'http/1.1'],
        ca: this.ca,
      });
      const timer = setTimeout(() => {
        t.destroy();
        reject(dnsError(`${this.description}: TLS handshake took longer than ${this.opts.connectTimeoutMs} ms`));
      }, this.opts.connectTimeoutMs);
      t.once('secureConnect', () => {
        clearTimeout(timer);
        t.off('error', onErr);
        t.on('error', () => {
          /* reported through the request that uses it */
        });
        resolve(t);
      });
      const onErr = (err: Error): void => {
        clearTimeout(timer);
        t.destroy();
        const hint = /certificate|self.signed|issuer/i.test(err.message) ? " (is the server's CA trusted? see --doh-ca)" : '';
        reject(dnsError(`${this.description}: TLS: ${err.message}${hint}`, err));
      };
      t.once('error', onErr);
    });
    if (socket.alpnProtocol === 'h2') {
      const h2 = http2.connect(this.opts.url.origin, { createConnection: () => socket });
      h2.on('error', () => {
        /* reported through the streams */
      });
      return { h2 };
    }
    return { socket };
  }

  private path(): string {
    return `${this.opts.url.pathname}${this.opts.url.search}`;
  }

  private h2Query(h2: http2.ClientHttp2Session, body: Buffer, signal: AbortSignal): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      let req: http2.ClientHttp2Stream;
      try {
        req = h2.request({
          ':method': 'POST',
          ':path': this.path(),
          'content-type': 'application/dns-message',
          accept: 'application/dns-message',
          'content-length': body.length,
        });
      } catch (err) {
        reject(dnsError(`${this.description}: ${(err as Error).message}`, err));
        return;
      }
      const onAbort = (): void => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        reject(aborted(signal, this.description));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      let status = 0;
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('response', (headers) => {
        status = Number(headers[':status']);
      });
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > 65535) req.close(http2.constants.NGHTTP2_CANCEL);
        else chunks.push(c);
      });
      req.on('end', () => {
        signal.removeEventListener('abort', onAbort);
        if (status !== 200) reject(dnsError(`${this.description}: HTTP status ${status}`));
        else resolve(Buffer.concat(chunks));
      });
      req.on('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(dnsError(`${this.description}: ${err.message}`, err));
      });
      req.end(body);
    });
  }

  private h1Query(socket: tls.TLSSocket, body: Buffer, signal: AbortSignal): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const req = http.request({
        createConnection: () => socket,
        method: 'POST',
        host: this.host,
        path: this.path(),
        headers: {
          host: this.opts.url.host,
          'content-type': 'application/dns-message',
          accept: 'application/dns-message',
          'content-length': body.length,
          connection: 'close',
        },
      });
      const onAbort = (): void => {
        req.destroy();
        reject(aborted(signal, this.description));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > 65535) req.destroy(new Error('answer longer than 65535 bytes'));
          else chunks.push(c);
        });
        res.on('end', () => {
          signal.removeEventListener('abort', onAbort);
          socket.destroy();
          if (res.statusCode !== 200) reject(dnsError(`${this.description}: HTTP status ${res.statusCode}`));
          else resolve(Buffer.concat(chunks));
        });
      });
      req.on('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        socket.destroy();
        reject(dnsError(`${this.description}: ${err.message}`, err));
      });
      req.end(body);
    });
  }

  close(): void {
    this.closed = true;
    const s = this.session;
    this.session = undefined;
    void s?.then(
      (x) => {
        x.h2?.destroy();
        x.socket?.destroy();
      },
      () => undefined,
    );
  }
}

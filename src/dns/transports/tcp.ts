import net from 'node:net';
import {
  aborted,
  awaitAnswer,
  dnsError,
  frame,
  randomId,
  unframe,
  withId,
  type DnsTransport,
  type Pending,
  type Server,
  type StreamOpener,
} from './shared';

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

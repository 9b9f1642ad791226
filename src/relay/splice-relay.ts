import type net from 'node:net';
import { errnoOf } from '../core/errors';
import { Outcomes, outcomeText, socketFd, spliceAbortAll, spliceRelay, type SpliceRelayOptions } from '../native';
import type { Relay, RelayOptions, RelayResult } from './relay';

/** The parts of Node's internal TCP handle the hand-over needs. */
interface StreamHandle {
  reading?: boolean;
  readStop?(): number;
}

interface Detached {
  /** What Node had already read from the socket but nobody consumed. */
  pending: Buffer[];
  /** Node already read EOF from the socket. */
  eof: boolean;
}

/**
 * Takes the bytes Node has already read and stops its reading, so that the
 * kernel's receive queue is the only source left for splice(2). read() in
 * paused mode drains the buffer in one call; it may restart reading (to refill
 * the buffer), which is why readStop comes after it, in the same tick.
 */
function detach(sock: net.Socket): Detached {
  sock.pause();
  const pending: Buffer[] = [];
  for (let chunk = sock.read() as Buffer | null; chunk !== null; chunk = sock.read() as Buffer | null) pending.push(chunk);
  const handle = (sock as unknown as { _handle?: StreamHandle | null })._handle;
  if (handle?.reading && handle.readStop) {
    handle.reading = false;
    handle.readStop();
  }
  const state = (sock as unknown as { _readableState?: { ended?: boolean } })._readableState;
  return { pending, eof: sock.readableEnded || state?.ended === true };
}

/** Resolves once everything queued on sock has reached the kernel; rejects on a write error. */
function flushed(sock: net.Socket): Promise<void> {
  if (sock.writableLength === 0) return Promise.resolve();
  // Writes complete in order: the callback of an empty write runs after all earlier ones.
  return new Promise((resolve, reject) => sock.write(Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
}

/**
 * Starts the native relay. A function of its own so that the callback the
 * addon holds for the connection's lifetime closes over numbers only: a
 * closure inside run() would keep run()'s whole scope, both destroyed
 * net.Sockets included, alive for as long as the connection is idle.
 */
function handOver(
  clientFd: number,
  upstreamFd: number,
  opts: SpliceRelayOptions,
  up: number,
  down: number,
  onEnd: () => void,
): Promise<RelayResult> {
  return new Promise((resolve) => {
    spliceRelay(clientFd, upstreamFd, opts, (splicedUp, splicedDown, outcome, detail) => {
      // Resolve first: the connection's log line is then queued before a waiting close() goes on.
      resolve({ up: up + splicedUp, down: down + splicedDown, outcome: outcomeText(outcome, detail) });
      onEnd();
    });
  });
}

/**
 * Hands both connections to the addon and lets Node's sockets go. `up` and
 * `down` are the bytes Node already carried during the hand-over.
 */
function start(
  client: net.Socket,
  upstream: net.Socket,
  opts: RelayOptions,
  c: Detached,
  u: Detached,
  up: number,
  down: number,
  onEnd: () => void,
): Promise<RelayResult> | RelayResult {
  let result: Promise<RelayResult>;
  try {
    result = handOver(
      socketFd(client),
      socketFd(upstream),
      { idleTimeoutMs: opts.idleTimeoutMs, clientEof: c.eof, upstreamEof: u.eof },
      up,
      down,
      onEnd,
    );
  } catch (err) {
    // EMFILE for the duplicates, most likely: nothing was handed over, so
    // the connection ends here with the reason.
    client.resetAndDestroy();
    upstream.resetAndDestroy();
    return { up, down, outcome: outcomeText(Outcomes.RELAY_ERROR, errnoOf(err) ?? (err as Error).message) };
  }
  // Node's descriptors go; the addon's duplicates carry the connection.
  client.destroy();
  upstream.destroy();
  return result;
}

/**
 * The zero-copy relay: after the tunnel is open, the addon moves the bytes
 * with splice(2) between the two sockets (native/splice.c) and Node only
 * hears about the end.
 *
 * Who closes the fds: the addon dup()s both and Node destroys its sockets at
 * once. Each side then closes its own descriptor exactly once, Node's close
 * cannot touch a descriptor number the addon still polls (a number reused
 * by a new accept would otherwise be watched by two handles), and the idle
 * connection no longer costs a net.Socket in memory. The connection itself
 * ends when the addon closes the last duplicate.
 */
export class SpliceRelay implements Relay {
  readonly name = 'splice';
  /** Connections the addon carries now, and who waits for them to end (close()). */
  private live = 0;
  private drained: (() => void) | undefined;
  private readonly ended = (): void => {
    if (--this.live === 0 && this.drained) {
      this.drained();
      this.drained = undefined;
    }
  };

  run(client: net.Socket, upstream: net.Socket, opts: RelayOptions): Promise<RelayResult> {
    const c = detach(client);
    const u = detach(upstream);
    // The usual case (nothing buffered in Node, the CONNECT and the sniffed
    // head already in the kernel) hands over at once, without an await.
    if (
      c.pending.length === 0 &&
      u.pending.length === 0 &&
      client.writableLength === 0 &&
      upstream.writableLength === 0 &&
      !client.destroyed &&
      !upstream.destroyed
    ) {
      return Promise.resolve(this.start(client, upstream, opts, c, u, 0, 0));
    }
    return this.flushThenStart(client, upstream, opts, c, u);
  }

  private async flushThenStart(
    client: net.Socket,
    upstream: net.Socket,
    opts: RelayOptions,
    c: Detached,
    u: Detached,
  ): Promise<RelayResult> {
    let up = 0;
    let down = 0;
    for (const b of c.pending) up += b.length;
    for (const b of u.pending) down += b.length;
    // Errors while the last Node-side writes drain are the relay's outcome.
    let failure: string | undefined;
    const onError =
      (from: net.Socket, to: net.Socket) =>
      (err: Error): void => {
        failure ??= outcomeText(from === client ? Outcomes.CLIENT_ERROR : Outcomes.UPSTREAM_ERROR, errnoOf(err) ?? err.message);
        if (!to.destroyed) to.resetAndDestroy();
      };
    const onClientError = onError(client, upstream);
    const onUpstreamError = onError(upstream, client);
    client.on('error', onClientError);
    upstream.on('error', onUpstreamError);
    try {
      if (c.pending.length > 0) upstream.write(c.pending.length === 1 ? c.pending[0]! : Buffer.concat(c.pending));
      if (u.pending.length > 0) client.write(u.pending.length === 1 ? u.pending[0]! : Buffer.concat(u.pending));
      await Promise.all([flushed(client), flushed(upstream)]);
    } catch (err) {
      failure ??= outcomeText(Outcomes.RELAY_ERROR, errnoOf(err) ?? (err as Error).message);
    }
    client.off('error', onClientError);
    upstream.off('error', onUpstreamError);
    if (failure === undefined && (client.destroyed || upstream.destroyed))
      failure = outcomeText(client.destroyed ? Outcomes.CLIENT_ERROR : Outcomes.UPSTREAM_ERROR, 'closed');
    if (failure !== undefined) {
      client.destroy();
      upstream.destroy();
      return { up, down, outcome: failure };
    }
    return this.start(client, upstream, opts, c, u, up, down);
  }

  private start(
    client: net.Socket,
    upstream: net.Socket,
    opts: RelayOptions,
    c: Detached,
    u: Detached,
    up: number,
    down: number,
  ): Promise<RelayResult> | RelayResult {
    const r = start(client, upstream, opts, c, u, up, down, this.ended);
    if (r instanceof Promise) this.live++;
    return r;
  }

  /**
   * Ends every spliced connection (gateway shutdown) and resolves once each
   * run() has resolved, with outcome 'aborted', so their log lines are out.
   */
  close(): Promise<void> {
    spliceAbortAll();
    if (this.live === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drained = resolve));
  }
}

import type net from 'node:net';
import { errnoOf } from '../core/errors';
import { socketFd, spliceAbortAll, spliceRelay } from '../native';
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

  async run(client: net.Socket, upstream: net.Socket, opts: RelayOptions): Promise<RelayResult> {
    const c = detach(client);
    const u = detach(upstream);
    let up = 0;
    let down = 0;
    for (const b of c.pending) up += b.length;
    for (const b of u.pending) down += b.length;
    // Errors while the last Node-side writes drain are the relay's outcome.
    let failure: string | undefined;
    const onError = (from: net.Socket, to: net.Socket) => (err: Error): void => {
      failure ??= `${from === client ? 'client' : 'upstream'} ${errnoOf(err) ?? err.message}`;
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
      failure ??= `relay ${errnoOf(err) ?? (err as Error).message}`;
    }
    if (failure === undefined && (client.destroyed || upstream.destroyed)) failure = `${client.destroyed ? 'client' : 'upstream'} closed`;
    if (failure !== undefined) {
      client.destroy();
      upstream.destroy();
      return { up, down, outcome: failure };
    }

    let done!: (r: RelayResult) => void;
    const result = new Promise<RelayResult>((resolve) => (done = resolve));
    try {
      spliceRelay(
        socketFd(client),
        socketFd(upstream),
        { idleTimeoutMs: opts.idleTimeoutMs, clientEof: c.eof, upstreamEof: u.eof },
        (splicedUp, splicedDown, outcome) => done({ up: up + splicedUp, down: down + splicedDown, outcome }),
      );
    } catch (err) {
      // EMFILE for the duplicates, most likely: nothing was handed over, so
      // the connection ends here with the reason.
      client.resetAndDestroy();
      upstream.resetAndDestroy();
      return { up, down, outcome: `relay ${errnoOf(err) ?? (err as Error).message}` };
    }
    client.off('error', onClientError);
    upstream.off('error', onUpstreamError);
    // Node's descriptors go; the addon's duplicates carry the connection.
    client.destroy();
    upstream.destroy();
    return result;
  }

  /** Ends every spliced connection (gateway shutdown); each run() still resolves, with outcome 'aborted'. */
  close(): void {
    spliceAbortAll();
  }
}

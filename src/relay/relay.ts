import type net from 'node:net';
import type { ConnContext } from '../core/context';

export interface RelayOptions {
  /** Close both sides after this long without traffic in either direction. */
  idleTimeoutMs: number;
}

export interface RelayResult {
  /** Bytes carried client → upstream during the relay. */
  up: number;
  /** Bytes carried upstream → client during the relay. */
  down: number;
  /** The log's result, outcomeText(...) of src/native: 'ok', 'idle-timeout', 'client ECONNRESET', 'relay EMFILE'. */
  outcome: string;
}

/**
 * Opens the upstream side for `client` (a dial, a CONNECT), given up as soon
 * as the client leaves: then nothing is left open, the connection is logged
 * as client-closed, and the result is undefined.
 */
export async function openFor(
  client: net.Socket,
  ctx: ConnContext,
  onDone: (ctx: ConnContext) => void,
  open: (signal: AbortSignal) => Promise<net.Socket>,
): Promise<{ upstream: net.Socket } | { error: unknown } | undefined> {
  const abort = new AbortController();
  const onEarlyClose = (): void => abort.abort();
  client.once('close', onEarlyClose);
  let opened: { upstream: net.Socket } | { error: unknown };
  try {
    opened = { upstream: await open(abort.signal) };
  } catch (error) {
    opened = { error };
  } finally {
    client.off('close', onEarlyClose);
  }
  if (!client.destroyed) return opened;
  if ('upstream' in opened) opened.upstream.destroy();
  ctx.result = 'client-closed';
  onDone(ctx);
  return undefined;
}

/**
 * The byte pump between an accepted client socket and a connected upstream.
 * Implementations must honour backpressure and half-close, reset the other
 * side when one side resets, and resolve exactly once when both are closed.
 */
export interface Relay {
  readonly name: string;
  run(client: net.Socket, upstream: net.Socket, opts: RelayOptions): Promise<RelayResult>;
  /**
   * Ends every running relay (gateway shutdown) for relays that own
   * connections beyond Node's sockets (the splice relay); each run() still
   * resolves, before the returned promise does.
   */
  close?(): void | Promise<void>;
}

import type net from 'node:net';

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

import type net from 'node:net';
import { errnoOf } from '../core/errors';
import { Outcomes, outcomeText } from '../native';
import type { Relay, RelayOptions, RelayResult } from './relay';

/**
 * Stream relay on Node's sockets: pipe() gives backpressure and forwards a
 * half-close (end) to the other side because both sockets allow half-open.
 * Byte counts come from the sockets' own counters, so nothing is done per chunk.
 */
export class JsRelay implements Relay {
  readonly name = 'js';
  /** Relays running now, with their sockets (close()). */
  private readonly running = new Map<Promise<RelayResult>, [net.Socket, net.Socket]>();

  run(client: net.Socket, upstream: net.Socket, opts: RelayOptions): Promise<RelayResult> {
    const done: Promise<RelayResult> = this.pump(client, upstream, opts).finally(() => this.running.delete(done));
    this.running.set(done, [client, upstream]);
    return done;
  }

  /**
   * Ends every relay (gateway shutdown) and resolves once each run() has, both sockets closed. Without it the
   * gateway destroyed the client sockets and the upstream ones followed on the clients' 'close', a loop turn after
   * Gateway.close() had resolved.
   */
  close(): Promise<void> {
    const all = [...this.running];
    for (const [, sockets] of all) for (const s of sockets) s.destroy();
    return Promise.all(all.map(([done]) => done)).then(() => undefined);
  }

  private pump(client: net.Socket, upstream: net.Socket, opts: RelayOptions): Promise<RelayResult> {
    const upBase = upstream.bytesWritten;
    const downBase = client.bytesWritten;
    return new Promise((resolve) => {
      let outcome = OK;
      let open = 2;
      const onClose = (): void => {
        if (--open > 0) {
          // One side is gone for good: the other cannot carry anything useful any more.
          if (client.destroyed !== upstream.destroyed) (client.destroyed ? upstream : client).destroy();
          return;
        }
        resolve({ up: upstream.bytesWritten - upBase, down: client.bytesWritten - downBase, outcome });
      };
      // A reset on one side is passed on as a reset, so that the peer sees the
      // failure instead of a clean end of stream.
      const onError =
        (from: net.Socket, to: net.Socket) =>
        (err: Error): void => {
          if (outcome === OK)
            outcome = outcomeText(from === client ? Outcomes.CLIENT_ERROR : Outcomes.UPSTREAM_ERROR, errnoOf(err) ?? err.message);
          if (!to.destroyed) to.resetAndDestroy();
        };
      const onTimeout = (): void => {
        if (outcome === OK) outcome = outcomeText(Outcomes.IDLE_TIMEOUT);
        client.destroy();
        upstream.destroy();
      };
      client.once('close', onClose);
      upstream.once('close', onClose);
      client.on('error', onError(client, upstream));
      upstream.on('error', onError(upstream, client));
      if (opts.idleTimeoutMs > 0) {
        client.setTimeout(opts.idleTimeoutMs, onTimeout);
        upstream.setTimeout(opts.idleTimeoutMs, onTimeout);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
      upstream.resume();
    });
  }
}

const OK = outcomeText(Outcomes.OK);

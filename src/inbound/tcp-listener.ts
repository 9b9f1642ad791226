import fs from 'node:fs';
import net from 'node:net';
import type { Mode } from '../config/types';
import { ConnContext, type ListenerKind } from '../core/context';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { formatAddress, unmapAddress, type Address } from '../core/types';
import * as native from '../native/index';

export type ConnHandler = (sock: net.Socket, ctx: ConnContext) => void;

export interface TcpListenerOptions {
  kind: ListenerKind;
  mode: Mode;
  port: number;
  /** Addresses to bind, e.g. ['::'] (dual-stack) or ['127.0.0.1', '::1']. */
  bind: string[];
  onConnection: ConnHandler;
  /**
   * accept(2) failed (EMFILE). libuv then closes a reserved descriptor,
   * accepts and closes what waits (so the backlog does not spin the loop)
   * and reports the error; the listener stays.
   */
  onAcceptError?(errno: string): void;
  /** Connections that failed the original-destination step. */
  onUnusable: (sock: net.Socket, client: Address, err: GatewayError) => void;
  /**
   * Hands each listening fd to a native acceptor instead of a net.Server
   * (src/relay/native-executor.ts); onConnection and onUnusable are then
   * not called.
   */
  nativeAccept?: (fd: number) => { close(): void };
}

/** An address as Node or the addon reports it, IPv4-mapped IPv6 shown as IPv4. */
export function addressOf(address: string | undefined, port: number | undefined): Address {
  const u = unmapAddress(address ?? '');
  return { address: u.address, port: port ?? 0, family: u.family };
}

/** A connection to a REDIRECT-mode listener that was not redirected (SO_ORIGINAL_DST failed). */
export function noOriginalDst(client: Address, why: string, cause?: unknown): GatewayError {
  return new GatewayError(
    ErrorCodes.ORIGINAL_DST,
    `no original destination for ${formatAddress(client)} (${why}): not a redirected connection`,
    { cause },
  );
}

/**
 * An intercepting TCP listener. Under TPROXY the accepted socket's local
 * address is where the client wanted to go; after REDIRECT the kernel keeps
 * it in conntrack and SO_ORIGINAL_DST reads it back.
 */
export class TcpListener {
  private readonly servers: net.Server[] = [];
  private readonly acceptors: Array<{ close(): void }> = [];

  constructor(private readonly opts: TcpListenerOptions) {}

  get description(): string {
    return `listener[${this.opts.kind} ${this.opts.bind.map((b) => (b.includes(':') ? `[${b}]` : b)).join(',')}:${this.opts.port}]`;
  }

  async start(): Promise<void> {
    for (const host of this.opts.bind) {
      let fd: number;
      try {
        fd = native.listenTcp({ host, port: this.opts.port, transparent: this.opts.mode === 'tproxy', v6only: host !== '::' });
      } catch (err) {
        const errno = errnoOf(err);
        const hint =
          errno === 'EADDRINUSE'
            ? `: port ${this.opts.port} is taken by another program; pick another with the listen flags`
            : errno === 'EPERM' || errno === 'EACCES'
              ? ': run as root or with CAP_NET_ADMIN (sudo -E npx transgate)'
              : errno === 'EADDRNOTAVAIL'
                ? `: address ${host} is not available (is IPv6 disabled? try --no-ipv6)`
                : '';
        throw new GatewayError(ErrorCodes.LISTEN, `start ${this.description}: ${(err as Error).message}${hint}`, { cause: err });
      }
      if (this.opts.nativeAccept) {
        try {
          this.acceptors.push(this.opts.nativeAccept(fd));
        } catch (err) {
          fs.closeSync(fd);
          throw new GatewayError(ErrorCodes.LISTEN, `start ${this.description}: ${(err as Error).message}`, { cause: err });
        }
        continue;
      }
      const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (sock) => this.onAccept(sock));
      server.on('error', (err) => this.opts.onAcceptError?.(errnoOf(err) ?? err.message));
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => {
          fs.closeSync(fd);
          reject(new GatewayError(ErrorCodes.LISTEN, `start ${this.description}: ${err.message}`, { cause: err }));
        };
        server.once('error', onError);
        server.listen({ fd }, () => {
          server.off('error', onError);
          resolve();
        });
      });
      this.servers.push(server);
    }
  }

  private onAccept(sock: net.Socket): void {
    // Every socket has an error listener from its first moment: a reset
    // during any stage must never become an uncaught exception.
    sock.on('error', noop);
    const client = addressOf(sock.remoteAddress, sock.remotePort);
    let destination: Address;
    if (this.opts.mode === 'tproxy') {
      destination = addressOf(sock.localAddress, sock.localPort);
    } else {
      try {
        destination = native.originalDst(native.socketFd(sock));
      } catch (err) {
        this.opts.onUnusable(sock, client, noOriginalDst(client, errnoOf(err) ?? (err as Error).message, err));
        return;
      }
    }
    this.opts.onConnection(sock, new ConnContext(this.opts.kind, client, destination));
  }

  async close(): Promise<void> {
    for (const a of this.acceptors) a.close();
    this.acceptors.length = 0;
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.servers.length = 0;
  }
}

function noop(): void {}

import dgram from 'node:dgram';
import fs from 'node:fs';
import type { Mode } from '../config/types';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { unmapAddress, type Address } from '../core/types';
import { Lru } from '../core/lru';
import * as native from '../native/index';

/**
 * One datagram. `destination` is where the client sent it: under TPROXY the
 * kernel reports it (IP_ORIGDSTADDR); after REDIRECT it is gone (UDP has no
 * SO_ORIGINAL_DST), so it is undefined.
 */
export interface Datagram {
  data: Buffer;
  client: Address;
  destination: Address | undefined;
  /** Sends the answer back the way the query came. Never throws; drops on failure. */
  reply(data: Buffer): void;
}

export interface UdpListenerOptions {
  mode: Mode;
  port: number;
  bind: string[];
  onDatagram(d: Datagram): void;
  /** Reply sockets cached per source address (TPROXY); 0 opens and closes one per reply. */
  replySocketCache?: number;
  onSendError?(err: unknown, to: Address): void;
}

function addr(host: string, port: number): Address {
  const u = unmapAddress(host);
  return { address: u.address, port, family: u.family };
}

/**
 * Answers under TPROXY must come from the address the client asked, which
 * is not the gateway's: a transparent socket bound to it. Binding costs two
 * syscalls, so a few are kept (least recently used go first).
 */
class ReplySockets {
  // An evicted socket is closed: the cache owns the fds it holds.
  private readonly fds: Lru<string, number>;

  constructor(private readonly capacity: number) {
    this.fds = new Lru(capacity, (_key, fd) => fs.closeSync(fd));
  }

  send(from: Address, to: Address, data: Buffer): void {
    const key = `${from.address}|${from.port}`;
    let fd = this.fds.get(key); // refreshes its place
    if (fd === undefined) {
      fd = native.udpReplySocket(from.address, from.port);
      // Capacity 0 keeps nothing (set stores nothing): the socket is closed after this one reply.
      this.fds.set(key, fd);
    }
    try {
      native.udpSend(fd, data, to.address, to.port);
    } finally {
      if (this.capacity <= 0) fs.closeSync(fd);
    }
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}

/** The UDP side of DNS interception: TPROXY (native transparent socket) or REDIRECT (plain dgram). */
export class UdpListener {
  private readonly handles: native.UdpHandle[] = [];
  private readonly sockets: dgram.Socket[] = [];
  private readonly replies: ReplySockets;

  constructor(private readonly opts: UdpListenerOptions) {
    this.replies = new ReplySockets(opts.replySocketCache ?? 64);
  }

  get description(): string {
    return `listener[dns udp ${this.opts.bind.map((b) => (b.includes(':') ? `[${b}]` : b)).join(',')}:${this.opts.port}]`;
  }

  async start(): Promise<void> {
    for (const host of this.opts.bind) {
      try {
        if (this.opts.mode === 'tproxy') this.startTproxy(host);
        else await this.startRedirect(host);
      } catch (err) {
        const errno = errnoOf(err);
        const hint =
          errno === 'EADDRINUSE'
            ? `: UDP port ${this.opts.port} is taken; pick another with --dns-proxy-listen (or --no-dns)`
            : errno === 'EPERM' || errno === 'EACCES'
              ? ': run as root or with CAP_NET_ADMIN'
              : errno === 'EADDRNOTAVAIL'
                ? `: address ${host} is not available (try --no-ipv6)`
                : '';
        this.close();
        throw new GatewayError(ErrorCodes.LISTEN, `start ${this.description}: ${(err as Error).message}${hint}`, { cause: err });
      }
    }
  }

  private startTproxy(host: string): void {
    const handle = native.udpListen({ host, port: this.opts.port, transparent: true }, (data, ch, cp, dh, dp) => {
      // Called from the addon: a throw would reach 'uncaughtException' and stop the gateway; drop the datagram instead.
      try {
        this.onTproxyDatagram(data, ch, cp, dh, dp);
      } catch (err) {
        this.opts.onSendError?.(err, addr(ch, cp));
      }
    });
    this.handles.push(handle);
  }

  private onTproxyDatagram(data: Buffer, ch: string, cp: number, dh: string, dp: number): void {
    const client = addr(ch, cp);
    const destination = addr(dh, dp);
    this.opts.onDatagram({
      data,
      client,
      destination,
      reply: (answer) => {
        try {
          this.replies.send(destination, client, answer);
        } catch (err) {
          this.opts.onSendError?.(err, client);
        }
      },
    });
  }

  private async startRedirect(host: string): Promise<void> {
    const v6 = host.includes(':');
    const sock = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: false, reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind({ address: host, port: this.opts.port, exclusive: true }, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    sock.on('error', () => {
      // Per-datagram errors (ICMP unreachable) must not end the listener.
    });
    sock.on('message', (data, rinfo) => {
      const client = addr(rinfo.address, rinfo.port);
      this.opts.onDatagram({
        data,
        client,
        destination: undefined,
        reply: (answer) => {
          // REDIRECT's conntrack entry puts the original destination back as the source.
          sock.send(answer, rinfo.port, rinfo.address, (err) => {
            if (err) this.opts.onSendError?.(err, client);
          });
        },
      });
    });
    this.sockets.push(sock);
  }

  /** The bound port (for port 0 in tests). */
  get port(): number {
    if (this.handles[0]) return native.udpListenerPort(this.handles[0]);
    if (this.sockets[0]) return this.sockets[0].address().port;
    return this.opts.port;
  }

  close(): void {
    for (const h of this.handles) native.udpClose(h);
    this.handles.length = 0;
    for (const s of this.sockets) s.close();
    this.sockets.length = 0;
    this.replies.close();
  }
}

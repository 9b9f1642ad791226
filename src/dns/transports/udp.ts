import dgram from 'node:dgram';
import net from 'node:net';
import { normalizeIp } from '../../core/ip';
import { hostPort } from '../../core/types';
import { setMark } from '../../native/index';
import { readHeader } from '../message';
import { aborted, awaitAnswer, dnsError, randomId, withId, type DnsTransport, type Pending, type Server } from './shared';
import type { TcpTransport } from './tcp';

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

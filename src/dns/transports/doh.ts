import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { aborted, dnsError, withId, type DnsTransport, type StreamOpener } from './shared';

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
      req.on('error', (err: Error) => {
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
      req.on('error', (err: Error) => {
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

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildQuery, parseMessage } from '../../src/dns/message';
import { DohTransport } from '../../src/dns/transports/doh';

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;

/** A DNS answer for a query: the query with QR set and one A record 192.0.2.53. */
function answer(q: Buffer): Buffer {
  const out = Buffer.concat([q, Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53])]);
  out.writeUInt16BE(0x8180, 2);
  out.writeUInt16BE(1, 6);
  return out;
}

describe('DNS over HTTPS transport', { skip: haveOpenssl ? false : 'openssl not installed' }, () => {
  let dir = '';
  let cert = '';
  let key = '';
  const seen: Array<{ proto: string; type: string | undefined; method: string | undefined }> = [];
  const servers: Array<http2.Http2SecureServer | https.Server> = [];
  const ports: Record<'h2' | 'h1', number> = { h2: 0, h1: 0 };

  const handler =
    (proto: string) =>
    (
      req: http2.Http2ServerRequest | import('node:http').IncomingMessage,
      res: http2.Http2ServerResponse | import('node:http').ServerResponse,
    ) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({ proto, type: req.headers['content-type'], method: req.method });
        const body = answer(Buffer.concat(chunks));
        res.writeHead(200, { 'content-type': 'application/dns-message', 'content-length': body.length });
        res.end(body);
      });
    };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-doh-'));
    key = path.join(dir, 'key.pem');
    cert = path.join(dir, 'cert.pem');
    const r = spawnSync('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=doh.test',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:doh.test',
    ]);
    assert.equal(r.status, 0, r.stderr?.toString());
    const tlsOpts = { key: fs.readFileSync(key), cert: fs.readFileSync(cert) };
    const h2 = http2.createSecureServer(tlsOpts, handler('h2'));
    const h1 = https.createServer(tlsOpts, handler('h1'));
    for (const [name, s] of [
      ['h2', h2],
      ['h1', h1],
    ] as const) {
      await new Promise<void>((res) => s.listen(0, '127.0.0.1', () => res()));
      ports[name] = (s.address() as net.AddressInfo).port;
      servers.push(s);
    }
  });
  after(() => {
    for (const s of servers) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const open = (host: string, port: number): Promise<net.Socket> =>
    new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => resolve(s));
      s.once('error', reject);
    });

  for (const proto of ['h2', 'h1'] as const) {
    it(`${proto === 'h2' ? 'HTTP/2' : 'HTTP/1.1'}: RFC 8484 POST, answers matched, concurrent queries`, async () => {
      const t = new DohTransport({
        url: new URL(`https://127.0.0.1:${ports[proto]}/dns-query`),
        open,
        ca: [fs.readFileSync(cert, 'utf8')],
        connectTimeoutMs: 2000,
      });
      const before = seen.length;
      const answers = await Promise.all(
        ['a.test', 'b.test', 'c.test'].map((n, i) => t.query(buildQuery(i + 1, n, 1), AbortSignal.timeout(3000))),
      );
      assert.deepEqual(
        answers.map((a) => parseMessage(a).question!.name),
        ['a.test', 'b.test', 'c.test'],
      );
      assert.equal(answers[0]!.readUInt16BE(0), 0, 'ID 0 on the wire (RFC 8484 4.1)');
      const mine = seen.slice(before);
      assert.equal(mine.length, 3);
      for (const s of mine) assert.deepEqual(s, { proto, type: 'application/dns-message', method: 'POST' });
      t.close();
    });
  }

  it('an untrusted certificate fails with TG_ERR_DNS and a hint', async () => {
    const t = new DohTransport({ url: new URL(`https://127.0.0.1:${ports.h2}/dns-query`), open, connectTimeoutMs: 2000 });
    await assert.rejects(t.query(buildQuery(1, 'a.test', 1), AbortSignal.timeout(3000)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'TG_ERR_DNS');
      assert.match(err.message, /--doh-ca/);
      return true;
    });
    t.close();
  });
});

/**
 * End-to-end tests of the HTTP path beyond the basics in gateway.test.ts:
 * Upgrade (WebSocket-style) tunnels, request bodies, large responses,
 * proxy-made errors, and a gateway with no proxy at all.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const O4 = ADDR.origin.v4;

/** An origin that answers an Upgrade request with 101 and then echoes every chunk as "echo:<chunk>". */
const UPGRADE_ORIGIN = `
const net = require('net');
net.createServer((s) => {
  let head = '';
  let upgraded = false;
  s.on('error', () => {});
  s.on('data', (d) => {
    if (upgraded) { s.write('echo:' + d); return; }
    head += d;
    const end = head.indexOf('\\r\\n\\r\\n');
    if (end < 0) return;
    upgraded = /^upgrade: *websocket/im.test(head);
    if (!upgraded) { s.end('HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0\\r\\n\\r\\n'); return; }
    s.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n');
    const rest = head.slice(end + 4);
    if (rest) s.write('echo:' + rest);
  });
}).listen(8080, '::');
`;

function connLines(gw: Gw, from: number): Record<string, string>[] {
  return gw
    .linesSince(from)
    .filter((l) => /\sconn id=/.test(l))
    .map(parseKv);
}

describe('HTTP path e2e', { skip, timeout: 300_000 }, () => {
  let lab: Lab;
  let gw: Gw | undefined;

  before(async () => {
    lab = await Lab.create();
    lab.spawn('in', [process.execPath, '-e', UPGRADE_ORIGIN]);
    gw = await lab.startGateway(['--http-ports', '80,8080', '--log-level', 'debug'], {
      http_proxy: ADDR.proxyUrl,
      https_proxy: ADDR.proxyUrl,
    });
  });

  after(async () => {
    await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  test('Upgrade: 101 from the origin through a CONNECT tunnel, then bytes both ways', async () => {
    const from = await lab.squidMark();
    const req = 'GET /ws HTTP/1.1\\r\\nHost: www.example.test:8080\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n';
    const r = await lab.exec('cl', [
      'sh',
      '-c',
      `(printf '${req}'; sleep 0.5; printf 'ping'; sleep 1) | socat -t 2 - TCP:${O4}:8080,connect-timeout=5`,
    ]);
    assert.match(r.stdout, /^HTTP\/1\.1 101 /, `no 101:\n${r.stdout}\n${r.stderr}\n${gw!.output()}`);
    assert.match(r.stdout, /echo:ping/, 'bytes after the upgrade are relayed both ways');
    await lab.waitSquidLog(/CONNECT www\.example\.test:8080/, 3000, from);
  });

  test('POST bodies (chunked and with length) reach the origin through the proxy', async () => {
    // /post reads the whole body before it answers (lab.ts: nginx buffers it for its proxy_pass). An origin that
    // answered from the head made squid close while body bytes were still on their way, and their reset could reach
    // the gateway before it had read the answer (lost now and then with --relay js, whatever the body's size).
    const body = crypto.randomBytes(15_000).toString('base64');
    const file = path.join(lab.dir, 'post-body.txt');
    fs.writeFileSync(file, body);
    for (const extra of [[], ['-H', 'Transfer-Encoding: chunked']]) {
      const r = await lab.exec('cl', [
        'curl',
        '-sS',
        '--max-time',
        '10',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '--data-binary',
        `@${file}`,
        ...extra,
        '--resolve',
        `www.example.test:80:${O4}`,
        'http://www.example.test/post',
      ]);
      assert.equal(r.stdout, '200', `${r.stdout} ${r.stderr}\n${gw!.output()}`);
    }
    const log = await lab.squidLog();
    assert.ok(log.filter((l) => /POST http:\/\/www\.example\.test\/post/.test(l)).length >= 2, log.join('\n'));
  });

  test('a 1 MiB response arrives intact (sha256), HEAD gets no body', async () => {
    const want = crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(lab.dir, 'www', 'big.bin')))
      .digest('hex');
    const viaGw = await lab.exec('cl', [
      'sh',
      '-c',
      `curl -sS --max-time 10 --resolve www.example.test:80:${O4} http://www.example.test/big.bin | sha256sum`,
    ]);
    assert.equal(viaGw.stdout.trim().split(/\s+/)[0], want);
    const head = await lab.exec('cl', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '-I',
      '--resolve',
      `www.example.test:80:${O4}`,
      'http://www.example.test/big.bin',
    ]);
    assert.match(head.stdout, /^HTTP\/1\.1 200/);
    assert.match(head.stdout, /content-length: 1048576/i);
  });

  test('a name the proxy cannot resolve: 502 with a one-line reason, not the proxy page', async () => {
    const from = gw!.mark();
    const r = await lab.exec('cl', [
      'curl',
      '-sS',
      '--max-time',
      '20',
      '-w',
      '\\n%{http_code}',
      '--resolve',
      `nosuchhost.example.test:80:${O4}`,
      'http://nosuchhost.example.test/',
    ]);
    const [body, code] = [r.stdout.slice(0, r.stdout.lastIndexOf('\n')), r.stdout.slice(r.stdout.lastIndexOf('\n') + 1)];
    assert.equal(code, '502', r.stdout);
    // squid names its failure (ERR_DNS_FAIL with a resolver, ERR_READ_ERROR when its resolver is unreachable, as in the lab).
    assert.match(body, /^transgate: proxy .* could not fetch http:\/\/nosuchhost\.example\.test\/: 50\d .*\(ERR_[A-Z_]+/);
    await gw!.waitFor(/req id=\S+ host=nosuchhost\.example\.test .*error=TG_ERR_UPSTREAM_STATUS/, 3000, from);
  });

  test('garbage after a good request on the same connection: 400 and close, gateway unharmed', async () => {
    const from = gw!.mark();
    const r = await lab.exec('cl', [
      'sh',
      '-c',
      `(printf 'GET /a HTTP/1.1\\r\\nHost: www.example.test\\r\\n\\r\\n'; sleep 0.5; printf '\\001\\002 garbage\\r\\n\\r\\n'; sleep 1) | socat -t 2 - TCP:${O4}:80`,
    ]);
    assert.match(r.stdout, /origin host=www\.example\.test uri=\/a/);
    assert.match(r.stdout, /HTTP\/1\.1 400 Bad Request/);
    const lines = await (async () => {
      for (let i = 0; i < 40; i++) {
        // The earlier test's connection may end (and log) after this one began.
        const c = connLines(gw!, from).filter((f) => f['name'] === 'www.example.test');
        if (c.length) return c;
        await new Promise((res) => setTimeout(res, 50));
      }
      return [];
    })();
    assert.equal(lines[0]?.['result'], 'TG_ERR_BAD_REQUEST', gw!.linesSince(from).join('\n'));
    assert.equal(lines[0]?.['requests'], '1');
  });
});

/** A key server's stand-in: HKP is HTTP on 11371 (the lab's nginx does not listen there). */
const HKP_ORIGIN = `
require('http').createServer((req, res) => {
  res.end('hkp host=' + req.headers.host + ' uri=' + req.url + '\\n');
}).listen(11371, '::');
`;

describe('HKP: port 11371 is HTTP by default', { skip, timeout: 120_000 }, () => {
  let lab: Lab;
  let gw: Gw | undefined;

  before(async () => {
    lab = await Lab.create();
    lab.spawn('in', [process.execPath, '-e', HKP_ORIGIN]);
    // No --http-ports: the default is under test. squid's lab config allows every port (no Safe_ports).
    gw = await lab.startGateway([], { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl });
  });

  after(async () => {
    await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  // `gpg --recv-keys` in a docker build step speaks HTTP to key servers on 11371; with --http-ports 80
  // alone that port was not intercepted at all, so the request never went through the proxy.
  test('gpg --recv-keys style: GET to :11371 goes through squid as GET http://name:11371/...', async () => {
    const from = await lab.squidMark();
    const url = `http://${ADDR.names.api}:11371/pks/lookup?op=get&search=0x0123456789ABCDEF`;
    let r = { stdout: '', stderr: '' };
    for (let i = 0; i < 20; i++) {
      // The origin was started in before(); give it a moment to listen.
      r = await lab
        .exec('cl', ['curl', '-sS', '--max-time', '10', '--resolve', `${ADDR.names.api}:11371:${O4}`, url])
        .catch((e: Error & { stdout?: string; stderr?: string }) => ({ stdout: e.stdout ?? '', stderr: e.stderr ?? String(e) }));
      if (r.stdout) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.match(
      r.stdout,
      /^hkp host=api\.example\.test:11371 uri=\/pks\/lookup\?op=get&search=0x0123456789ABCDEF/,
      `${r.stdout}\n${r.stderr}\n${gw!.output()}`,
    );
    // squid logs the URL without its query (strip_query_terms).
    await lab.waitSquidLog(/GET http:\/\/api\.example\.test:11371\/pks\/lookup\?? /, 3000, from);
  });
});

describe('no proxy configured: direct', { skip, timeout: 120_000 }, () => {
  let lab: Lab;
  let gw: Gw | undefined;

  before(async () => {
    lab = await Lab.create();
    gw = await lab.startGateway(['--tcp-proxy-dports', '22'], {});
  });

  after(async () => {
    await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  test('warns at start and carries HTTP to the original destination', async () => {
    assert.ok(
      gw!.lines.some((l) => /no http_proxy\/https_proxy set/.test(l)),
      gw!.output(),
    );
    const r = await lab.exec('cl', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--resolve',
      `intranet.test:80:${ADDR.intranet.v4}`,
      'http://intranet.test/x',
    ]);
    assert.match(r.stdout, /^intranet host=intranet\.test uri=\/x/, r.stderr);
    const squid = await lab.squidLog();
    assert.ok(!squid.some((l) => /intranet/.test(l)), 'squid must not be involved');
  });

  // With no proxy every request took the direct branch, whose new URL(req.url) threw on `http://[x/` and stopped the gateway.
  test('an unparseable absolute URI gets 400 and the gateway goes on serving', async () => {
    const r = await lab.exec('cl', [
      'sh',
      '-c',
      `(printf 'GET http://[x/ HTTP/1.1\\r\\nHost: intranet.test\\r\\n\\r\\n'; sleep 1) | socat -t 2 - TCP:${ADDR.intranet.v4}:80`,
    ]);
    assert.match(r.stdout, /^HTTP\/1\.1 400 /, r.stdout + r.stderr);
    assert.ok(gw!.running, gw!.output());
    const ok = await lab.exec('cl', [
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--resolve',
      `intranet.test:80:${ADDR.intranet.v4}`,
      'http://intranet.test/after',
    ]);
    assert.match(ok.stdout, /^intranet host=intranet\.test uri=\/after/, ok.stderr);
  });

  test('an unreachable destination: 502 for HTTP, a prompt reset for TCP', async () => {
    const t0 = Date.now();
    const r = await lab.exec('cl', ['curl', '-sS', '--max-time', '15', '-w', '%{http_code}', '-o', '/dev/null', `http://${O4}/`]);
    assert.equal(r.stdout, '502', r.stderr);
    assert.ok(Date.now() - t0 < 8_000, `took ${Date.now() - t0} ms`);
    const py = [
      'import socket, time',
      't = time.time()',
      'try:',
      // The reset can come so fast that it ends the (non-blocking) connect itself.
      `    s = socket.create_connection(('${O4}', 22), timeout=5)`,
      "    s.send(b'x')",
      '    print("recv", s.recv(10), round(time.time() - t, 3))',
      'except Exception as e:',
      '    print("exc", type(e).__name__, round(time.time() - t, 3))',
    ].join('\n');
    const tcp = await lab.exec('cl', ['python3', '-c', py]);
    assert.match(tcp.stdout, /^exc ConnectionResetError (0\.\d+|1\.\d+)$/m, `no prompt reset: ${tcp.stdout}${tcp.stderr}\n${gw!.output()}`);
    await gw!.waitFor(/TG_ERR_DIRECT_UNREACHABLE/, 3000);
  });
});

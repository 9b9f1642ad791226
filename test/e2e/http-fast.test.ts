/**
 * End-to-end tests of plain HTTP carried connection by connection through
 * the lab's real squid and a node origin: request bodies framed by length
 * and by chunks, keep-alive and pipelining (several requests on one client
 * connection), a later request routed elsewhere or an Upgrade (the fast
 * path hands the connection to the Node path), and a large download.
 *
 * Each case runs in both modes and with both relays: `--relay splice` (the
 * default: native/tunnel.c accepts, src/pipeline/http-framer.ts frames each
 * request, responses are spliced) and `--relay js` (src/relay/http-session.ts for
 * everything). TG_E2E_RELAY=js|splice runs one relay only.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, type ExecResult, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const MODES = ['tproxy', 'redirect'] as const;
const RELAYS = process.env['TG_E2E_RELAY'] ? [process.env['TG_E2E_RELAY']] : ['splice', 'js'];
const O4 = ADDR.origin.v4;
const I4 = ADDR.intranet.v4;
const WWW = ADDR.names.www;
/** The node origin's port (nginx has 80 and 443 on the same address). */
const NODE_PORT = 8080;
const UPLOAD_MIB = 5;
const DOWNLOAD_MIB = 64;

/**
 * The origin on www.example.test:8080. nginx cannot tell what body it got:
 * this one answers /sha256 with the digest and length of the body it read
 * (and how it was framed), answers an Upgrade with 101 and then echoes each
 * chunk as "echo:<chunk>", and anything else with its Host and URI.
 */
const NODE_ORIGIN = `
const http = require('http');
const crypto = require('crypto');
const srv = http.createServer((req, res) => {
  if (req.url.startsWith('/sha256')) {
    const h = crypto.createHash('sha256');
    let n = 0;
    req.on('data', (d) => { h.update(d); n += d.length; });
    req.on('end', () => res.end('sha256=' + h.digest('hex') + ' bytes=' + n +
      ' te=' + (req.headers['transfer-encoding'] || '-') + '\\n'));
    return;
  }
  res.end('node host=' + req.headers.host + ' uri=' + req.url + '\\n');
});
srv.on('upgrade', (req, sock, head) => {
  sock.on('error', () => {});
  sock.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n');
  if (head.length) sock.write('echo:' + head);
  sock.on('data', (d) => sock.write('echo:' + d));
});
srv.listen(${NODE_PORT}, '::');
`;

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms}\nstdout: ${JSON.stringify(r.stdout.slice(0, 1500))}\nstderr: ${JSON.stringify(r.stderr.slice(0, 400))}`;
}

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** A client port of our own, so that the test finds its connection's log line among the others. */
let nextPort = 20_000 + crypto.randomInt(20_000);
const sourcePort = () => nextPort++;

/**
 * Sends printf-syntax bytes from cl to host:port in ONE write (printf flushes once), from source port `sport`, keeps
 * the write side open `holdS` (squid half-closes badly: NOTES.md), prints what came back.
 */
function raw(lab: Lab, target: string, printf: string, sport: number, holdS = 1): Promise<ExecResult> {
  return lab.exec(
    'cl',
    ['sh', '-c', `(printf '${printf}'; sleep ${holdS}) | socat -t 1 - TCP:${target},sourceport=${sport},connect-timeout=5`],
    {
      timeoutMs: 15_000,
    },
  );
}

function connLines(gw: Gw, from: number): Array<Record<string, string>> {
  return gw
    .linesSince(from)
    .filter((l) => /\sconn id=/.test(l))
    .map((l) => ({ ...parseKv(l), _line: l }));
}

/** Waits for the log line of the connection from cl's `port` (the line comes when the connection ends). */
async function connOf(gw: Gw, from: number, port: number, timeoutMs = 5000): Promise<Record<string, string>> {
  const client = `${ADDR.client.v4}:${port}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hits = connLines(gw, from).filter((f) => f.client === client);
    if (hits.length > 1) assert.fail(`two conn lines for client ${client}:\n${hits.map((h) => h._line).join('\n')}`);
    if (hits[0]) return hits[0];
    if (Date.now() > deadline) throw new Error(`no conn line for client ${client}; since mark:\n${gw.linesSince(from).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const curl = (lab: Lab, args: string[], timeoutMs = 30_000) =>
  lab.exec('cl', ['curl', '-sS', '--max-time', String(timeoutMs / 1000 - 2), '--resolve', `${WWW}:${NODE_PORT}:${O4}`, ...args], {
    timeoutMs,
  });

describe('plain HTTP: bodies, keep-alive, pipelining, hand-over, Upgrade', { skip, timeout: 300_000 }, () => {
  let lab: Lab;
  let upload: string;
  let uploadSha: string;

  before(async () => {
    lab = await Lab.create({ largeFileMiB: DOWNLOAD_MIB });
    lab.spawn('in', [process.execPath, '-e', NODE_ORIGIN], { logFile: path.join(lab.dir, 'node-origin.log') });
    // The gateway's resolver knows the intranet: host verification asks it before a no_proxy name goes direct.
    lab.setGatewayHosts([`${I4} ${ADDR.names.intranet}`]);
    upload = path.join(lab.dir, 'upload.bin');
    fs.writeFileSync(upload, crypto.randomBytes(UPLOAD_MIB << 20), { mode: 0o644 });
    uploadSha = sha256File(upload);
    for (let i = 0; ; i++) {
      if ((await lab.listening('in')).some((a) => a.endsWith(`:${NODE_PORT}`))) break;
      if (i > 100) throw new Error(`the node origin does not listen:\n${fs.readFileSync(path.join(lab.dir, 'node-origin.log'), 'utf8')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  // The README said --relay js was the fallback when the addon is not built; the gateway then failed at its first
  // listener (TG_ERR_LISTEN, after the sysctls had been set). Interception needs the addon in both modes: the start
  // says so first, with TG_ERR_NATIVE, and changes nothing.
  test('without the addon: the start stops with TG_ERR_NATIVE in both modes and with both relays, and installs nothing', async () => {
    for (const mode of MODES) {
      for (const relay of ['splice', 'js']) {
        const r = await lab.transgate(['--mode', mode, '--relay', relay, '--no-dns'], {
          http_proxy: ADDR.proxyUrl,
          TRANSGATE_ADDON: '/nonexistent/transgate.node',
        });
        assert.equal(r.code, 1, `${mode} ${relay}: ${r.stdout}${r.stderr}`);
        assert.match(r.stdout + r.stderr, /interception needs the native addon[\s\S]*\[TG_ERR_NATIVE\]/, `${mode} ${relay}`);
        const nft = await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'transgate']);
        assert.notEqual(nft.code, 0, `${mode} ${relay}: rules were installed:\n${nft.stdout}`);
      }
    }
  });

  for (const relay of RELAYS) {
    for (const mode of MODES) {
      describe(`--mode ${mode} --relay ${relay}`, () => {
        let gw: Gw;
        before(async () => {
          gw = await lab.startGateway(
            ['--mode', mode, '--relay', relay, '--http-ports', `80,${NODE_PORT}`, '--no-dns', '--log-level', 'debug'],
            { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl, no_proxy: ADDR.names.intranet },
          );
        });
        after(async () => {
          await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
          await lab.transgate(['clear']).catch(() => undefined);
        });

        test(`a ${UPLOAD_MIB} MiB POST with Content-Length, then a GET on the same connection: the origin read every byte`, async () => {
          const from = gw.mark();
          const sq = await lab.squidMark();
          // --next keeps the connection: the GET after the body is found only if the body was framed to the byte.
          const r = await curl(lab, [
            '-w',
            '%{http_code} %{num_connects} %{local_port}\\n',
            '--data-binary',
            `@${upload}`,
            `http://${WWW}:${NODE_PORT}/sha256`,
            '--next',
            '--resolve',
            `${WWW}:${NODE_PORT}:${O4}`,
            '-w',
            '%{http_code} %{num_connects} %{local_port}\\n',
            `http://${WWW}:${NODE_PORT}/after-body`,
          ]);
          const lines = r.stdout.split('\n');
          assert.equal(lines[0], `sha256=${uploadSha} bytes=${UPLOAD_MIB << 20} te=-`, show(r));
          assert.match(lines[1] ?? '', /^200 1 \d+$/, show(r));
          assert.equal(lines[2], `node host=${WWW}:${NODE_PORT} uri=/after-body`, show(r));
          assert.match(lines[3] ?? '', /^200 0 \d+$/, `the GET after the body reused the connection: ${show(r)}`);
          const c = await connOf(gw, from, Number(lines[1]!.split(' ')[2]));
          assert.equal(c.requests, '2', c._line);
          assert.equal(c.result, 'ok', c._line);
          assert.ok(Number(c.up) > UPLOAD_MIB << 20, c._line);
          await lab.waitSquidLog(new RegExp(`POST http://${WWW}:${NODE_PORT}/sha256 200`), 3000, sq);
        });

        // Without `Expect: 100-continue` nothing comes back before the whole body: the fast path held every chunk line
        // until an answer began, as it holds a pipelined head, and the upload stalled until the idle timeout.
        for (const expect of [true, false]) {
          test(`a ${UPLOAD_MIB} MiB chunked upload reaches the origin whole (${expect ? 'Expect: 100-continue' : 'no Expect'})`, async () => {
            const r = await curl(lab, [
              '-H',
              'Transfer-Encoding: chunked',
              ...(expect ? [] : ['-H', 'Expect:']),
              '--data-binary',
              `@${upload}`,
              `http://${WWW}:${NODE_PORT}/sha256`,
            ]);
            // squid may pass the chunks on or de-chunk them; the origin's digest is what counts.
            assert.match(r.stdout, new RegExp(`^sha256=${uploadSha} bytes=${UPLOAD_MIB << 20} te=`), show(r));
          });
        }

        test('keep-alive: three URLs in one curl share one connection, logged as one conn with requests=3', async () => {
          const from = gw.mark();
          const urls = ['/k1', '/k2', '/k3'].map((p) => `http://${WWW}/${p.slice(1)}`);
          const r = await lab.exec('cl', [
            'curl',
            '-sS',
            '--max-time',
            '10',
            '--resolve',
            `${WWW}:80:${O4}`,
            '-w',
            '%{num_connects} %{local_port}\\n',
            ...urls,
          ]);
          const lines = r.stdout.split('\n');
          assert.deepEqual(
            lines.filter((l) => l.startsWith('origin')),
            ['k1', 'k2', 'k3'].map((k) => `origin host=${WWW} uri=/${k} proto=http`),
            show(r),
          );
          const conns = lines.filter((l) => /^\d+ \d+$/.test(l));
          assert.deepEqual(
            conns.map((l) => l.split(' ')[0]),
            ['1', '0', '0'],
            show(r),
          );
          const ports = new Set(conns.map((l) => l.split(' ')[1]));
          assert.equal(ports.size, 1, show(r));
          const c = await connOf(gw, from, Number([...ports][0]));
          assert.equal(c.requests, '3', c._line);
          assert.equal(c.route, 'proxy', c._line);
          assert.equal(c.result, 'ok', c._line);
        });

        test('pipelining: three GETs in one write get three responses, in order', async () => {
          const from = gw.mark();
          const sport = sourcePort();
          const get = (p: string, last = false) =>
            `GET /${p} HTTP/1.1\\r\\nHost: ${WWW}\\r\\n${last ? 'Connection: close\\r\\n' : ''}\\r\\n`;
          const r = await raw(lab, `${O4}:80`, get('p1') + get('p2') + get('p3', true), sport);
          assert.equal((r.stdout.match(/^HTTP\/1\.1 200 /gm) ?? []).length, 3, show(r));
          const bodies = [...r.stdout.matchAll(/origin host=\S+ uri=(\S+)/g)].map((m) => m[1]);
          assert.deepEqual(bodies, ['/p1', '/p2', '/p3'], show(r));
          const c = await connOf(gw, from, sport);
          assert.equal(c.requests, '3', c._line);
        });

        // The fast path carries a connection as long as each request goes the way of the first; a request routed
        // elsewhere waits until the responses before it are out, then the Node path takes the connection.
        const handOver = async (cases: ReadonlyArray<{ first: string; second: string; pause: boolean }>) => {
          const sq = await lab.squidMark();
          const from = gw.mark();
          const hostOf = (p: string) => (p.startsWith('px') ? WWW : ADDR.names.intranet);
          const get = (p: string, last = false) =>
            `GET /${p} HTTP/1.1\\r\\nHost: ${hostOf(p)}\\r\\n${last ? 'Connection: close\\r\\n' : ''}\\r\\n`;
          const want = (p: string) =>
            p.startsWith('px') ? `origin host=${WWW} uri=/${p} proto=http` : `intranet host=${hostOf(p)} uri=/${p}`;
          const failures: string[] = [];
          for (const { first, second, pause } of cases) {
            const sport = sourcePort();
            const mark = gw.mark();
            const r = await raw(lab, `${I4}:80`, get(first) + (pause ? "'; sleep 0.3; printf '" : '') + get(second, true), sport);
            const bodies = [...r.stdout.matchAll(/^(?:origin|intranet) host=.*$/gm)].map((m) => m[0]);
            if (JSON.stringify(bodies) !== JSON.stringify([want(first), want(second)])) {
              failures.push(
                `${first}+${second}${pause ? ' (pause)' : ''}: got ${JSON.stringify(bodies)}; squid: ${(await lab.squidLogSince(sq)).join(' | ')}; client: ${JSON.stringify(r.stdout.slice(-300))}`,
              );
              continue;
            }
            const c = await connOf(gw, mark, sport);
            assert.equal(c.requests, '2', c._line);
            assert.equal(c.result, 'ok', c._line);
            // Each request's own line names its own number and upstream (the Node path once logged the pipelined
            // one before it with the later request's number and upstream).
            const reqs = gw
              .linesSince(mark)
              .filter((l) => / req id=/.test(l) && l.includes(`client=${ADDR.client.v4}:${sport} `))
              .map(parseKv);
            for (const q of reqs) {
              const [n, viaWant] = q.url!.endsWith(`/${first}`) ? ['1', first] : ['2', second];
              assert.equal(q.id, `${c.id}.${n}`, JSON.stringify(q));
              assert.equal(q.via, viaWant.startsWith('px') ? `${ADDR.proxy.v4}:${ADDR.proxy.port}` : `${I4}:80`, JSON.stringify(q));
            }
          }
          assert.deepEqual(failures, [], `${failures.join('\n')}\n${gw.linesSince(from).join('\n')}`);
          const lines = await lab.squidLogSince(sq);
          for (const { first, second } of cases) {
            const px = [first, second].find((p) => p.startsWith('px'))!;
            assert.ok(
              lines.some((l) => l.includes(`GET http://${WWW}/${px} 200 `)),
              `${px}:\n${lines.join('\n')}`,
            );
          }
          assert.ok(!lines.some((l) => /intranet|\/dx\d/.test(l)), `a verified no_proxy request went to squid:\n${lines.join('\n')}`);
        };

        test('hand-over: a proxied request then a no_proxy (verified, direct) one on one connection, and the reverse', () =>
          handOver([
            { first: 'px1', second: 'dx1', pause: true },
            { first: 'dx2', second: 'px2', pause: true },
          ]));

        // Both requests in one write, the second going another way: the fast path handed the connection to the Node
        // path before the first response had even begun, and it was lost (squid logged the first request with status
        // 0). The relay now reads the next request only once the answer to the last one has begun.
        // Direct first: nginx answered before the relay had started, that answer was moved at the start with nothing
        // looking at the request behind it, and the hand-over waited for the client's FIN (native/splice.c settle()).
        test('hand-over with both requests in one write (pipelined across routes): both answered, in order', () =>
          handOver([
            { first: 'px3', second: 'dx3', pause: false },
            { first: 'dx4', second: 'px4', pause: false },
            // Three times: it was lost one time in three.
            { first: 'dx5', second: 'px5', pause: false },
            { first: 'dx6', second: 'px6', pause: false },
          ]));

        test('Upgrade after a plain GET on the same connection: 101 from the origin, then bytes both ways', async () => {
          const from = gw.mark();
          const sq = await lab.squidMark();
          const sport = sourcePort();
          const host = `${WWW}:${NODE_PORT}`;
          const req =
            `GET /plain HTTP/1.1\\r\\nHost: ${host}\\r\\n\\r\\n` +
            `'; sleep 0.3; printf 'GET /ws HTTP/1.1\\r\\nHost: ${host}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n` +
            `'; sleep 0.5; printf 'ping`;
          const r = await raw(lab, `${O4}:${NODE_PORT}`, req, sport, 1);
          assert.match(
            r.stdout,
            new RegExp(
              `^HTTP/1\\.1 200 [\\s\\S]*node host=${host} uri=/plain\\n` +
                'HTTP/1\\.1 101 Switching Protocols\\r\\n[\\s\\S]*\\r\\n\\r\\necho:ping$',
            ),
            `${show(r)}\n${gw.linesSince(from).join('\n')}`,
          );
          // The GET goes as a request, the Upgrade through a tunnel (squid does not pass Upgrade on).
          await lab.waitSquidLog(new RegExp(`GET http://${host}/plain `), 3000, sq);
          await lab.waitSquidLog(new RegExp(`CONNECT ${host} `), 3000, sq);
          const c = await connOf(gw, from, sport);
          assert.equal(c.requests, '2', c._line);
        });

        test(`a ${DOWNLOAD_MIB} MiB download arrives intact (sha256)`, async () => {
          const r = await lab.exec(
            'cl',
            ['sh', '-c', `curl -sS --max-time 40 --resolve ${WWW}:80:${O4} http://${WWW}/files/large.bin | sha256sum`],
            { timeoutMs: 45_000 },
          );
          assert.equal(r.stdout.trim().split(/\s+/)[0], sha256File(lab.largeFile), show(r));
        });
      });
    }
  }
});

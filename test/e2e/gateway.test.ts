/**
 * End-to-end tests of the gateway (bin/transgate.js) in the namespace lab:
 * clients in `cl` talk to origins in `in`; the gateway in `gw` intercepts and
 * carries the connections through squid in `up`. Every group runs for
 * --mode tproxy and --mode redirect.
 *
 * The CLI contract under test:
 *   transgate [--mode tproxy|redirect] [--http-ports 80] [--tls-ports 443]
 *             [--tcp-proxy-dports 22 | -tcp-proxy-dports 22,5000] [--bypass CIDR,...] [--log-level debug|info]
 *   env http_proxy / https_proxy / no_proxy
 *   prints a line with "ready"; one line per connection:
 *   conn id=N kind=http|tls|tcp client=A:P dst=A:P name=NAME|- route=proxy|direct|reject via=H:P up=B down=B ms=N result=ok|TG_ERR_...
 *   SIGTERM/SIGINT: removes its rules, exit 0. `transgate rules` prints, `transgate clear` removes.
 *   nft table `inet transgate`; tproxy: ip rule fwmark → table with `local default dev lo`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADDR, type ExecResult, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const MODES = ['tproxy', 'redirect'] as const;
type Mode = (typeof MODES)[number];

const O4 = ADDR.origin.v4; // 203.0.113.2
const O6 = ADDR.origin.v6; // 2001:db8:3::2
const PROXY_VIA = `${ADDR.proxy.v4}:${ADDR.proxy.port}`;

function proxyEnv(extra: Record<string, string> = {}, url: string = ADDR.proxyUrl): Record<string, string> {
  return { http_proxy: url, https_proxy: url, ...extra };
}

function tail(gw: Gw | undefined, n = 40): string {
  return gw ? gw.lines.slice(-n).join('\n') : '(no gateway)';
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms} timedOut=${r.timedOut}\nstdout: ${JSON.stringify(r.stdout.slice(0, 600))}\nstderr: ${JSON.stringify(r.stderr.slice(0, 600))}`;
}

/** Whether a gateway log line is a per-connection line. */
function isConnLine(line: string): boolean {
  return /(^|\s)conn\s+id=/.test(line);
}

/** dst=... names this address and port, whatever the v4/v6 spelling ("203.0.113.2:80", "[::ffff:203.0.113.2]:80", "[2001:db8:3::2]:22"). */
function dstIs(dst: string | undefined, addr: string, port: number): boolean {
  if (!dst) return false;
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(dst);
  if (!m) return false;
  // Both groups are not optional: a match has them.
  return m[1]!.replace(/^::ffff:/i, '') === addr && Number(m[2]) === port;
}

interface Ctx {
  lab: Lab;
  mode: Mode;
}

/** Waits for the gateway's connection line that matches `pred`, among lines after `from`. */
async function waitConn(
  gw: Gw,
  from: number,
  pred: (f: Record<string, string>) => boolean,
  what: string,
  timeoutMs = 5000,
): Promise<Record<string, string> & { _line: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const line of gw.linesSince(from)) {
      if (!isConnLine(line)) continue;
      const f = parseKv(line);
      if (pred(f)) return { ...f, _line: line };
    }
    if (Date.now() > deadline) {
      throw new Error(`no conn line for ${what} within ${timeoutMs} ms; gateway output since mark:\n${gw.linesSince(from).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function curl(lab: Lab, args: string[], timeoutMs = 15_000): Promise<ExecResult> {
  return lab.exec('cl', ['curl', '-sS', '--max-time', '10', ...args], { timeoutMs });
}

/** Sends a line through a raw TCP connection from cl, keeping the write side open for `holdS` seconds. */
function tcpSend(lab: Lab, target: string, payload = 'hello\\n', holdS = 1, connectTimeoutS = 5): Promise<ExecResult> {
  return lab.exec('cl', ['sh', '-c', `(printf '${payload}'; sleep ${holdS}) | socat -t 2 - ${target},connect-timeout=${connectTimeoutS}`], {
    timeoutMs: 15_000,
  });
}

async function squidNoEntry(lab: Lab, from: number, re: RegExp, settleMs = 500): Promise<void> {
  const lines = await lab.squidLogSince(from, settleMs);
  const hits = lines.filter((l) => re.test(l));
  assert.deepEqual(hits, [], `squid must not see ${re}`);
}

async function snapshotRouting(lab: Lab): Promise<{ rules4: string; rules6: string; tables: string }> {
  const r4 = await lab.exec('gw', ['ip', '-4', 'rule', 'show']);
  const r6 = await lab.exec('gw', ['ip', '-6', 'rule', 'show']);
  const t = await lab.exec('gw', ['nft', 'list', 'tables']);
  return { rules4: r4.stdout, rules6: r6.stdout, tables: t.stdout };
}

function lineDiff(after: string, before: string): string[] {
  const b = new Set(before.split('\n'));
  return after.split('\n').filter((l) => l.trim() && !b.has(l));
}

/** TCP ports the gateway process listens on (ss -ltnp in gw). */
async function listenerPorts(lab: Lab, gw: Gw): Promise<number[]> {
  const r = await lab.exec('gw', ['ss', '-Hltnp']);
  const ports = new Set<number>();
  for (const line of r.stdout.split('\n')) {
    if (!line.includes(`pid=${gw.pid},`)) continue;
    const local = line.trim().split(/\s+/)[3] ?? '';
    const m = /:(\d+)$/.exec(local);
    if (m) ports.add(Number(m[1]));
  }
  return [...ports].sort((a, b) => a - b);
}

/** The gateway started last: its log is attached to any failure. */
let lastGw: Gw | undefined;

async function startGw(lab: Lab, args: string[], env: Record<string, string>): Promise<Gw> {
  lastGw = undefined;
  const gw = await lab.startGateway(args, env);
  lastGw = gw;
  return gw;
}

/** test() that appends the last gateway's log lines to a failure. */
function gtest(name: string, fn: () => Promise<void>): void {
  test(name, async () => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof Error && lastGw) {
        err.message += `\n--- gateway (pid ${lastGw.pid}) last lines ---\n${tail(lastGw, 25)}`;
      }
      throw err;
    }
  });
}

async function clearQuietly(lab: Lab): Promise<void> {
  await lab.transgate(['clear']).catch(() => undefined);
}

async function stopQuietly(gw: Gw | undefined): Promise<void> {
  if (!gw) return;
  await gw.stop('SIGTERM', 5000).catch(() => gw.kill9());
}

describe('gateway e2e', { skip, timeout: 600_000 }, () => {
  const ctx = {} as Ctx;
  let baseline: { rules4: string; rules6: string; tables: string };

  before(async () => {
    ctx.lab = await Lab.create();
    baseline = await snapshotRouting(ctx.lab);
    const help = await ctx.lab.transgate(['--help']);
    assert.equal(help.code, 0, `bin/transgate.js --help does not work:\n${show(help)}`);
  });

  after(async () => {
    if (ctx.lab) await clearQuietly(ctx.lab);
    await ctx.lab?.destroy();
  });

  for (const mode of MODES) {
    describe(`--mode ${mode}`, () => {
      // ------------------------------------------------------------------
      describe('main: proxy for http/tls/tcp 22,5000, no_proxy by address', () => {
        let gw: Gw | undefined;
        before(async () => {
          gw = await startGw(
            ctx.lab,
            ['--mode', mode, '-tcp-proxy-dports', '22,5000', '--log-level', 'debug'],
            proxyEnv({ no_proxy: `${ADDR.intranet.v4},${ADDR.intranet.v6}` }),
          );
        });
        after(async () => {
          await stopQuietly(gw);
          await clearQuietly(ctx.lab);
          await ctx.lab.restartSquid({}).catch(() => undefined);
        });

        gtest('ready line, nft table and (tproxy) ip rules are installed', async () => {
          const lab = ctx.lab;
          assert.ok(gw!.running);
          const t = await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'transgate']);
          assert.equal(t.code, 0, `nft table missing:\n${show(t)}\n${tail(gw)}`);
          assert.match(t.stdout, mode === 'tproxy' ? /tproxy/ : /redirect/);
          const now = await snapshotRouting(lab);
          const added = [...lineDiff(now.rules4, baseline.rules4), ...lineDiff(now.rules6, baseline.rules6)];
          if (mode === 'tproxy') {
            assert.equal(added.length, 2, `expected one fwmark rule per family, got:\n${added.join('\n')}`);
            for (const r of added) assert.match(r, /fwmark/);
            const table = /lookup (\S+)/.exec(added[0]!)?.[1];
            assert.ok(table, added[0]);
            const routes4 = await lab.exec('gw', ['ip', '-4', 'route', 'show', 'table', table]);
            const routes6 = await lab.exec('gw', ['ip', '-6', 'route', 'show', 'table', table]);
            assert.match(routes4.stdout, /local (default|0\.0\.0\.0\/0) dev lo/);
            assert.match(routes6.stdout, /local (default|::\/0) dev lo/);
          }
        });

        gtest('(1) HTTP v4: one curl, two hosts, absolute URIs at squid', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await curl(lab, [
            '--resolve',
            `www.example.test:80:${O4}`,
            '--resolve',
            `api.example.test:80:${O4}`,
            'http://www.example.test/a',
            'http://api.example.test/b',
          ]);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, 'origin host=www.example.test uri=/a proto=http\norigin host=api.example.test uri=/b proto=http\n');
          assert.ok(r.ms < 3000, `took ${r.ms} ms`);
          await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/a 200 /, 3000, from);
          await lab.waitSquidLog(/ GET http:\/\/api\.example\.test\/b 200 /, 3000, from);
          const c = await waitConn(gw!, mark, (f) => f.kind === 'http' && dstIs(f.dst, O4, 80), 'http to 203.0.113.2:80');
          assert.equal(c.route, 'proxy', c._line);
          assert.equal(c.result, 'ok', c._line);
          assert.equal(c.via, PROXY_VIA, c._line);
          assert.ok(c.client?.includes(ADDR.client.v4), c._line);
          assert.ok(Number(c.down) > 0 && Number(c.up) > 0, c._line);
        });

        gtest('(1) HTTP v4: two hosts on ONE keep-alive client connection, each to its own host', async () => {
          // curl never reuses a connection for another host name, so this client is raw.
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const req = (host: string, uri: string, close = false) =>
            `GET ${uri} HTTP/1.1\\r\\nHost: ${host}\\r\\nUser-Agent: e2e\\r\\n${close ? 'Connection: close\\r\\n' : ''}\\r\\n`;
          const r = await lab.exec(
            'cl',
            [
              'sh',
              '-c',
              `(printf '${req('www.example.test', '/ka1')}'; sleep 0.5; printf '${req('api.example.test', '/ka2', true)}'; sleep 1) | socat -t 2 - TCP:${O4}:80`,
            ],
            { timeoutMs: 15_000 },
          );
          const bodies = r.stdout.match(/origin host=\S+ uri=\S+/g) ?? [];
          assert.deepEqual(bodies, ['origin host=www.example.test uri=/ka1', 'origin host=api.example.test uri=/ka2'], show(r));
          await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/ka1 200 /, 3000, from);
          await lab.waitSquidLog(/ GET http:\/\/api\.example\.test\/ka2 200 /, 3000, from);
          // Both requests carry the same connection id (req id=CONN.REQ): one client connection, routed per request.
          // (Connection lines of the previous test may still arrive after the mark, so count requests, not lines.)
          const ka1 = await gw!.waitFor(/req id=\d+\.1 .*url=http:\/\/www\.example\.test\/ka1 /, 3000, mark);
          const ka2 = await gw!.waitFor(/req id=\d+\.2 .*url=http:\/\/api\.example\.test\/ka2 /, 3000, mark);
          const connOf = (line: string): string | undefined => /req id=(\d+)\./.exec(line)?.[1];
          assert.equal(connOf(ka2), connOf(ka1), `${ka1}\n${ka2}`);
          const c = await waitConn(gw!, mark, (f) => f.kind === 'http' && f.id === connOf(ka1), 'the keep-alive connection');
          assert.equal(c.requests, '2', c._line);
        });

        gtest('(1b) HTTP v4 with an IP-literal Host goes to squid as http://203.0.113.2/...', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const r = await curl(lab, [`http://${O4}/ip-literal`]);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, `origin host=${O4} uri=/ip-literal proto=http\n`);
          await lab.waitSquidLog(/ GET http:\/\/203\.0\.113\.2\/ip-literal 200 /, 3000, from);
        });

        gtest('(2) HTTPS v4 by SNI: CONNECT www.example.test:443', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await curl(lab, ['--cacert', lab.caFile, '--resolve', `www.example.test:443:${O4}`, 'https://www.example.test/tls']);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, 'origin host=www.example.test uri=/tls proto=https\n');
          await lab.waitSquidLog(/ CONNECT www\.example\.test:443 200 /, 3000, from);
          const c = await waitConn(gw!, mark, (f) => f.kind === 'tls' && dstIs(f.dst, O4, 443), 'tls to 203.0.113.2:443');
          assert.equal(c.name, 'www.example.test', c._line);
          assert.equal(c.route, 'proxy', c._line);
          assert.equal(c.result, 'ok', c._line);
        });

        gtest('(3) TCP v4 on 22 and 5000 (-tcp-proxy-dports 22,5000): echo through CONNECT IP:port', async () => {
          const lab = ctx.lab;
          for (const port of [22, 5000]) {
            const from = await lab.squidMark();
            const mark = gw!.mark();
            const r = await tcpSend(lab, `TCP:${O4}:${port}`, `hello ${port}\\n`);
            assert.equal(r.stdout, `hello ${port}\n`, `port ${port}: ${show(r)}\n${tail(gw)}`);
            await lab.waitSquidLog(new RegExp(` CONNECT 203\\.0\\.113\\.2:${port} 200 `), 3000, from);
            const c = await waitConn(gw!, mark, (f) => f.kind === 'tcp' && dstIs(f.dst, O4, port), `tcp to ${O4}:${port}`);
            assert.equal(c.result, 'ok', c._line);
            assert.equal(c.name ?? '-', '-', c._line);
          }
        });

        gtest('(4) IPv6 HTTP: by name and by literal', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await curl(lab, ['--resolve', `v6.example.test:80:[${O6}]`, 'http://v6.example.test/v6']);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, 'origin host=v6.example.test uri=/v6 proto=http\n');
          await lab.waitSquidLog(/ GET http:\/\/v6\.example\.test\/v6 200 /, 3000, from);
          const c = await waitConn(gw!, mark, (f) => f.kind === 'http' && dstIs(f.dst, O6, 80), 'http to [2001:db8:3::2]:80');
          assert.ok(c.client?.includes(ADDR.client.v6), c._line);
          assert.equal(c.result, 'ok', c._line);

          const lit = await curl(lab, [`http://[${O6}]/v6lit`]);
          assert.equal(lit.code, 0, `${show(lit)}\n${tail(gw)}`);
          assert.equal(lit.stdout, `origin host=[${O6}] uri=/v6lit proto=http\n`);
          await lab.waitSquidLog(/ GET http:\/\/\[2001:db8:3::2\]\/v6lit 200 /, 3000, from);
        });

        gtest('(4) IPv6 HTTPS by SNI', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const r = await curl(lab, ['--cacert', lab.caFile, '--resolve', `v6.example.test:443:[${O6}]`, 'https://v6.example.test/tls6']);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, 'origin host=v6.example.test uri=/tls6 proto=https\n');
          await lab.waitSquidLog(/ CONNECT v6\.example\.test:443 200 /, 3000, from);
        });

        gtest('(4) IPv6 TCP on 22 and 5000: CONNECT [2001:db8:3::2]:port', async () => {
          const lab = ctx.lab;
          for (const port of [22, 5000]) {
            const from = await lab.squidMark();
            const r = await tcpSend(lab, `TCP6:[${O6}]:${port}`, `hello6 ${port}\\n`);
            assert.equal(r.stdout, `hello6 ${port}\n`, `port ${port}: ${show(r)}\n${tail(gw)}`);
            await lab.waitSquidLog(new RegExp(` CONNECT \\[2001:db8:3::2\\]:${port} 200 `), 3000, from);
          }
        });

        gtest('(5) no_proxy by address (v4 and v6): direct to the intranet, squid never sees it', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r4 = await curl(lab, [`http://${ADDR.intranet.v4}/np4`]);
          assert.equal(r4.code, 0, `${show(r4)}\n${tail(gw)}`);
          assert.equal(r4.stdout, `intranet host=${ADDR.intranet.v4} uri=/np4\n`);
          const c = await waitConn(gw!, mark, (f) => dstIs(f.dst, ADDR.intranet.v4, 80), 'http to the intranet');
          assert.equal(c.route, 'direct', c._line);
          assert.equal(c.result, 'ok', c._line);
          const r6 = await curl(lab, [`http://[${ADDR.intranet.v6}]/np6`]);
          assert.equal(r6.code, 0, `${show(r6)}\n${tail(gw)}`);
          assert.equal(r6.stdout, `intranet host=[${ADDR.intranet.v6}] uri=/np6\n`);
          await squidNoEntry(lab, from, /\/np[46]/);
        });

        gtest('(9) garbage on 80/443/22 does not hurt the gateway; HTTP garbage gets 400 or a close', async () => {
          const lab = ctx.lab;
          for (const port of [80, 443, 22]) {
            const r = await lab.exec('cl', ['sh', '-c', `head -c 3000 /dev/urandom | socat -t 3 - TCP:${O4}:${port},connect-timeout=5`], {
              timeoutMs: 15_000,
            });
            assert.equal(r.timedOut, false, `port ${port} hung: ${show(r)}`);
            if (port === 80 && r.stdout.length > 0)
              assert.match(r.stdout, /^HTTP\/1\.[01] 4\d\d/, `port 80 answered: ${JSON.stringify(r.stdout.slice(0, 200))}`);
            assert.ok(gw!.running, `gateway died after garbage on ${port}:\n${tail(gw)}`);
          }
          const ok = await curl(lab, ['--resolve', `www.example.test:80:${O4}`, 'http://www.example.test/after-garbage']);
          assert.equal(ok.code, 0, `${show(ok)}\n${tail(gw)}`);
          assert.match(ok.stdout, /uri=\/after-garbage/);
          const tls = await curl(lab, [
            '--cacert',
            lab.caFile,
            '--resolve',
            `www.example.test:443:${O4}`,
            'https://www.example.test/after-garbage',
          ]);
          assert.equal(tls.code, 0, `${show(tls)}\n${tail(gw)}`);
          const echo = await tcpSend(lab, `TCP:${O4}:22`, 'still here\\n');
          assert.equal(echo.stdout, 'still here\n', show(echo));
        });

        gtest("(10) direct connections to the gateway's own listener ports are not relayed", async () => {
          const lab = ctx.lab;
          const ports = await listenerPorts(lab, gw!);
          assert.ok(ports.length >= 3, `expected at least 3 listener ports, got ${ports.join(',')}`);
          const from = await lab.squidMark();
          const targets = ports.flatMap((port) => [`TCP:${ADDR.gwLan.v4}:${port}`, `TCP6:[${ADDR.gwLan.v6}]:${port}`]);
          const results = await Promise.all(
            // In redirect mode a direct SYN to a listener port is dropped (no REDIRECT sent it): the connect times out.
            targets.map((target) => tcpSend(lab, target, 'GET /loop HTTP/1.1\\r\\nHost: www.example.test\\r\\n\\r\\nhello\\n', 1, 2)),
          );
          targets.forEach((target, i) => {
            const r = results[i]!; // Promise.all of targets.map: one result per target
            assert.equal(r.timedOut, false, `${target} hung: ${show(r)}`);
            assert.ok(r.ms < 8000, `${target} took ${r.ms} ms`);
            assert.doesNotMatch(r.stdout, /origin host=|HTTP\/1\.[01] 200|hello/, `${target} was relayed: ${show(r)}`);
          });
          await squidNoEntry(lab, from, /./);
          assert.ok(gw!.running, tail(gw));
        });

        gtest('(13) `transgate rules` prints the ruleset and changes nothing', async () => {
          const lab = ctx.lab;
          const before1 = await lab.exec('gw', ['nft', 'list', 'ruleset']);
          const beforeRoutes = await snapshotRouting(lab);
          const r = await lab.transgate(['rules', '--mode', mode, '-tcp-proxy-dports', '22,5000']);
          assert.equal(r.code, 0, show(r));
          assert.match(r.stdout, mode === 'tproxy' ? /tproxy/ : /redirect/);
          assert.match(r.stdout, /transgate/);
          if (mode === 'tproxy') assert.match(r.stdout, /fwmark|ip (-6 )?rule/);
          const after1 = await lab.exec('gw', ['nft', 'list', 'ruleset']);
          assert.equal(after1.stdout, before1.stdout);
          assert.deepEqual(await snapshotRouting(lab), beforeRoutes);
        });

        gtest('(7) upstream down: HTTP 502 fast, TLS and TCP closed within seconds; recovers', async () => {
          const lab = ctx.lab;
          await lab.stopSquid();
          try {
            const mark = gw!.mark();
            const h = await curl(lab, ['--resolve', `www.example.test:80:${O4}`, '-w', '\n%{http_code}', 'http://www.example.test/down']);
            assert.match(h.stdout, /\n502$/, `${show(h)}\n${tail(gw)}`);
            assert.ok(h.ms < 5000, `HTTP 502 took ${h.ms} ms`);
            const c = await waitConn(gw!, mark, (f) => f.kind === 'http' && dstIs(f.dst, O4, 80), 'http while squid is down');
            assert.match(c.result ?? '', /^TG_ERR_/, c._line);

            const t = await curl(lab, ['--cacert', lab.caFile, '--resolve', `www.example.test:443:${O4}`, 'https://www.example.test/down']);
            assert.notEqual(t.code, 0, show(t));
            assert.notEqual(t.code, 28, `TLS hung until curl's timeout: ${show(t)}`);
            assert.ok(t.ms < 8000, `TLS failure took ${t.ms} ms`);

            const tcp = await tcpSend(lab, `TCP:${O4}:22`, 'nobody\\n', 1);
            assert.equal(tcp.stdout, '', show(tcp));
            assert.ok(tcp.ms < 8000, `TCP close took ${tcp.ms} ms`);

            const t6 = await curl(lab, [
              '--cacert',
              lab.caFile,
              '--resolve',
              `v6.example.test:443:[${O6}]`,
              'https://v6.example.test/down',
            ]);
            assert.notEqual(t6.code, 0, show(t6));
            assert.ok(t6.ms < 8000, `TLS v6 failure took ${t6.ms} ms`);
          } finally {
            await lab.startSquid({});
          }
          const again = await curl(lab, ['--resolve', `www.example.test:80:${O4}`, 'http://www.example.test/recovered']);
          assert.equal(again.code, 0, `${show(again)}\n${tail(gw)}`);
          assert.match(again.stdout, /uri=\/recovered/);
        });

        gtest('(8) proxy allows CONNECT only to 443: TCP to 22 fails, log names 403 and the port', async () => {
          const lab = ctx.lab;
          await lab.restartSquid({ connectOnly443: true });
          try {
            const mark = gw!.mark();
            const r = await tcpSend(lab, `TCP:${O4}:22`, 'hello\\n');
            assert.equal(r.stdout, '', `TCP to 22 must fail: ${show(r)}`);
            assert.ok(r.ms < 8000, `took ${r.ms} ms`);
            const c = await waitConn(gw!, mark, (f) => f.kind === 'tcp' && dstIs(f.dst, O4, 22), 'tcp to 22 refused by squid');
            assert.notEqual(c.result, 'ok', c._line);
            assert.match(c._line, /403/, c._line);
            assert.match(c._line, /:22\b/, c._line);
            await lab.waitSquidLog(/ CONNECT 203\.0\.113\.2:22 403 /);
            const tls = await curl(lab, [
              '--cacert',
              lab.caFile,
              '--resolve',
              `www.example.test:443:${O4}`,
              'https://www.example.test/443-ok',
            ]);
            assert.equal(tls.code, 0, `${show(tls)}\n${tail(gw)}`);
          } finally {
            await lab.restartSquid({});
          }
        });
      });

      // ------------------------------------------------------------------
      describe('no_proxy by domain, explicit port flags, --bypass', () => {
        let gw: Gw | undefined;
        before(async () => {
          // A no_proxy name goes direct only when it resolves to the destination: the gateway's resolver knows the intranet.
          ctx.lab.setGatewayHosts([`${ADDR.intranet.v4} intranet.test www.intranet.test`]);
          gw = await startGw(
            ctx.lab,
            [
              '--mode',
              mode,
              '--http-ports',
              '80',
              '--tls-ports',
              '443',
              '--tcp-proxy-dports',
              '22',
              '--bypass',
              '2001:db8:3::/64',
              '--log-level',
              'info',
            ],
            proxyEnv({ no_proxy: ADDR.names.intranet }),
          );
        });
        after(async () => {
          await stopQuietly(gw);
          await clearQuietly(ctx.lab);
        });

        gtest('(5) no_proxy=intranet.test: by Host name, direct; squid never sees it', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await curl(lab, ['--resolve', `intranet.test:80:${ADDR.intranet.v4}`, 'http://intranet.test/dom']);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, 'intranet host=intranet.test uri=/dom\n');
          const c = await waitConn(gw!, mark, (f) => f.kind === 'http' && dstIs(f.dst, ADDR.intranet.v4, 80), 'http to intranet.test');
          assert.equal(c.route, 'direct', c._line);
          assert.equal(c.name, 'intranet.test', c._line);
          const sub = await curl(lab, ['--resolve', `www.intranet.test:80:${ADDR.intranet.v4}`, 'http://www.intranet.test/sub']);
          assert.equal(sub.code, 0, `${show(sub)}\n${tail(gw)}`);
          assert.equal(sub.stdout, 'intranet host=www.intranet.test uri=/sub\n');
          await squidNoEntry(lab, from, /intranet\.test/);
        });

        gtest('(5) no_proxy name by SNI: direct, though the proxy connection was opened while the ClientHello travelled', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          // Nothing listens on the intranet's 443: the direct attempt is refused, which is the point: it was direct.
          const r = await curl(lab, ['--max-time', '5', '--resolve', `intranet.test:443:${ADDR.intranet.v4}`, 'https://intranet.test/']);
          assert.notEqual(r.code, 0, show(r));
          const c = await waitConn(gw!, mark, (f) => f.kind === 'tls' && dstIs(f.dst, ADDR.intranet.v4, 443), 'tls to intranet.test');
          assert.equal(c.route, 'direct', c._line);
          assert.equal(c.name, 'intranet.test', c._line);
          assert.equal(c.result, 'TG_ERR_DIRECT_UNREACHABLE', c._line);
          await squidNoEntry(lab, from, /intranet\.test|198\.51\.100\.3:443/);
        });

        gtest('(5) control: the same address by IP is not in no_proxy and goes through squid', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const r = await curl(lab, [`http://${ADDR.intranet.v4}/ctl`]);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          assert.equal(r.stdout, `intranet host=${ADDR.intranet.v4} uri=/ctl\n`);
          await lab.waitSquidLog(/ GET http:\/\/198\.51\.100\.3\/ctl 200 /, 3000, from);
        });

        gtest('--tcp-proxy-dports 22 only: port 5000 is not intercepted', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await tcpSend(lab, `TCP:${O4}:5000`, 'x\\n');
          assert.equal(r.stdout, '', show(r));
          assert.notEqual(r.code, 0, show(r));
          await squidNoEntry(lab, from, /:5000 /);
          assert.ok(!gw!.linesSince(mark).some((l) => isConnLine(l) && /:5000\b/.test(l)), tail(gw));
          const ok = await tcpSend(lab, `TCP:${O4}:22`, 'x22\\n');
          assert.equal(ok.stdout, 'x22\n', show(ok));
        });

        gtest('--bypass 2001:db8:3::/64: v6 origin not intercepted, v4 still is', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          const r = await curl(lab, ['--max-time', '3', `http://[${O6}]/bypassed`]);
          assert.notEqual(r.code, 0, `bypassed destination was carried: ${show(r)}`);
          await squidNoEntry(lab, from, /bypassed/);
          assert.ok(!gw!.linesSince(mark).some((l) => isConnLine(l) && l.includes(O6)), tail(gw));
          const v4 = await curl(lab, [`http://${O4}/not-bypassed`]);
          assert.equal(v4.code, 0, `${show(v4)}\n${tail(gw)}`);
        });
      });

      // ------------------------------------------------------------------
      describe('proxy given by name', () => {
        let gw: Gw | undefined;
        before(async () => {
          ctx.lab.setGatewayHosts([`${ADDR.proxy.v4} proxy.lab.test`]);
          gw = await startGw(
            ctx.lab,
            ['--mode', mode, '-tcp-proxy-dports', '22,5000'],
            proxyEnv({}, `http://proxy.lab.test:${ADDR.proxy.port}`),
          );
        });
        after(async () => {
          await stopQuietly(gw);
          await clearQuietly(ctx.lab);
        });

        gtest('TLS and TCP reach the origin through the proxy named in https_proxy, from the first connection on', async () => {
          const lab = ctx.lab;
          const from = await lab.squidMark();
          const mark = gw!.mark();
          // The first connection arrives before the name is looked up; the later ones after.
          for (let i = 0; i < 3; i++) {
            const t = await curl(lab, [
              '--cacert',
              lab.caFile,
              '--resolve',
              `www.example.test:443:${O4}`,
              `https://www.example.test/named${i}`,
            ]);
            assert.equal(t.code, 0, `${show(t)}\n${tail(gw)}`);
            assert.equal(t.stdout, `origin host=www.example.test uri=/named${i} proto=https\n`);
          }
          const e = await tcpSend(lab, `TCP:${O4}:5000`, 'named\\n');
          assert.equal(e.stdout, 'named\n', `${show(e)}\n${tail(gw)}`);
          const lines = gw!
            .linesSince(mark)
            .filter(isConnLine)
            .map((l): Record<string, string> => ({ ...parseKv(l), _line: l }));
          const tls = lines.filter((f) => f.kind === 'tls');
          assert.equal(tls.length, 3, tail(gw));
          for (const f of tls) {
            assert.equal(f.via, `proxy.lab.test:${ADDR.proxy.port}`, f._line);
            assert.equal(f.result, 'ok', f._line);
          }
          await lab.waitSquidLog(/ CONNECT www\.example\.test:443 200 /, 3000, from);
        });
      });

      describe('proxy authentication', () => {
        let gw: Gw | undefined;
        before(async () => {
          await ctx.lab.restartSquid({ auth: true });
        });
        after(async () => {
          await stopQuietly(gw);
          await clearQuietly(ctx.lab);
          await ctx.lab.restartSquid({});
        });

        gtest('(6) credentials from http_proxy (percent-encoded) are used for HTTP, TLS and TCP', async () => {
          const lab = ctx.lab;
          gw = await startGw(lab, ['--mode', mode], proxyEnv({}, ADDR.proxyUrlAuth));
          try {
            const from = await lab.squidMark();
            const h = await curl(lab, ['--resolve', `www.example.test:80:${O4}`, 'http://www.example.test/auth']);
            assert.equal(h.code, 0, `${show(h)}\n${tail(gw)}`);
            assert.equal(h.stdout, 'origin host=www.example.test uri=/auth proto=http\n');
            await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/auth 200 \d+ alice$/, 3000, from);
            const t = await curl(lab, ['--cacert', lab.caFile, '--resolve', `www.example.test:443:${O4}`, 'https://www.example.test/auth']);
            assert.equal(t.code, 0, `${show(t)}\n${tail(gw)}`);
            await lab.waitSquidLog(/ CONNECT www\.example\.test:443 200 \d+ alice$/, 3000, from);
            const e = await tcpSend(lab, `TCP:${O4}:22`, 'authed\\n');
            assert.equal(e.stdout, 'authed\n', `${show(e)}\n${tail(gw)}`);
            // The password never appears in the gateway's log.
            assert.ok(!gw.output().includes('s3cr3t'), 'password leaked into the log');
          } finally {
            await stopQuietly(gw);
            gw = undefined;
          }
        });

        gtest('(6) wrong password: HTTP 502 mentioning 407 quickly; TLS reset, not a hang', async () => {
          const lab = ctx.lab;
          gw = await startGw(lab, ['--mode', mode], proxyEnv({}, 'http://alice:wrong%20pass@198.51.100.2:3128'));
          try {
            const mark = gw.mark();
            const h = await curl(lab, [
              '--resolve',
              `www.example.test:80:${O4}`,
              '-w',
              '\n%{http_code}',
              'http://www.example.test/badauth',
            ]);
            assert.match(h.stdout, /\n502$/, `${show(h)}\n${tail(gw)}`);
            assert.match(h.stdout, /407/, `502 body should mention 407: ${show(h)}`);
            assert.ok(h.ms < 5000, `took ${h.ms} ms`);
            const c = await waitConn(gw, mark, (f) => f.kind === 'http' && dstIs(f.dst, O4, 80), 'http with a bad password');
            assert.match(c._line, /407/, c._line);

            const t = await curl(lab, [
              '--cacert',
              lab.caFile,
              '--resolve',
              `www.example.test:443:${O4}`,
              'https://www.example.test/badauth',
            ]);
            assert.notEqual(t.code, 0, show(t));
            assert.notEqual(t.code, 28, `TLS hung: ${show(t)}`);
            assert.ok(t.ms < 5000, `TLS failure took ${t.ms} ms`);
            const ct = await waitConn(gw, mark, (f) => f.kind === 'tls' && dstIs(f.dst, O4, 443), 'tls with a bad password');
            assert.match(ct._line, /407/, ct._line);
          } finally {
            await stopQuietly(gw);
            gw = undefined;
          }
        });
      });

      // ------------------------------------------------------------------
      describe('lifecycle: stop, crash, restart, clear', () => {
        // Default flags (tproxy is the default mode: no --mode flag for it).
        const args = mode === 'tproxy' ? [] : ['--mode', 'redirect'];
        let gw: Gw | undefined;
        let firstTable = '';
        let firstRules: string[] = [];

        after(async () => {
          await stopQuietly(gw);
          await clearQuietly(ctx.lab);
        });

        async function installed(lab: Lab): Promise<{ table: ExecResult; rules: string[]; ruleCount: number }> {
          const table = await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'transgate']);
          const now = await snapshotRouting(lab);
          const rules = [...lineDiff(now.rules4, baseline.rules4), ...lineDiff(now.rules6, baseline.rules6)];
          const ruleCount = table.stdout.split('\n').filter((l) => /\b(tproxy|redirect)\b/.test(l)).length;
          return { table, rules, ruleCount };
        }

        async function assertAllGone(lab: Lab, why: string): Promise<void> {
          const t = await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'transgate']);
          assert.notEqual(t.code, 0, `${why}: nft table still there:\n${t.stdout}`);
          const now = await snapshotRouting(lab);
          assert.equal(now.rules4, baseline.rules4, `${why}: ip rules left`);
          assert.equal(now.rules6, baseline.rules6, `${why}: ip -6 rules left`);
          assert.equal(now.tables, baseline.tables, `${why}: nft tables differ`);
          for (const r of firstRules) {
            const table = /lookup (\S+)/.exec(r)?.[1];
            if (!table || ['main', 'local', 'default'].includes(table)) continue;
            const fam = r.includes(':') ? '-6' : '-4';
            const routes = await lab.exec('gw', ['ip', fam, 'route', 'show', 'table', table]);
            assert.equal(routes.stdout.trim(), '', `${why}: routes left in table ${table}`);
          }
        }

        gtest('(11) SIGTERM: exit 0, table and ip rules removed', async () => {
          const lab = ctx.lab;
          gw = await startGw(lab, args, proxyEnv());
          const first = await installed(lab);
          assert.equal(first.table.code, 0, `table missing after ready:\n${tail(gw)}`);
          firstTable = first.table.stdout;
          firstRules = first.rules;
          assert.ok(first.ruleCount > 0, firstTable);
          if (mode === 'tproxy') assert.equal(first.rules.length, 2, first.rules.join('\n'));
          const r = await curl(lab, ['--resolve', `www.example.test:80:${O4}`, 'http://www.example.test/life']);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);
          const code = await gw.stop('SIGTERM');
          assert.equal(code, 0, tail(gw));
          await assertAllGone(lab, 'after SIGTERM');
        });

        gtest('(11) SIGINT: exit 0, table and ip rules removed', async () => {
          const lab = ctx.lab;
          gw = await startGw(lab, args, proxyEnv());
          const code = await gw.stop('SIGINT');
          assert.equal(code, 0, tail(gw));
          await assertAllGone(lab, 'after SIGINT');
        });

        gtest('(12) kill -9 leaves rules; a restart reuses them without duplicates; clear removes all', async () => {
          const lab = ctx.lab;
          gw = await startGw(lab, args, proxyEnv());
          assert.equal(await gw.kill9(), 137);
          const crashed = await installed(lab);
          assert.equal(crashed.table.code, 0, 'after kill -9 the table is expected to remain');
          if (mode === 'tproxy') assert.equal(crashed.rules.length, 2, crashed.rules.join('\n'));

          gw = await startGw(lab, args, proxyEnv());
          const again = await installed(lab);
          assert.equal(again.table.code, 0);
          const tables = (await lab.exec('gw', ['nft', 'list', 'tables'])).stdout
            .split('\n')
            .filter((l) => /table inet transgate\b/.test(l));
          assert.equal(tables.length, 1, tables.join('\n'));
          assert.deepEqual(again.rules.sort(), [...firstRules].sort(), 'ip rules after restart differ from a clean start');
          assert.equal(
            again.ruleCount,
            firstTable.split('\n').filter((l) => /\b(tproxy|redirect)\b/.test(l)).length,
            `duplicate rules:\n${again.table.stdout}`,
          );
          const r = await curl(lab, [
            '--cacert',
            lab.caFile,
            '--resolve',
            `www.example.test:443:${O4}`,
            'https://www.example.test/restarted',
          ]);
          assert.equal(r.code, 0, `${show(r)}\n${tail(gw)}`);

          assert.equal(await gw.kill9(), 137);
          gw = undefined;
          const c = await lab.transgate(['clear']);
          assert.equal(c.code, 0, show(c));
          await assertAllGone(lab, 'after clear');
          const c2 = await lab.transgate(['clear']);
          assert.equal(c2.code, 0, `clear with nothing installed must exit 0: ${show(c2)}`);
          await assertAllGone(lab, 'after second clear');
        });

        gtest('(13) `transgate rules` with nothing installed changes nothing', async () => {
          const lab = ctx.lab;
          const before1 = await lab.exec('gw', ['nft', 'list', 'ruleset']);
          const r = await lab.transgate(['rules', ...args]);
          assert.equal(r.code, 0, show(r));
          assert.match(r.stdout, mode === 'tproxy' ? /tproxy/ : /redirect/);
          const after1 = await lab.exec('gw', ['nft', 'list', 'ruleset']);
          assert.equal(after1.stdout, before1.stdout);
          await assertAllGone(lab, 'after rules');
        });
      });
    });
  }
});

/**
 * --direct-source client: a direct (no_proxy) connection leaves the gateway
 * from the client's own address, so the server reached directly sees and
 * logs the real client; by default (gateway) it sees the gateway's wan
 * address. Both modes, both relays (splice: native/tunnel.c; js: Node's
 * sockets), the stream path (a TCP port) and the HTTP path (port 80, whose
 * direct requests share keep-alive connections).
 *
 * The servers in `up` route the clients' network through the gateway, as
 * internal servers behind a clients' gateway do: their answers, addressed
 * to the client, come back to the gateway on wan0 and must be delivered to
 * the transparent socket (the `socket transparent` mark and the policy
 * route), not forwarded to the client, which would reset them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const INTRA4 = ADDR.intranet.v4;
const INTRA6 = ADDR.intranet.v6;
/** Answers the peer address it saw, then closes. */
const PORT_WHO = 7010;

const WHO_SERVER = `
const net = require('net');
let up = 0;
for (const host of ['${INTRA4}', '${INTRA6}']) {
  net.createServer((s) => s.end(s.remoteAddress + '\\n')).listen(${PORT_WHO}, host, () => { if (++up === 2) console.log('listening'); });
}
`;

/** The gateway's conn line matching pred, waiting for it. */
async function connLine(gw: Gw, from: number, pred: (f: Record<string, string>) => boolean): Promise<Record<string, string>> {
  const deadline = Date.now() + 8000;
  for (;;) {
    for (const line of gw.linesSince(from)) {
      if (!/(^|\s)conn\s+id=/.test(line)) continue;
      const f = parseKv(line);
      if (pred(f)) return { ...f, _line: line };
    }
    if (Date.now() > deadline) throw new Error(`no matching conn line; gateway said:\n${gw.linesSince(from).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('--direct-source', { skip, timeout: 600_000 }, () => {
  let lab: Lab;
  let accessLog: string;

  before(async () => {
    lab = await Lab.create();
    accessLog = path.join(lab.dir, 'nginx-up', 'access.log');
    // The internal servers reach the clients' network through the gateway.
    await lab.exec('up', ['ip', 'route', 'add', '192.0.2.0/24', 'via', ADDR.gwWan.v4]);
    await lab.exec('up', ['ip', '-6', 'route', 'add', '2001:db8:1::/64', 'via', ADDR.gwWan.v6]);
    // The first IPv6 answer from up to a client went nowhere while the gateway's addresses were still tentative
    // (duplicate address detection): the first case's v6 connection then hung. Wait until none is.
    for (let i = 0; ; i++) {
      const r = await lab.exec('gw', ['ip', '-6', 'addr', 'show', 'tentative']);
      if (r.code === 0 && r.stdout.trim() === '') break;
      if (i > 100) throw new Error(`gw's IPv6 addresses stay tentative:\n${r.stdout}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    lab.spawn('up', [process.execPath, '-e', WHO_SERVER]);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const have = await lab.listening('up');
      if (have.includes(`${INTRA4}:${PORT_WHO}`) && have.includes(`[${INTRA6}]:${PORT_WHO}`)) break;
      if (Date.now() > deadline) throw new Error(`test server not listening: ${have.join(' ')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  /** What the server at host:PORT_WHO saw as the peer, asked from the client. */
  async function whoAmI(host: string): Promise<string> {
    const r = await lab.exec('cl', ['socat', '-T', '5', '-', `TCP:${host.includes(':') ? `[${host}]` : host}:${PORT_WHO}`], {
      timeoutMs: 10_000,
    });
    assert.equal(r.code, 0, `socat to ${host}: ${r.stderr}`);
    return r.stdout.trim();
  }

  /** The address nginx in `up` logged for the request to `uri` (combined format: $remote_addr first). */
  async function nginxSaw(host: string, uri: string): Promise<string> {
    const url = `http://${host.includes(':') ? `[${host}]` : host}${uri}`;
    const r = await lab.exec('cl', ['curl', '-sS', '--fail', '--max-time', '8', url], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, `curl ${url}: ${r.stderr}`);
    assert.match(r.stdout, /^intranet /, 'the intranet server answered');
    const deadline = Date.now() + 3000;
    for (;;) {
      const line = fs
        .readFileSync(accessLog, 'utf8')
        .split('\n')
        .find((l) => l.includes(`GET ${uri} `));
      if (line) return line.split(' ')[0]!;
      if (Date.now() > deadline) throw new Error(`nginx logged no request for ${uri}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  let seq = 0;
  const cases = [
    ...(['tproxy', 'redirect'] as const).flatMap((mode) =>
      (['splice', 'js'] as const).flatMap((relay) =>
        (['client', 'gateway'] as const).map((source) => ({ mode, relay, source, firewall: 'nftables' })),
      ),
    ),
    // The iptables backend's rules for the answers (mangle PREROUTING, before the per-interface jumps).
    { mode: 'tproxy' as const, relay: 'splice' as const, source: 'client' as const, firewall: 'iptables' },
    { mode: 'redirect' as const, relay: 'splice' as const, source: 'client' as const, firewall: 'iptables' },
  ];
  for (const { mode, relay, source, firewall } of cases) {
    describe(`--mode ${mode} --relay ${relay} --direct-source ${source} --firewall ${firewall}`, () => {
      let gw: Gw;
      const want4 = source === 'client' ? ADDR.client.v4 : ADDR.gwWan.v4;
      const want6 = source === 'client' ? ADDR.client.v6 : ADDR.gwWan.v6;

      before(async () => {
        gw = await lab.startGateway(
          ['--mode', mode, '--relay', relay, '--firewall', firewall, '--direct-source', source, '-tcp-proxy-dports', `5000,${PORT_WHO}`],
          { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl, no_proxy: `${INTRA4},${INTRA6}` },
        );
        await gw.waitFor(new RegExp(`\\brelay ${relay}\\b`), 2000);
      });
      after(async () => {
        await gw?.stop('SIGTERM', 5000).catch(() => gw.kill9());
      });

      test(`a direct TCP connection reaches the server from ${want4} (IPv4) and ${want6} (IPv6)`, async () => {
        const from = gw.mark();
        assert.equal(await whoAmI(INTRA4), want4);
        assert.equal(await whoAmI(INTRA6), want6, gw.linesSince(from).join('\n'));
        const f = await connLine(gw, from, (x) => (x['dst'] ?? '').endsWith(`:${PORT_WHO}`));
        assert.equal(f['route'], 'direct', f['_line']);
        assert.equal(f['result'], 'ok', f['_line']);
      });

      test(`a direct HTTP request is logged by nginx as from ${want4} / ${want6}`, async () => {
        const tag = `${mode}-${relay}-${source}-${firewall}-${++seq}`;
        assert.equal(await nginxSaw(INTRA4, `/who4-${tag}`), want4);
        assert.equal(await nginxSaw(INTRA6, `/who6-${tag}`), want6);
      });

      test('a proxied connection still works (it leaves from the gateway, through squid)', async () => {
        const r = await lab.exec('cl', ['sh', '-c', `(printf 'ping\\n'; sleep 1) | socat -T 5 - TCP:${ADDR.origin.v4}:5000`], {
          timeoutMs: 10_000,
        });
        assert.equal(r.stdout, 'ping\n', r.stderr);
      });
    });
  }
});

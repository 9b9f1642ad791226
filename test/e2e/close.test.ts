/**
 * Gateway.close() leaves nothing behind: after real traffic (HTTPS by SNI
 * through squid, plain HTTP on port 80, DNS over UDP and TCP, public and
 * private) and with connections still open, close() ends them all, the
 * process's event loop empties by itself and its exit code is 0, no socket
 * fd is left (neither Node's nor the addon's), and the rules and policy
 * routes are gone.
 *
 * The CLI calls process.exit() right after close() (src/cli/main.ts), which
 * hides anything close() forgets; test/e2e/support/close-driver.ts runs the
 * same Gateway without it and reports what is still open.
 *
 * Both modes, both relays (TG_E2E_RELAY=js|splice runs one relay only).
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, DNS_ADDR, type ExecResult, type Gw, Lab, e2eSkipReason } from './lab';

const skip = e2eSkipReason();
const MODES = ['tproxy', 'redirect'] as const;
const RELAYS = process.env['TG_E2E_RELAY'] ? [process.env['TG_E2E_RELAY']] : ['splice', 'js'];
const O4 = ADDR.origin.v4;
const WWW = ADDR.names.www;
const DRIVER = path.join(__dirname, 'support', 'close-driver.js');
/** After the driver's "closed" line the process has this long to end by itself. */
const EXIT_WITHIN_MS = 3000;

interface CloseReport {
  resources: string[];
  sockets: string[];
  native: { spliceActive: number; tunnelPending: number };
  /** Node's sockets and servers, described (for the failure message). */
  handles: string[];
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms}\nstdout: ${JSON.stringify(r.stdout.slice(0, 800))}\nstderr: ${JSON.stringify(r.stderr.slice(0, 400))}`;
}

/**
 * Connections that are open while the gateway closes, one of each state a
 * connection can be in at that moment: a TLS connection and a plain-HTTP
 * one idle after an answer (kept alive, relayed), and two that have not
 * sent enough to be decided (nothing on 443; half a request head on 80).
 * Prints "held" once all are up, then one "ended NAME HOW" line each.
 */
const HELD_CLIENT = `
const fs = require('fs'), net = require('net'), tls = require('tls');
const ended = new Set();
const watch = (name, s) => {
  const end = (how) => { if (ended.has(name)) return; ended.add(name); console.log('ended ' + name + ' ' + how); };
  s.on('error', (e) => end('error:' + e.code));
  s.on('close', () => end('close'));
};
const answered = (s) => new Promise((resolve) => {
  let got = '';
  s.on('data', (d) => { got += d; if (/^HTTP\\/1\\.1 200 /.test(got) && got.includes('\\r\\n\\r\\n')) resolve(); });
});
const connected = (s, ev) => new Promise((resolve) => s.once(ev, resolve));
(async () => {
  const req = 'GET / HTTP/1.1\\r\\nHost: ${WWW}\\r\\n\\r\\n';
  const t = tls.connect({ host: '${O4}', port: 443, servername: '${WWW}', ca: fs.readFileSync(process.argv[1]) });
  watch('tls-kept-alive', t);
  await connected(t, 'secureConnect');
  t.write(req);
  await answered(t);
  const h = net.connect({ host: '${O4}', port: 80 });
  watch('http-kept-alive', h);
  await connected(h, 'connect');
  h.write(req);
  await answered(h);
  const q = net.connect({ host: '${O4}', port: 443 });
  watch('tls-silent', q);
  await connected(q, 'connect');
  const p = net.connect({ host: '${O4}', port: 80 });
  watch('http-half-head', p);
  await connected(p, 'connect');
  p.write('GET / HTTP/1.1\\r\\nHost: ${WWW}');
  console.log('held');
})();
setTimeout(() => { console.log('gave up'); process.exit(1); }, 20000);
`;

/** The lines a child prints, as they come. */
function linesOf(child: ChildProcess): { lines: string[]; waitFor: (re: RegExp, ms: number) => Promise<string> } {
  const lines: string[] = [];
  let buf = '';
  const waiters = new Set<() => void>();
  child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    for (const w of [...waiters]) w();
  });
  child.stderr?.on('data', (d: Buffer) => lines.push(`stderr: ${d.toString('utf8').trimEnd()}`));
  const waitFor = (re: RegExp, ms: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = lines.find((l) => re.test(l));
        if (hit === undefined) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(hit);
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no line matched ${re} within ${ms} ms:\n${lines.join('\n')}`));
      }, ms);
      waiters.add(check);
      check();
    });
  return { lines, waitFor };
}

/** What netfilter and policy routing look like in gw: close() must leave exactly this. */
async function netState(lab: Lab): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [k, argv] of [
    ['ruleset', ['nft', 'list', 'ruleset']],
    ['rules4', ['ip', '-4', 'rule', 'show']],
    ['rules6', ['ip', '-6', 'rule', 'show']],
    ['routes4', ['ip', '-4', 'route', 'show', 'table', 'all']],
    ['routes6', ['ip', '-6', 'route', 'show', 'table', 'all']],
  ] as const) {
    const r = await lab.exec('gw', [...argv]);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${show(r)}`);
    // Link-local addresses (and their local routes) appear whenever duplicate address detection ends: not ours.
    out[k] = r.stdout
      .split('\n')
      .filter((l) => !/\bfe80:/.test(l))
      .join('\n');
  }
  return out;
}

describe(
  'Gateway.close() after traffic: no handles, no fds, no rules left, and the process ends by itself',
  { skip, timeout: 120_000 },
  () => {
    let lab: Lab;
    /** What a bare node process with the driver's stdio reports: stdout and stderr pipes, nothing else. */
    let bare: string[];
    let clean: Record<string, string>;

    before(async () => {
      lab = await Lab.create();
      await lab.startDnsServers();
      const r = await lab.exec('gw', [
        process.execPath,
        '-e',
        'process.stdout; process.stderr; console.log(JSON.stringify(process.getActiveResourcesInfo()))',
      ]);
      assert.equal(r.code, 0, show(r));
      bare = (JSON.parse(r.stdout) as string[]).sort();
      clean = await netState(lab);
    });

    after(async () => {
      await lab?.transgate(['clear']).catch(() => undefined);
      await lab?.destroy();
    });

    for (const mode of MODES) {
      for (const relay of RELAYS) {
        test(`${mode}, --relay ${relay}`, async () => {
          const args = ['--mode', mode, '--relay', relay, '--private-domains', 'corp.test', '--private-dns', DNS_ADDR.private.v4];
          // After REDIRECT a UDP query's destination is gone: the public server must be named.
          if (mode === 'redirect') args.push('--public-dns', DNS_ADDR.public.v4);
          const env = { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl };
          const gw: Gw = await lab.startGateway(args, env, { script: DRIVER });
          let held: ChildProcess | undefined;
          let passed = false;
          try {
            const running = await lab.exec('gw', ['nft', 'list', 'ruleset']);
            assert.match(running.stdout, /table inet transgate/, 'the rules were not installed: the removal check would prove nothing');

            const curl = (url: string): Promise<ExecResult> =>
              lab.exec('cl', [
                'curl',
                '-sS',
                '--max-time',
                '8',
                '--cacert',
                lab.caFile,
                '--resolve',
                `${WWW}:443:${O4}`,
                '--resolve',
                `${WWW}:80:${O4}`,
                '-o',
                '/dev/null',
                '-w',
                '%{http_code}',
                url,
              ]);
            const https = await curl(`https://${WWW}/`);
            assert.equal(https.stdout, '200', `HTTPS by SNI: ${show(https)}`);
            const http = await curl(`http://${WWW}/`);
            assert.equal(http.stdout, '200', `HTTP on port 80: ${show(http)}`);
            const dig = (extra: string[], name: string): Promise<ExecResult> =>
              lab.exec('cl', ['dig', '+time=4', '+tries=1', '+short', ...extra, `@${DNS_ADDR.public.v4}`, name, 'A']);
            for (const [extra, name, want] of [
              [[], `udp-${mode}-${relay}.example.test`, O4],
              [['+tcp'], `tcp-${mode}-${relay}.example.test`, O4],
              [[], `udp-${mode}-${relay}.corp.test`, ADDR.intranet.v4],
            ] as const) {
              const r = await dig([...extra], name);
              assert.equal(r.stdout.trim(), want, `dig ${extra.join(' ')} ${name}: ${show(r)}`);
            }

            held = lab.spawn('cl', [process.execPath, '-e', HELD_CLIENT, lab.caFile]);
            const client = linesOf(held);
            await client.waitFor(/^held$/, 10_000);

            const before = gw.mark();
            process.kill(gw.pid, 'SIGTERM');
            const closedLine = await gw.waitFor(/^closed /, 5000, before);
            const report = JSON.parse(closedLine.slice('closed '.length)) as CloseReport;
            const exited = await Promise.race([gw.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), EXIT_WITHIN_MS))]);
            const output = gw.linesSince(before).slice(-30).join('\n');
            if (exited === 'hung') await gw.kill9();

            assert.deepEqual(
              [...report.resources].sort(),
              bare,
              `active resources after close() (a bare node has ${JSON.stringify(bare)}):\n${output}`,
            );
            assert.deepEqual(report.sockets, [], `socket fds opened by the gateway and still open after close():\n${output}`);
            assert.deepEqual(report.native, { spliceActive: 0, tunnelPending: 0 }, 'the addon still carries connections');
            assert.notEqual(exited, 'hung', `the process did not end by itself within ${EXIT_WITHIN_MS} ms of close():\n${output}`);
            assert.equal(exited, 0, `exit code:\n${output}`);

            // Every connection that was open was ended by close(), not left to its peer.
            const names = ['tls-kept-alive', 'http-kept-alive', 'tls-silent', 'http-half-head'];
            const open = (): string[] => names.filter((n) => !client.lines.some((l) => l.startsWith(`ended ${n} `)));
            for (const deadline = Date.now() + 3000; open().length > 0 && Date.now() < deadline;)
              await new Promise((r) => setTimeout(r, 50));
            assert.deepEqual(open(), [], `connections still open after close():\n${client.lines.join('\n')}`);

            assert.deepEqual(await netState(lab), clean, 'close() left rules or routes behind');
            passed = true;
          } finally {
            if (held?.pid) {
              try {
                process.kill(-held.pid, 'SIGKILL');
              } catch {
                // It ended already.
              }
            }
            if (gw.running) await gw.kill9();
            // A failed case may have left rules: the next one starts clean.
            if (!passed) await lab.transgate(['clear']).catch(() => undefined);
          }
        });
      }
    }
  },
);

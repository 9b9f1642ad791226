/**
 * Several upstreams end to end: two real squids in `up`, the preferred one
 * on 198.51.100.2:3129 (a second instance) and the lab's on :3128. With
 * both relays (the addon's upstream() failover and the Node paths) and both
 * modes:
 *   - TLS (CONNECT) and plain HTTP (absolute-form, framed) go to the first;
 *   - the first is SIGKILLed: new connections fail over to the second at
 *     once (a refused connect is not worth a timeout), the gateway says it is
 *     down;
 *   - it comes back: the prober (which retries a down upstream on its
 *     backoff) finds it up again and new connections go to it, with no
 *     client paying for the try.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, type Gw, Lab, e2eSkipReason, squidBaseConf } from './lab';

const skip = e2eSkipReason();
const WWW = ADDR.names.www;
const O4 = ADDR.origin.v4;
const SECOND_PORT = 3129;
const PROBE_NAME = 'example.test';
const FIRST_URL = `http://${ADDR.proxy.v4}:${SECOND_PORT}`;
const MODES = ['tproxy', 'redirect'] as const;
const RELAYS = ['splice', 'js'] as const;

/** A second squid on :3129 with its own files; its access log says which requests it carried. */
class SecondSquid {
  private proc: ChildProcess | undefined;
  readonly dir: string;

  constructor(private readonly lab: Lab) {
    this.dir = path.join(lab.dir, 'squid2');
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    fs.copyFileSync(path.join(lab.squidDir, 'hosts'), path.join(this.dir, 'hosts'));
    const d = this.dir;
    fs.writeFileSync(
      path.join(d, 'squid.conf'),
      [...squidBaseConf('transgate-lab-squid2', d), `http_port ${ADDR.proxy.v4}:${SECOND_PORT}`, 'http_access allow all'].join('\n') + '\n',
      { mode: 0o644 },
    );
    fs.writeFileSync(path.join(d, 'access.log'), '', { mode: 0o644 });
    fs.chownSync(d, 13, 13);
    for (const f of fs.readdirSync(d)) fs.chownSync(path.join(d, f), 13, 13);
  }

  async start(): Promise<void> {
    this.proc = this.lab.spawn('up', ['squid', '-N', '-f', path.join(this.dir, 'squid.conf')], {
      logFile: path.join(this.dir, 'stderr.log'),
    });
    for (let i = 0; ; i++) {
      if ((await this.lab.listening('up')).some((a) => a.endsWith(`:${SECOND_PORT}`))) return;
      if (i > 300) throw new Error(`squid2 does not listen:\n${fs.readFileSync(path.join(this.dir, 'cache.log'), 'utf8').slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGKILL to the whole group (squid and its kid), then until the port is closed. */
  async kill(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (p?.pid) {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
    }
    await this.lab.exec('up', ['sh', '-c', `pkill -9 -f 'squid.*${this.dir}' || true`]);
    for (let i = 0; (await this.lab.listening('up')).some((a) => a.endsWith(`:${SECOND_PORT}`)); i++) {
      if (i > 200) throw new Error('squid2 still listens after SIGKILL');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  lines(): string[] {
    return fs.readFileSync(path.join(this.dir, 'access.log'), 'utf8').split('\n').filter(Boolean);
  }
}

describe('several upstreams: failover and recovery with real squids', { skip, timeout: 400_000 }, () => {
  let lab: Lab;
  let second: SecondSquid;

  before(async () => {
    lab = await Lab.create();
    second = new SecondSquid(lab);
    await second.start();
  });

  after(async () => {
    await second?.kill().catch(() => undefined);
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  const curl = (url: string) =>
    lab.exec(
      'cl',
      ['curl', '-sS', '--max-time', '8', '--cacert', lab.caFile, '--resolve', `${WWW}:443:${O4}`, '--resolve', `${WWW}:80:${O4}`, url],
      { timeoutMs: 10_000 },
    );

  /** Both kinds of port once: TLS by CONNECT and plain HTTP in absolute form; how many lines each squid logged meanwhile. */
  async function both(tag: string): Promise<{ first: string[]; second: string[] }> {
    const s1 = second.lines().length;
    const s0 = await lab.squidMark();
    const tls = await curl(`https://${WWW}/${tag}`);
    assert.equal(tls.code, 0, `${tag} https: ${tls.stderr}`);
    const plain = await curl(`http://${WWW}/${tag}`);
    assert.equal(plain.code, 0, `${tag} http: ${plain.stderr}`);
    const clients = (lines: string[]): string[] => lines.filter((l) => !l.includes(`CONNECT ${PROBE_NAME}:443`));
    return { first: clients(second.lines().slice(s1)), second: clients(await lab.squidLogSince(s0)) };
  }

  for (const relay of RELAYS) {
    for (const mode of MODES) {
      describe(`--mode ${mode} --relay ${relay}`, () => {
        let gw: Gw;
        before(async () => {
          gw = await lab.startGateway(
            [
              '--mode',
              mode,
              '--relay',
              relay,
              '--no-dns',
              '--upstream',
              FIRST_URL,
              '--upstream',
              ADDR.proxyUrl,
              // Long: a death is found by the clients' connections (the executors' failover), not by a probe first;
              // a down upstream is still probed on its backoff (1 s, 2 s, ...), which finds it back.
              '--upstream-check-interval',
              '60s',
              // The probes' CONNECTs are told apart from the clients' by this name.
              '--doctor-target',
              `${PROBE_NAME}:443`,
              '--connect-timeout',
              '3s',
            ],
            // --upstream wins over the environment: nothing may go to this one.
            { http_proxy: 'http://198.51.100.99:3128', https_proxy: 'http://198.51.100.99:3128' },
          );
        });
        after(async () => {
          await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
          await lab.transgate(['clear']).catch(() => undefined);
        });

        test('the first upstream carries both kinds of port while it is up', async () => {
          const got = await both(`up-${mode}-${relay}`);
          assert.ok(
            got.first.some((l) => l.includes(`CONNECT ${WWW}:443`)),
            got.first.join('\n'),
          );
          assert.ok(
            got.first.some((l) => l.includes(`GET http://${WWW}/up-`)),
            got.first.join('\n'),
          );
          assert.deepEqual(got.second, [], 'the second upstream got nothing');
        });

        test('the first is killed: new connections fail over to the second at once, and the gateway says it is down', async () => {
          const from = gw.mark();
          await second.kill();
          const started = Date.now();
          const got = await both(`down-${mode}-${relay}`);
          assert.ok(Date.now() - started < 3000, `the failover waited ${Date.now() - started} ms`);
          assert.ok(
            got.second.some((l) => l.includes(`CONNECT ${WWW}:443`)),
            `${got.second.join('\n')}\n${gw.linesSince(from).join('\n')}`,
          );
          assert.ok(
            got.second.some((l) => l.includes(`GET http://${WWW}/down-`)),
            got.second.join('\n'),
          );
          await gw.waitFor(new RegExp(`upstream ${FIRST_URL.replace(/\./g, '\\.')} is down`), 5000, from);
        });

        test('it comes back: the prober finds it and new connections go to it again', async () => {
          const from = gw.mark();
          await second.start();
          await gw.waitFor(/is up again/, 10_000, from);
          const got = await both(`back-${mode}-${relay}`);
          assert.ok(
            got.first.some((l) => l.includes(`CONNECT ${WWW}:443`)),
            got.first.join('\n'),
          );
          assert.deepEqual(got.second, [], 'the second upstream got nothing once the first was back');
        });
      });
    }
  }
});

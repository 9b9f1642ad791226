/**
 * `sudo node dist/bench/auth-bench.js` (after `npm run build`): the gateway's
 * CPU per new connection when the proxy wants Basic, NTLM or Digest, in one
 * namespace lab (test/e2e/lab.ts) against squid with basic_ncsa_auth,
 * ntlm_fake_auth or digest_file_auth as its only scheme. Each new TLS
 * connection (hey -disable-keepalive, CONNECT by address) costs the
 * gateway one CONNECT with Basic, NTLM's two legs (NEGOTIATE up front
 * once the scheme is known, then AUTHENTICATE after the challenge), or
 * Digest's 407 and its answer. Both relays; the variants take turns over
 * BENCH_ROUNDS rounds and the table shows medians, with each scheme's
 * ratio to Basic measured in the same run.
 *
 * Knobs: BENCH_ROUNDS (3), BENCH_CONN_REQUESTS (2000), BENCH_CONN_WARMUP (500),
 * BENCH_CONN_CONCURRENCY (16).
 */
import fs from 'node:fs';
import { ADDR, Lab } from '../test/e2e/lab';

const opt = (name: string, dflt: number): number => {
  const v = process.env[`BENCH_${name}`];
  return v && /^\d+$/.test(v) ? Number(v) : dflt;
};
const ROUNDS = Math.max(1, opt('ROUNDS', 3));
const REQUESTS = opt('CONN_REQUESTS', 2000);
const WARMUP = opt('CONN_WARMUP', 500);
const CONCURRENCY = opt('CONN_CONCURRENCY', 16);
const SENT = Math.floor(REQUESTS / CONCURRENCY) * CONCURRENCY;
const CLK_TCK = 100;
const SCHEMES = ['basic', 'ntlm', 'digest'] as const;
const RELAYS = ['splice', 'js'] as const;
type Scheme = (typeof SCHEMES)[number];

function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

interface Run {
  cpuUsPerConn: number;
  perSec: number;
  errors: number;
}

async function measure(lab: Lab, scheme: Scheme, relay: string): Promise<Run> {
  const pw = encodeURIComponent(ADDR.auth.password);
  const user = scheme === 'ntlm' ? `LAB%5C${ADDR.auth.user}` : ADDR.auth.user;
  const url = `http://${user}:${pw}@${ADDR.proxy.v4}:${ADDR.proxy.port}`;
  const gw = await lab.startGateway(['--relay', relay, '--no-dns'], { https_proxy: url, http_proxy: url }, { logToFile: true });
  try {
    const hey = (n: number) => [
      'hey',
      '-n',
      String(n),
      '-c',
      String(CONCURRENCY),
      '-disable-keepalive',
      '-t',
      '10',
      `https://${ADDR.origin.v4}/`,
    ];
    await lab.exec('cl', hey(WARMUP), { timeoutMs: 180_000 });
    const c0 = cpuTicks(gw.pid);
    const r = await lab.exec('cl', hey(REQUESTS), { timeoutMs: 180_000 });
    const c1 = cpuTicks(gw.pid);
    const rps = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
    const ok = /\[200\]\s+(\d+) responses/.exec(r.stdout);
    if (!rps) throw new Error(`${scheme} ${relay}: hey printed no rate: ${r.stdout.slice(-600)} ${r.stderr.slice(0, 400)}`);
    return { cpuUsPerConn: (((c1 - c0) / CLK_TCK) * 1e6) / SENT, perSec: Number(rps[1]), errors: SENT - (ok ? Number(ok[1]) : 0) };
  } finally {
    await gw.stop('SIGTERM', 5000).catch(() => gw.kill9());
    await lab.transgate(['clear']).catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const lab = await Lab.create();
  const runs = new Map<string, Run[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const scheme of SCHEMES) {
        await lab.restartSquid({ auth: true, authScheme: scheme, maxFds: 8192 });
        for (const relay of RELAYS) {
          const r = await measure(lab, scheme, relay);
          const key = `${scheme} ${relay}`;
          runs.set(key, [...(runs.get(key) ?? []), r]);
          console.log(
            `round ${round} ${key.padEnd(14)} ${r.cpuUsPerConn.toFixed(0).padStart(5)} us/conn  ${r.perSec.toFixed(0).padStart(5)} conn/s  errors ${r.errors}`,
          );
        }
      }
    }
  } finally {
    await lab.destroy();
  }
  console.log(`\nmedians of ${ROUNDS} rounds, ${SENT} new TLS connections each (gateway CPU, user+sys):`);
  console.log('| scheme | relay | us CPU / conn | vs Basic | conn/s | errors |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const relay of RELAYS) {
    const basic = median(runs.get(`basic ${relay}`)!.map((r) => r.cpuUsPerConn));
    for (const scheme of SCHEMES) {
      const rs = runs.get(`${scheme} ${relay}`)!;
      const cpu = median(rs.map((r) => r.cpuUsPerConn));
      console.log(
        `| ${scheme} | ${relay} | ${cpu.toFixed(0)} | ${(cpu / basic).toFixed(2)}x | ${median(rs.map((r) => r.perSec)).toFixed(0)} | ${rs.reduce((a, r) => a + r.errors, 0)} |`,
      );
    }
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

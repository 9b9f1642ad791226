/**
 * `sudo node dist/bench/dns-load.js`: dnsperf at a fixed rate (-Q) against
 * transgate's DNS gateway in the lab, counting response codes. This is the
 * run that showed SERVFAILs under load (0.5-1% at 3,000 queries/s).
 *
 * Knobs: BENCH_DNS_QPS (default 3000), BENCH_DNS_SECONDS (default 10),
 * BENCH_DNS_VARIANTS (comma list of proxy-miss, proxy-mixed, direct-miss).
 */
import fs from 'node:fs';
import path from 'node:path';
import { ADDR, DNS_ADDR, type Gw, Lab } from '../test/e2e/lab';

const QPS = Number(process.env.BENCH_DNS_QPS ?? 3000) || 3000;
const SECONDS = Number(process.env.BENCH_DNS_SECONDS ?? 10) || 10;
const OUTSTANDING = Number(process.env.BENCH_DNS_OUTSTANDING ?? 200) || 200;
const VARIANTS = (process.env.BENCH_DNS_VARIANTS ?? 'proxy-miss,proxy-mixed,direct-miss').split(',');

interface Codes {
  sent: number;
  lost: number;
  codes: Record<string, number>;
  qps: number;
}

function parse(out: string): Codes {
  const sent = Number(/Queries sent:\s+(\d+)/.exec(out)?.[1] ?? NaN);
  const lost = Number(/Queries lost:\s+(\d+)/.exec(out)?.[1] ?? NaN);
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const codes: Record<string, number> = {};
  const line = /Response codes:\s+(.*)/.exec(out)?.[1] ?? '';
  for (const m of line.matchAll(/([A-Z]+) (\d+)/g)) codes[m[1]!] = Number(m[2]);
  if (!Number.isFinite(sent)) throw new Error(`dnsperf printed no summary:\n${out}`);
  return { sent, lost, codes, qps };
}

function files(dir: string, tag: string): { miss: string; mixed: string } {
  const miss = path.join(dir, `load-miss-${tag}.txt`);
  const mixed = path.join(dir, `load-mixed-${tag}.txt`);
  const n = QPS * SECONDS * 2;
  const m = new Array<string>(n);
  const x = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    m[i] = `m${i}.${tag}.example.test A`;
    // A working set like a LAN's: most names repeat, some are new.
    x[i] = i % 4 === 0 ? `n${i}.${tag}.example.test A` : `w${i % 500}.${tag}.example.test ${i % 3 === 0 ? 'AAAA' : 'A'}`;
  }
  fs.writeFileSync(miss, m.join('\n') + '\n', { mode: 0o644 });
  fs.writeFileSync(mixed, x.join('\n') + '\n', { mode: 0o644 });
  return { miss, mixed };
}

async function main(): Promise<void> {
  const lab = await Lab.create();
  let gw: Gw | undefined;
  const results: Array<[string, Codes, string[]]> = [];
  try {
    await lab.startDnsServers();
    for (const v of VARIANTS) {
      const tag = `${v}${process.pid}`;
      const f = files(lab.dir, tag.replace(/[^a-z0-9]/g, ''));
      const args = ['--log-level', 'debug', '--dns-cache-size', '100000', '--dns-client-rate', '0'];
      if (v.startsWith('direct')) args.push('--dns-over-tcp-disabled', '--public-dns', DNS_ADDR.private.v4);
      gw = await lab.startGateway(args, { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl });
      const file = v.endsWith('mixed') ? f.mixed : f.miss;
      const r = await lab.exec(
        'cl',
        ['dnsperf', '-s', DNS_ADDR.public.v4, '-d', file, '-l', String(SECONDS), '-Q', String(QPS), '-q', String(OUTSTANDING), '-t', '5'],
        { timeoutMs: (SECONDS + 30) * 1000 },
      );
      if (r.code !== 0) throw new Error(`dnsperf failed (${r.code}): ${r.stderr}\n${r.stdout}`);
      await gw.stop();
      const errors = gw
        .linesSince(0)
        .filter((l) => /rcode=SERVFAIL/.test(l))
        .map((l) => /error=(.*)$/.exec(l)?.[1] ?? l);
      const why = new Map<string, number>();
      for (const e of errors) why.set(e.replace(/\d+/g, 'N'), (why.get(e.replace(/\d+/g, 'N')) ?? 0) + 1);
      results.push([v, parse(r.stdout), [...why].map(([k, n]) => `${n}x ${k}`)]);
      gw = undefined;
    }
    console.log(`\nDNS load: dnsperf -Q ${QPS} -l ${SECONDS} -q ${OUTSTANDING} from the client namespace\n`);
    for (const [v, c, why] of results) {
      const total = Object.values(c.codes).reduce((a, b) => a + b, 0);
      const sf = c.codes['SERVFAIL'] ?? 0;
      console.log(
        `${v.padEnd(14)} sent ${c.sent} lost ${c.lost} q/s ${c.qps.toFixed(0)} SERVFAIL ${sf} (${((100 * sf) / Math.max(1, total)).toFixed(3)}%) codes ${JSON.stringify(c.codes)}`,
      );
      for (const w of why.slice(0, 8)) console.log(`    ${w}`);
    }
  } finally {
    await gw?.stop().catch(() => undefined);
    await lab.destroy();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack : err);
  process.exitCode = 1;
});

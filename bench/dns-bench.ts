/**
 * `sudo npm run bench:dns`: dnsperf (from the client namespace) against
 * transgate's DNS gateway and, in the same lab run, against dnsmasq as a
 * plain caching forwarder on the gateway, both forwarding to the same
 * upstream dnsmasq. Prints queries/s for cache hits and cache misses and
 * the ratio transgate / dnsmasq; also transgate with its per-client rate
 * limiter on (at a rate it never reaches: its cost), its proxy path (DNS
 * over TCP through squid), and what caching the TPROXY reply sockets saves.
 * `node dist/bench/dns-load.js` is the fixed-rate run that counts SERVFAILs.
 *
 * Knobs: BENCH_DNS_SECONDS (per run, default 5), BENCH_DNS_OUTSTANDING
 * (dnsperf -q, default 100).
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import * as native from '../src/native/index';
import { ADDR, DNS_ADDR, type Gw, Lab } from '../test/e2e/lab';

const SECONDS = Number(process.env.BENCH_DNS_SECONDS ?? 5) || 5;
const OUTSTANDING = Number(process.env.BENCH_DNS_OUTSTANDING ?? 100) || 100;
const GW_LAN = ADDR.gwLan.v4;
const FORWARDER_PORT = 5300;
/** Rounds of limiter off / on (BENCH_DNS_LIMITER_ROUNDS). */
const LIMITER_ROUNDS = Number(process.env.BENCH_DNS_LIMITER_ROUNDS ?? 3) || 3;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

interface Result {
  qps: number;
  lost: string;
  latency: string;
}

function parseDnsperf(out: string): Result {
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const lost = /Queries lost:\s+(.*)/.exec(out)?.[1]?.trim() ?? '?';
  const latency = /Average Latency \(s\):\s+([\d.]+)/.exec(out)?.[1] ?? '?';
  if (!Number.isFinite(qps)) throw new Error(`dnsperf printed no rate:\n${out}`);
  return { qps, lost, latency };
}

async function dnsperf(lab: Lab, server: string, port: number, file: string, tcp = false): Promise<Result> {
  const r = await lab.exec(
    'cl',
    [
      'dnsperf',
      '-s',
      server,
      '-p',
      String(port),
      '-d',
      file,
      '-l',
      String(SECONDS),
      '-q',
      String(OUTSTANDING),
      '-t',
      '2',
      ...(tcp ? ['-m', 'tcp'] : []),
    ],
    { timeoutMs: (SECONDS + 30) * 1000 },
  );
  if (r.code !== 0) throw new Error(`dnsperf failed (${r.code}): ${r.stderr}\n${r.stdout}`);
  return parseDnsperf(r.stdout);
}

/** Query files: a few names over and over (hits once warm), and unique names (every query a miss). */
function queryFiles(dir: string): { hits: string; misses: string } {
  const hits = path.join(dir, 'hits.txt');
  const misses = path.join(dir, 'misses.txt');
  fs.writeFileSync(hits, Array.from({ length: 100 }, (_, i) => `hit${i % 10}.example.test A`).join('\n') + '\n');
  const n = 400_000;
  const lines = new Array<string>(n);
  for (let i = 0; i < n; i++) lines[i] = `m${i}.r${process.pid}.example.test A`;
  fs.writeFileSync(misses, lines.join('\n') + '\n');
  fs.chmodSync(hits, 0o644);
  fs.chmodSync(misses, 0o644);
  return { hits, misses };
}

/** Time per answer for a reply socket opened and closed each time vs one kept open (loopback, this process). */
async function replySocketCost(): Promise<{ perReplyUs: number; cachedUs: number }> {
  const sink = dgram.createSocket('udp4');
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
  sink.on('message', () => undefined);
  const to = sink.address().port;
  const data = Buffer.alloc(60);
  const n = 20_000;
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const fd = native.udpReplySocket('127.0.0.2', 53000);
    native.udpSend(fd, data, '127.0.0.1', to);
    fs.closeSync(fd);
    if (i % 500 === 0) await new Promise((r) => setImmediate(r));
  }
  const perReplyUs = Number(process.hrtime.bigint() - t0) / 1000 / n;
  const fd = native.udpReplySocket('127.0.0.2', 53000);
  t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    native.udpSend(fd, data, '127.0.0.1', to);
    if (i % 500 === 0) await new Promise((r) => setImmediate(r));
  }
  const cachedUs = Number(process.hrtime.bigint() - t0) / 1000 / n;
  fs.closeSync(fd);
  sink.close();
  return { perReplyUs, cachedUs };
}

async function main(): Promise<void> {
  const lab = await Lab.create();
  const rows: Array<[string, Result, Result]> = [];
  let gw: Gw | undefined;
  try {
    await lab.startDnsServers();
    const files = queryFiles(lab.dir);
    const upstream = DNS_ADDR.private.v4; // reachable from gw directly: both contenders forward there

    // transgate, direct to the upstream (the like-for-like comparison with a
    // forwarder). dnsperf is one client: --dns-client-rate 0, or the
    // per-client limit (default 1000/s) would be what is measured.
    const direct = ['--dns-over-tcp-disabled', '--public-dns', upstream, '--dns-cache-size', '100000'];
    gw = await lab.startGateway([...direct, '--dns-client-rate', '0'], {});
    await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits); // warm
    rows.push([
      'transgate (udp, direct)',
      await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits),
      await dnsperf(lab, DNS_ADDR.public.v4, 53, files.misses),
    ]);
    await gw.stop();
    gw = undefined;

    // The per-client token bucket off and on (at a rate it never reaches:
    // what the limiter itself costs per query), in alternating rounds so
    // that load from elsewhere on the machine falls on both alike.
    const limiter: Record<'off' | 'on', number[]> = { off: [], on: [] };
    for (let round = 0; round < LIMITER_ROUNDS; round++) {
      for (const which of ['off', 'on'] as const) {
        gw = await lab.startGateway([...direct, '--dns-client-rate', which === 'off' ? '0' : '10000000'], {});
        await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits);
        limiter[which].push((await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits)).qps);
        await gw.stop();
        gw = undefined;
      }
    }

    // transgate through squid: DNS over pipelined TCP tunnels to the public server.
    gw = await lab.startGateway(['--dns-cache-size', '100000', '--dns-client-rate', '0'], {
      http_proxy: ADDR.proxyUrl,
      https_proxy: ADDR.proxyUrl,
    });
    await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits);
    rows.push([
      'transgate (udp, via proxy)',
      await dnsperf(lab, DNS_ADDR.public.v4, 53, files.hits),
      await dnsperf(lab, DNS_ADDR.public.v4, 53, files.misses),
    ]);
    await gw.stop();
    gw = undefined;

    // dnsmasq as a plain caching forwarder on the gateway's LAN address.
    const d = path.join(lab.dir, 'dns');
    lab.spawn(
      'gw',
      [
        'dnsmasq',
        '-k',
        '--conf-file=/dev/null',
        '--no-resolv',
        '--no-hosts',
        '--user=root',
        '--group=root',
        `--pid-file=${path.join(d, 'forwarder.pid')}`,
        '--bind-interfaces',
        `--listen-address=${GW_LAN}`,
        `--port=${FORWARDER_PORT}`,
        `--server=${upstream}`,
        '--cache-size=100000',
        '--dns-forward-max=1000',
      ],
      { logFile: path.join(d, 'forwarder.stderr') },
    );
    await new Promise((r) => setTimeout(r, 500));
    await dnsperf(lab, GW_LAN, FORWARDER_PORT, files.hits);
    rows.push([
      'dnsmasq forwarder',
      await dnsperf(lab, GW_LAN, FORWARDER_PORT, files.hits),
      await dnsperf(lab, GW_LAN, FORWARDER_PORT, files.misses),
    ]);

    const cost = await replySocketCost();

    const pad = (s: string, n: number): string => s.padEnd(n);
    console.log(`\nDNS bench: dnsperf -l ${SECONDS} -q ${OUTSTANDING} from the client namespace\n`);
    console.log(`${pad('variant', 30)}${pad('hits q/s', 14)}${pad('misses q/s', 14)}hits lost / misses lost`);
    for (const [name, h, m] of rows) {
      console.log(`${pad(name, 30)}${pad(h.qps.toFixed(0), 14)}${pad(m.qps.toFixed(0), 14)}${h.lost} / ${m.lost}`);
    }
    const tg = rows[0]!;
    const dm = rows.find((r) => r[0] === 'dnsmasq forwarder')!;
    console.log(
      `cache hits, per-client limiter off: ${limiter.off.map((q) => q.toFixed(0)).join(' ')} q/s; on: ${limiter.on.map((q) => q.toFixed(0)).join(' ')} q/s; ` +
        `median on/off ${(median(limiter.on) / median(limiter.off)).toFixed(3)}`,
    );
    console.log(`\nratio transgate/dnsmasq: hits ${(tg[1].qps / dm[1].qps).toFixed(2)}, misses ${(tg[2].qps / dm[2].qps).toFixed(2)}`);
    console.log(
      `TPROXY reply socket: opened per answer ${cost.perReplyUs.toFixed(1)} us, cached ${cost.cachedUs.toFixed(1)} us per answer`,
    );
    const out = path.join(process.cwd(), 'bench-results');
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(
      path.join(out, `dns-bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
      JSON.stringify(
        {
          seconds: SECONDS,
          outstanding: OUTSTANDING,
          rows: rows.map(([name, hits, misses]) => ({ name, hits, misses })),
          limiter,
          replySocket: cost,
        },
        null,
        2,
      ),
    );
  } finally {
    await gw?.stop().catch(() => undefined);
    await lab.destroy();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack : err);
  process.exitCode = 1;
});

/**
 * `sudo npm run bench`: transgate against redsocks and against the client
 * using the proxy itself, side by side, in one namespace lab (test/e2e/lab.ts)
 * with the same squid upstream. Prints a table and the target ratios and
 * writes bench-results/bench-<time>.json.
 *
 * Variants (each on its own, one after another):
 *   transgate          --relay splice (the default)
 *   transgate-js       --relay js
 *   redsocks           Debian's redsocks, http-connect, nat REDIRECT, its defaults
 *                      (which splice: two pipes per connection)
 *   redsocks-copy      the same with `splice = off` (its read/write pump)
 *   explicit           no gateway: curl -x / hey -x / CONNECT from the client (the limit)
 * and, without squid, straight to the intranet nginx in `up`:
 *   transgate-direct   no_proxy: the gateway dials the server itself
 *   forward            no gateway process: kernel forwarding (the limit)
 *
 * Workloads, in each round of each variant: one and BENCH_PARALLEL downloads
 * of the large file and BENCH_CONN_REQUESTS short requests without keep-alive,
 * first over TLS (CONNECT, port 443: the native path), then the same over
 * plain HTTP on port 80 (transgate's HTTP path: each request rewritten to
 * absolute form for squid; redsocks: REDIRECT and CONNECT to port 80; the
 * explicit client: an absolute-form GET to squid); then latency and held
 * connections (TCP, port 5001). The direct variants have no port-80 row of
 * their own: their main workloads are already plain HTTP to the intranet
 * server, relayed as TCP.
 *
 * Gateway CPU is utime+stime from /proc/<pid>/stat around each workload;
 * RSS is VmRSS from /proc/<pid>/status.
 *
 * Knobs (environment): BENCH_ONLY=transgate,redsocks (variants to run), BENCH_ROUNDS,
 * BENCH_FILE_MIB, BENCH_PARALLEL, BENCH_CONN_REQUESTS, BENCH_CONN_CONCURRENCY, BENCH_CONN_WARMUP,
 * BENCH_LATENCY_SAMPLES, BENCH_IDLE, BENCH_CPU_PROF=DIR for V8 CPU
 * profiles of the transgate runs (bench/profiled-gateway.ts),
 * BENCH_BASE=DIR: one more variant, transgate-base, the gateway of another
 * built checkout (an A/B of a change within one run), and
 * BENCH_PERF=DIR: `perf record -g` of the gateway process (any variant)
 * during each workload, one file per variant, workload and round.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ADDR, type Gw, Lab } from '../test/e2e/lab';

const MIB = 1 << 20;
const GIB = 1 << 30;
const opt = (name: string, dflt: number): number => {
  const v = process.env[`BENCH_${name}`];
  return v && /^\d+$/.test(v) ? Number(v) : dflt;
};
/** Sizes can be lowered for a quick run (BENCH_FILE_MIB=64 ...). */
const FILE_MIB = opt('FILE_MIB', 256);
const PARALLEL = opt('PARALLEL', 8);
const CONN_REQUESTS = opt('CONN_REQUESTS', 2000);
const CONN_CONCURRENCY = opt('CONN_CONCURRENCY', 16);
/** What hey sends for -n CONN_REQUESTS: each of its -c workers makes n/c requests, rounded down. */
const CONN_SENT = Math.floor(CONN_REQUESTS / CONN_CONCURRENCY) * CONN_CONCURRENCY;
/**
 * Connections opened before the measured connection workload, in every
 * variant: the steady state of a gateway that runs for days, not its first
 * second. Without it a fresh Node process spends about 8% of the measured
 * CPU compiling its hot functions (perf: V8's optimizing compile tasks).
 */
const CONN_WARMUP = opt('CONN_WARMUP', 2000);
const LATENCY_SAMPLES = opt('LATENCY_SAMPLES', 300);
/**
 * Each variant runs this many times, the variants taking turns, and the
 * table shows the median of each figure: on a shared 2-CPU host one run
 * varies by ±20%, and taking turns spreads slow spells over all variants.
 */
const ROUNDS = Math.max(1, opt('ROUNDS', 3));
/**
 * Held idle connections. Each costs the gateway two descriptors (client and
 * upstream) and squid two; this host's hard RLIMIT_NOFILE is read below and
 * the count is capped to fit under it.
 */
const IDLE_WANTED = opt('IDLE', 10_000);
const IDLE_SETTLE_MS = opt('IDLE_SETTLE_MS', 8000);
const ECHO_PORT = 5001;
const REDSOCKS_PORT = 12345;
const O4 = ADDR.origin.v4;
const INTRA = ADDR.intranet.v4;
const PROXY = { host: ADDR.proxy.v4, port: ADDR.proxy.port };

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function cpuTicks(pid: number): number {
  const [user, sys] = cpuSplit(pid);
  return user + sys;
}

/** [utime, stime] in clock ticks (fields 14 and 15 of /proc/<pid>/stat). */
function cpuSplit(pid: number): [number, number] {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which may contain spaces and ends with ')'.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return [Number(f[11]), Number(f[12])];
}

/** [busy, total] jiffies of the whole host (all CPUs), from /proc/stat. */
function hostCpu(): [number, number] {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return [total - idle, total];
}

/** Context switches of the process's main thread (where an event loop runs): how often it slept and woke. */
function ctxtSwitches(pid: number): number {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const v = /voluntary_ctxt_switches:\s+(\d+)/.exec(st);
  return v ? Number(v[1]) : NaN;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function hardNofile(): number {
  const m = /Max open files\s+\d+\s+(\d+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return m ? Number(m[1]) : 1024;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Result {
  variant: string;
  /** The port-80 (plain HTTP) workloads: the same figures as bulk1MBps ... connHostBusy, over http://. */
  http1MBps?: number;
  httpNMBps?: number;
  httpCpuSecPerGiB?: number;
  httpCpuSecPerGiB1?: number;
  httpCpuSecPerGiBN?: number;
  httpConnsPerSec?: number;
  httpCpuUsPerConn?: number;
  httpConnErrors?: number;
  httpConnCpuUserShare?: number;
  httpConnHostBusy?: number;
  bulk1MBps?: number;
  bulkNMBps?: number;
  cpuSecPerGiB?: number;
  /** The same for the single download and for the parallel ones. */
  cpuSecPerGiB1?: number;
  cpuSecPerGiBN?: number;
  /** Voluntary context switches of the gateway's loop thread per MiB relayed (8 parallel downloads): its wake-ups. */
  wakeupsPerMiBN?: number;
  connsPerSec?: number;
  cpuUsPerConn?: number;
  connErrors?: number;
  /** Share of the per-connection CPU spent in user space (the rest is the kernel's). */
  connCpuUserShare?: number;
  /** How busy the whole host was during the single download (0..1). */
  bulk1HostBusy?: number;
  /** How busy the whole host was during the connection workload (0..1): near 1, conn/s is bound by CPU. */
  connHostBusy?: number;
  latencyP50Ms?: number;
  latencyP99Ms?: number;
  rssIdleMiB?: number;
  rssHeldMiB?: number;
  /** RSS one second after the idle connections were opened (rssHeldMiB: after IDLE_SETTLE_MS more). */
  rssHeldBurstMiB?: number;
  /** RSS just before the idle connections were opened (after the other workloads). */
  rssBeforeHeldMiB?: number;
  held?: number;
  notes: string[];
}

/** What a variant changes: how the client reaches the target and which process is the gateway. */
interface Variant {
  name: string;
  /** Upstream squid in the path. */
  squid: boolean;
  /** Sets up the gateway; returns its pid (undefined: no gateway process). */
  start(): Promise<number | undefined>;
  stop(): Promise<void>;
  /** Extra client arguments: curl -x / hey -x for the explicit variant. */
  explicit: boolean;
  /** Runs the port-80 workloads (the variants with squid; see the header). */
  http80: boolean;
}

/** Which of the two workload sets: TLS on port 443, or plain HTTP on port 80. */
type Proto = 'tls' | 'http';

class Bench {
  private gw: Gw | undefined;
  private redsocks: ChildProcess | undefined;
  readonly idleCount: number;

  constructor(
    readonly lab: Lab,
    readonly probe: string,
  ) {
    // Gateway and squid each hold 2 fds per idle connection, plus their own (~100 with headroom).
    this.idleCount = Math.min(IDLE_WANTED, Math.floor((hardNofile() - 300) / 2));
  }

  variants(): Variant[] {
    const lab = this.lab;
    const proxyEnv = { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl };
    const transgate = (name: string, relay: string, direct: boolean, checkout?: string): Variant => ({
      name,
      squid: !direct,
      explicit: false,
      http80: !direct,
      start: async () => {
        const args = ['--mode', 'tproxy', '--relay', relay];
        // Direct: port 80 is carried as plain TCP (the relay path), straight to the intranet server.
        args.push(...(direct ? ['--http-ports', '', '-tcp-proxy-dports', '80'] : ['-tcp-proxy-dports', `22,${ECHO_PORT}`]));
        // The bench is one client holding ~10k connections: no per-client cap (another checkout may not know the flag).
        if (!checkout) args.push('--max-conns-per-client', '0');
        const env: Record<string, string> = direct ? { ...proxyEnv, no_proxy: INTRA } : { ...proxyEnv };
        // BENCH_CPU_PROF=DIR: a V8 CPU profile of each transgate run, written when it exits.
        const prof = process.env['BENCH_CPU_PROF'];
        if (prof) {
          fs.mkdirSync(prof, { recursive: true });
          env['TRANSGATE_CPU_PROF'] = path.resolve(prof, `${name}-${Date.now()}.cpuprofile`);
        }
        // BENCH_GW_NODE_OPTIONS: NODE_OPTIONS for the gateway (e.g. --max-semi-space-size=1).
        if (process.env['BENCH_GW_NODE_OPTIONS']) env['NODE_OPTIONS'] = process.env['BENCH_GW_NODE_OPTIONS'];
        for (const k of ['TRANSGATE_MEM_LOG', 'TRANSGATE_HEAP_SNAPSHOT', 'TRANSGATE_V8_FLAGS'])
          if (process.env[k]) env[k] = process.env[k]!;
        const wrapped = prof || env['TRANSGATE_MEM_LOG'] || env['TRANSGATE_HEAP_SNAPSHOT'] || env['TRANSGATE_V8_FLAGS'];
        // Its log goes to a file, as redsocks' does: no CPU of the harness per log line.
        // Another checkout's gateway, run as its bin would run it (the shebang's flag).
        if (checkout) env['NODE_OPTIONS'] = `--max-semi-space-size=1 ${env['NODE_OPTIONS'] ?? ''}`.trim();
        const script = checkout
          ? path.resolve(checkout, 'bin', 'transgate.js')
          : wrapped
            ? path.join(__dirname, 'profiled-gateway.js')
            : undefined;
        this.gw = await lab.startGateway(args, env, { logToFile: true, ...(script ? { script } : {}) });
        await this.gw.waitFor(new RegExp(`\\brelay ${relay}\\b`), 3000);
        return this.gw.pid;
      },
      stop: async () => {
        if (process.env['TRANSGATE_MEM_LOG']) for (const l of this.gw?.lines ?? []) if (/\bmem rss=/.test(l)) console.log(l);
        await this.gw?.stop('SIGTERM', 5000).catch(() => this.gw?.kill9());
        this.gw = undefined;
      },
    });
    const redsocks = (name: string, copy: boolean): Variant => ({
      name,
      squid: true,
      explicit: false,
      http80: true,
      start: () => this.startRedsocks(copy),
      stop: () => this.stopRedsocks(),
    });
    // No gateway process: the gw namespace only forwards, with source NAT
    // because `up` has no route back to the clients' network.
    const nat =
      'table ip tgbench_nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname "wan0" masquerade\n }\n}\n';
    // The gateway variants leave transparent TIME_WAIT sockets in gw for
    // (client port -> intranet server :80). A forwarded SYN with the same
    // addresses and ports gets one attached by early demux, and forwarding
    // drops packets that carry a socket: downloads stalled 63 s (six SYN
    // retransmits), never when forward ran alone. Its clients take ports the
    // other variants do not use.
    const ports = (range: string) => lab.exec('cl', ['sysctl', '-qw', `net.ipv4.ip_local_port_range=${range}`]);
    const none = (name: string, squid: boolean, explicit: boolean): Variant => ({
      name,
      squid,
      explicit,
      http80: squid,
      start: async () => {
        if (!squid) await ports('61000 64999');
        const r = await lab.exec('gw', ['nft', '-f', '-'], { input: nat });
        if (r.code !== 0) throw new Error(`masquerade rule: ${r.stderr}`);
        return undefined;
      },
      stop: async () => {
        await lab.exec('gw', ['nft', 'delete', 'table', 'ip', 'tgbench_nat']);
        if (!squid) await ports('32768 60999');
      },
    });
    return [
      transgate('transgate', 'splice', false),
      ...(process.env['BENCH_BASE'] ? [transgate('transgate-base', 'splice', false, process.env['BENCH_BASE'])] : []),
      transgate('transgate-js', 'js', false),
      redsocks('redsocks', false),
      redsocks('redsocks-copy', true),
      none('explicit', true, true),
      transgate('transgate-direct', 'splice', true),
      none('forward', false, false),
    ];
  }

  private async startRedsocks(copy: boolean): Promise<number> {
    const dir = fs.mkdtempSync(path.join(this.lab.dir, 'redsocks-'));
    fs.chmodSync(dir, 0o755);
    const conf = path.join(dir, 'redsocks.conf');
    fs.writeFileSync(
      conf,
      [
        'base {',
        '  log_debug = off;',
        '  log_info = on;',
        `  log = "file:${dir}/redsocks.log";`,
        '  daemon = off;',
        '  redirector = iptables;',
        `  rlimit_nofile = ${hardNofile()};`,
        `  redsocks_conn_max = ${this.idleCount + 100};`,
        '}',
        'redsocks {',
        '  local_ip = 0.0.0.0;',
        `  local_port = ${REDSOCKS_PORT};`,
        `  ip = ${PROXY.host};`,
        `  port = ${PROXY.port};`,
        '  type = http-connect;',
        // Debian's redsocks splices by default (when the kernel supports it); copy turns it off.
        ...(copy ? ['  splice = off;'] : []),
        '}',
        '',
      ].join('\n'),
    );
    const rules = [
      'table ip tgbench_redsocks {',
      '  chain pre {',
      '    type nat hook prerouting priority dstnat; policy accept;',
      // Port 80 too: redsocks CONNECTs to the original address and port (the lab's squid allows CONNECT to any port).
      `    iifname "lan0" ip daddr ${O4} tcp dport { 22, 80, 443, ${ECHO_PORT} } redirect to :${REDSOCKS_PORT}`,
      '  }',
      '}',
      '',
    ].join('\n');
    const r = await this.lab.exec('gw', ['nft', '-f', '-'], { input: rules });
    if (r.code !== 0) throw new Error(`redsocks rules: ${r.stderr}`);
    this.redsocks = this.lab.spawn('gw', ['redsocks', '-c', conf], { logFile: path.join(dir, 'stderr.log') });
    for (let i = 0; i < 100; i++) {
      if ((await this.lab.listening('gw')).includes(`0.0.0.0:${REDSOCKS_PORT}`)) return this.redsocks.pid!;
      await sleep(50);
    }
    throw new Error(`redsocks did not start: ${fs.readFileSync(path.join(dir, 'stderr.log'), 'utf8')}`);
  }

  private async stopRedsocks(): Promise<void> {
    await this.lab.exec('gw', ['nft', 'delete', 'table', 'ip', 'tgbench_redsocks']);
    const p = this.redsocks;
    this.redsocks = undefined;
    if (p && p.exitCode === null && p.signalCode === null) {
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await Promise.race([gone, sleep(3000)]);
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
  }

  private bulkUrl(v: Variant, proto: Proto): string {
    if (!v.squid) return `http://${INTRA}/files/large.bin`;
    return proto === 'http' ? 'http://www.example.test/files/large.bin' : 'https://www.example.test/files/large.bin';
  }

  private curlArgs(v: Variant, proto: Proto): string {
    if (v.explicit) return proto === 'http' ? `-x ${ADDR.proxyUrl}` : `-x ${ADDR.proxyUrl} --cacert ${this.lab.caFile}`;
    if (!v.squid) return '';
    // The client resolves the name to the origin (as its DNS would); the gateway sees the name in SNI or Host.
    return proto === 'http' ? `--resolve www.example.test:80:${O4}` : `--cacert ${this.lab.caFile} --resolve www.example.test:443:${O4}`;
  }

  /** N parallel downloads of the large file; returns aggregate MB/s and gateway CPU seconds. */
  private async bulk(
    v: Variant,
    pid: number | undefined,
    n: number,
    proto: Proto,
  ): Promise<{ mbps: number; cpuSec: number; bytes: number; hostBusy: number; wakeups: number }> {
    const one = `curl -sS --fail -o /dev/null -w '%{size_download}\\n' --max-time 120 ${this.curlArgs(v, proto)} ${this.bulkUrl(v, proto)}`;
    const script = Array.from({ length: n }, () => `${one} &`).join('\n') + '\nwait\n';
    const perf = await this.perfStart(v, pid, `${proto === 'http' ? 'http' : ''}bulk${n}`);
    const c0 = pid ? cpuTicks(pid) : 0;
    const w0 = pid ? ctxtSwitches(pid) : NaN;
    const h0 = hostCpu();
    const t0 = process.hrtime.bigint();
    const r = await this.lab.exec('cl', ['sh', '-c', script], { timeoutMs: 180_000 });
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const h1 = hostCpu();
    const cpuSec = pid ? (cpuTicks(pid) - c0) / CLK_TCK : NaN;
    const wakeups = pid ? ctxtSwitches(pid) - w0 : NaN;
    await perf?.();
    const sizes = r.stdout.split('\n').filter(Boolean).map(Number);
    const bytes = sizes.reduce((a, b) => a + b, 0);
    if (sizes.length !== n || sizes.some((s) => s !== FILE_MIB * MIB)) {
      throw new Error(`${v.name}: ${proto} bulk x${n} incomplete (${sizes.join(',')}): ${r.stderr.slice(0, 500)}`);
    }
    return { mbps: bytes / MIB / secs, cpuSec, bytes, hostBusy: (h1[0] - h0[0]) / (h1[1] - h0[1]), wakeups };
  }

  private async conns(
    v: Variant,
    pid: number | undefined,
    proto: Proto,
  ): Promise<{ perSec: number; cpuUsPerConn: number; errors: number; userShare: number; hostBusy: number }> {
    const url = !v.squid ? `http://${INTRA}/` : proto === 'http' ? `http://${O4}/` : `https://${O4}/`;
    const hey = (n: number) => [
      'hey',
      '-n',
      String(n),
      '-c',
      String(CONN_CONCURRENCY),
      '-disable-keepalive',
      '-t',
      '10',
      ...(v.explicit ? ['-x', ADDR.proxyUrl] : []),
      url,
    ];
    if (CONN_WARMUP > 0) await this.lab.exec('cl', hey(CONN_WARMUP), { timeoutMs: 180_000 });
    const args = hey(CONN_REQUESTS);
    const perf = await this.perfStart(v, pid, `${proto === 'http' ? 'http' : ''}conns`);
    const c0 = pid ? cpuSplit(pid) : [0, 0];
    const h0 = hostCpu();
    const r = await this.lab.exec('cl', args, { timeoutMs: 180_000 });
    const h1 = hostCpu();
    const c1 = pid ? cpuSplit(pid) : [NaN, NaN];
    await perf?.();
    const cpu = (c1[0]! - c0[0]! + c1[1]! - c0[1]!) / CLK_TCK;
    const userShare = (c1[0]! - c0[0]!) / (c1[0]! - c0[0]! + c1[1]! - c0[1]!);
    const rps = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
    const ok = /\[200\]\s+(\d+) responses/.exec(r.stdout);
    if (!rps) throw new Error(`${v.name}: ${proto} hey printed no rate: ${r.stdout.slice(-800)} ${r.stderr.slice(0, 400)}`);
    const okCount = ok ? Number(ok[1]) : 0;
    const hostBusy = (h1[0] - h0[0]) / (h1[1] - h0[1]);
    return { perSec: Number(rps[1]), cpuUsPerConn: (cpu * 1e6) / CONN_SENT, errors: CONN_SENT - okCount, userShare, hostBusy };
  }

  /** BENCH_PERF=DIR: perf record of the gateway until the returned function is called. */
  private async perfStart(v: Variant, pid: number | undefined, workload: string): Promise<(() => Promise<void>) | undefined> {
    const dir = process.env['BENCH_PERF'];
    if (!dir || !pid) return undefined;
    fs.mkdirSync(dir, { recursive: true });
    const out = path.resolve(dir, `${v.name}-${workload}-${Date.now()}.data`);
    const child = spawn('perf', ['record', '-q', '-g', '-e', 'cpu-clock', '-F', '4000', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
    await sleep(300); // attached
    return () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGINT');
      });
  }

  private probeArgs(v: Variant, mode: string, n: number): string[] {
    const args = [process.execPath, this.probe, mode, O4, String(ECHO_PORT), String(n)];
    if (v.explicit) args.push(PROXY.host, String(PROXY.port));
    return args;
  }

  private async latency(v: Variant): Promise<{ p50: number; p99: number }> {
    const r = await this.lab.exec('cl', this.probeArgs(v, 'latency', LATENCY_SAMPLES), { timeoutMs: 120_000 });
    const out = JSON.parse(r.stdout.trim() || '{}') as { samplesMs?: number[]; failed?: number };
    if (!out.samplesMs || out.failed) throw new Error(`${v.name}: latency probe: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
    const s = out.samplesMs.sort((a, b) => a - b);
    return { p50: percentile(s, 50), p99: percentile(s, 99) };
  }

  /** Opens idleCount connections through the gateway, reads its RSS, closes them. */
  private async held(v: Variant, pid: number): Promise<{ before: number; burst: number; after: number; open: number }> {
    const before = rssMiB(pid);
    const child = this.lab.spawn('cl', this.probeArgs(v, 'idle', this.idleCount), { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const deadline = Date.now() + 120_000;
    while (!out.includes('\n')) {
      if (Date.now() > deadline || child.exitCode !== null)
        throw new Error(`${v.name}: idle probe (exit ${child.exitCode}): ${out} ${err}`);
      await sleep(100);
    }
    const got = JSON.parse(out.trim()) as { open: number; failed: number };
    // RSS right after the burst of connection set-ups, and once the
    // connections have been idle for a while (V8 shrinks its young
    // generation again when allocation stops; that is the steady state).
    await sleep(1000);
    const burst = rssMiB(pid);
    await sleep(IDLE_SETTLE_MS);
    const after = rssMiB(pid);
    if (process.env['TRANSGATE_HEAP_SNAPSHOT']) {
      process.kill(pid, 'SIGUSR2');
      await this.gw?.waitFor(/heap snapshot /, 60_000);
    }
    child.stdin!.end();
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
    // Wait for the gateway to let go of them before the next workload.
    await sleep(1500);
    return { before, burst, after, open: got.open };
  }

  /** One round of a variant; the held connections only when `held` (the last round). */
  async run(v: Variant, held: boolean): Promise<Result> {
    const res: Result = { variant: v.name, notes: [] };
    const pid = await v.start();
    try {
      await sleep(500);
      // RSS at idle is read before any load: what a freshly started gateway holds.
      const rssIdle = pid ? rssMiB(pid) : undefined;
      const b1 = await this.bulk(v, pid, 1, 'tls');
      res.bulk1MBps = b1.mbps;
      res.bulk1HostBusy = b1.hostBusy;
      const bn = await this.bulk(v, pid, PARALLEL, 'tls');
      res.bulkNMBps = bn.mbps;
      if (pid) {
        res.cpuSecPerGiB = (b1.cpuSec + bn.cpuSec) / ((b1.bytes + bn.bytes) / GIB);
        res.cpuSecPerGiB1 = b1.cpuSec / (b1.bytes / GIB);
        res.cpuSecPerGiBN = bn.cpuSec / (bn.bytes / GIB);
        res.wakeupsPerMiBN = bn.wakeups / (bn.bytes / MIB);
      }
      const c = await this.conns(v, pid, 'tls');
      res.connsPerSec = c.perSec;
      res.cpuUsPerConn = pid ? c.cpuUsPerConn : undefined;
      res.connErrors = c.errors;
      if (pid) res.connCpuUserShare = c.userShare;
      res.connHostBusy = c.hostBusy;
      if (c.errors) res.notes.push(`${c.errors} of ${CONN_SENT} TLS requests failed`);
      if (v.http80) {
        const h1 = await this.bulk(v, pid, 1, 'http');
        const hn = await this.bulk(v, pid, PARALLEL, 'http');
        res.http1MBps = h1.mbps;
        res.httpNMBps = hn.mbps;
        if (pid) {
          res.httpCpuSecPerGiB = (h1.cpuSec + hn.cpuSec) / ((h1.bytes + hn.bytes) / GIB);
          res.httpCpuSecPerGiB1 = h1.cpuSec / (h1.bytes / GIB);
          res.httpCpuSecPerGiBN = hn.cpuSec / (hn.bytes / GIB);
        }
        const hc = await this.conns(v, pid, 'http');
        res.httpConnsPerSec = hc.perSec;
        res.httpCpuUsPerConn = pid ? hc.cpuUsPerConn : undefined;
        res.httpConnErrors = hc.errors;
        if (pid) res.httpConnCpuUserShare = hc.userShare;
        res.httpConnHostBusy = hc.hostBusy;
        if (hc.errors) res.notes.push(`${hc.errors} of ${CONN_SENT} port-80 requests failed`);
      }
      if (v.squid) {
        const l = await this.latency(v);
        res.latencyP50Ms = l.p50;
        res.latencyP99Ms = l.p99;
      }
      // Last: a gateway that runs out of descriptors here must not spoil the other workloads.
      if (held && pid && v.squid) {
        const h = await this.held(v, pid);
        res.rssIdleMiB = rssIdle;
        res.rssHeldMiB = h.after;
        res.rssHeldBurstMiB = h.burst;
        res.rssBeforeHeldMiB = h.before;
        res.held = h.open;
        if (h.open < this.idleCount) res.notes.push(`${this.idleCount - h.open} of ${this.idleCount} idle connections failed`);
      }
    } finally {
      await v.stop();
    }
    return res;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The rounds of one variant as one row: the median of each figure, notes of every round. */
function combine(variant: string, rounds: Result[]): Result {
  const out: Result = { variant, notes: rounds.flatMap((r) => r.notes) };
  const keys = new Set(rounds.flatMap((r) => Object.keys(r))) as Set<keyof Result>;
  for (const k of keys) {
    if (k === 'variant' || k === 'notes') continue;
    const xs = rounds.map((r) => r[k]).filter((x): x is number => typeof x === 'number' && !Number.isNaN(x));
    if (xs.length > 0) (out as unknown as Record<string, number>)[k] = median(xs);
  }
  return out;
}

const fmt = (n: number | undefined, digits = 1): string => (n === undefined || Number.isNaN(n) ? '-' : n.toFixed(digits));

function table(results: Result[]): string {
  const head = [
    'variant',
    '1x MB/s',
    `${PARALLEL}x MB/s`,
    'CPU s/GiB',
    'conn/s',
    'CPU µs/conn',
    'host busy',
    'p50 ms',
    'p99 ms',
    'RSS idle MiB',
    'RSS +held MiB',
    'held',
  ];
  const rows = results.map((r) => [
    r.variant,
    fmt(r.bulk1MBps, 0),
    fmt(r.bulkNMBps, 0),
    fmt(r.cpuSecPerGiB, 2),
    fmt(r.connsPerSec, 0),
    fmt(r.cpuUsPerConn, 0),
    r.connHostBusy === undefined ? '-' : `${Math.round(r.connHostBusy * 100)}%`,
    fmt(r.latencyP50Ms, 2),
    fmt(r.latencyP99Ms, 2),
    fmt(r.rssIdleMiB),
    r.rssHeldMiB === undefined || r.rssBeforeHeldMiB === undefined ? '-' : fmt(r.rssHeldMiB - r.rssBeforeHeldMiB),
    r.held === undefined ? '-' : String(r.held),
  ]);
  return markdown(head, rows);
}

/** The port-80 (plain HTTP) workloads, one row per variant that ran them. */
function httpTable(results: Result[]): string {
  const head = ['variant, port 80', '1x MB/s', `${PARALLEL}x MB/s`, 'CPU s/GiB', 'conn/s', 'CPU µs/conn', 'host busy'];
  const rows = results
    .filter((r) => r.http1MBps !== undefined)
    .map((r) => [
      r.variant,
      fmt(r.http1MBps, 0),
      fmt(r.httpNMBps, 0),
      fmt(r.httpCpuSecPerGiB, 2),
      fmt(r.httpConnsPerSec, 0),
      fmt(r.httpCpuUsPerConn, 0),
      r.httpConnHostBusy === undefined ? '-' : `${Math.round(r.httpConnHostBusy * 100)}%`,
    ]);
  return markdown(head, rows);
}

function markdown(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  return [
    line(head),
    '|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 1) + '-' : '-'.repeat(w + 1) + ':')).join('|') + '|',
    ...rows.map(line),
  ].join('\n');
}

interface Ratio {
  name: string;
  value: number;
  target: string;
  ok: boolean;
  /** The same ratio within each round. */
  perRound?: number[];
}

function ratios(results: Result[], rounds: Map<string, Result[]>): Ratio[] {
  const by = (n: string) => results.find((r) => r.variant === n);
  const t = by('transgate');
  const out: Ratio[] = [];
  // The ratio of the medians, and the ratio within each round (the two
  // variants ran minutes apart there): its spread is the run's noise.
  const add = (name: string, key: keyof Result, other: string, target: string, ok: (x: number) => boolean) => {
    const a = t?.[key];
    const b = by(other)?.[key];
    if (typeof a !== 'number' || typeof b !== 'number' || !b) return;
    const mine = rounds.get('transgate') ?? [];
    const theirs = rounds.get(other) ?? [];
    const perRound = mine
      .map((r, i) => [r[key], theirs[i]?.[key]])
      .filter((p): p is [number, number] => typeof p[0] === 'number' && typeof p[1] === 'number' && p[1] !== 0)
      .map(([x, y]) => x / y);
    out.push({ name, value: a / b, target, ok: ok(a / b), perRound });
  };
  add('throughput 1x / redsocks', 'bulk1MBps', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  add(`throughput ${PARALLEL}x / redsocks`, 'bulkNMBps', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  add('CPU per GiB / redsocks', 'cpuSecPerGiB', 'redsocks', '<= 0.8', (x) => x <= 0.8);
  add('CPU per new conn / redsocks', 'cpuUsPerConn', 'redsocks', '<= 1.5', (x) => x <= 1.5);
  add('new conns/s / redsocks', 'connsPerSec', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  add('throughput 1x / explicit', 'bulk1MBps', 'explicit', '>= 0.9', (x) => x >= 0.9);
  add(`throughput ${PARALLEL}x / explicit`, 'bulkNMBps', 'explicit', '>= 0.9', (x) => x >= 0.9);
  // Port 80: transgate's HTTP path against redsocks' CONNECT to port 80; CPU per GiB at par (not 0.8 as for TLS).
  add('port 80 throughput 1x / redsocks', 'http1MBps', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  add(`port 80 throughput ${PARALLEL}x / redsocks`, 'httpNMBps', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  add('port 80 CPU per GiB / redsocks', 'httpCpuSecPerGiB', 'redsocks', '<= 1.0', (x) => x <= 1.0);
  add('port 80 CPU per new conn / redsocks', 'httpCpuUsPerConn', 'redsocks', '<= 1.5', (x) => x <= 1.5);
  add('port 80 new conns/s / redsocks', 'httpConnsPerSec', 'redsocks', '>= 1.0', (x) => x >= 1.0);
  // The explicit client sends the same absolute-form GETs to squid: the limit of the HTTP path (squid's GET relay, not its tunnel).
  add('port 80 throughput 1x / explicit', 'http1MBps', 'explicit', '>= 0.9', (x) => x >= 0.9);
  add(`port 80 throughput ${PARALLEL}x / explicit`, 'httpNMBps', 'explicit', '>= 0.9', (x) => x >= 0.9);
  if (t?.rssHeldMiB !== undefined && t.rssBeforeHeldMiB !== undefined && t.held) {
    const growth = t.rssHeldMiB - t.rssBeforeHeldMiB;
    out.push({
      name: `RSS growth for ${t.held} held conns (MiB)`,
      value: growth,
      target: '<= 40 (per 10,000)',
      ok: (growth * 10_000) / t.held <= 40,
    });
  }
  return out;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root for network namespaces: sudo npm run bench');
    process.exit(1);
  }
  const started = Date.now();
  const probe = path.join(__dirname, 'probe.js');
  console.log(`bench: building the lab with a ${FILE_MIB} MiB file ...`);
  // BENCH_READ_AHEAD_GAP: squid's read_ahead_gap ("default": squid's 16 KB).
  const gap = process.env['BENCH_READ_AHEAD_GAP'] ?? '1 MB';
  const lab = await Lab.create({
    largeFileMiB: FILE_MIB,
    squid: { maxFds: hardNofile(), ...(gap === 'default' ? {} : { readAheadGap: gap }) },
  });
  try {
    // One echo server (not socat's fork per connection) for latency and held connections.
    lab.spawn('in', [
      process.execPath,
      '-e',
      `require('net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(${ECHO_PORT}, '${O4}')`,
    ]);
    for (let i = 0; !(await lab.listening('in')).includes(`${O4}:${ECHO_PORT}`); i++) {
      if (i > 100) throw new Error('echo server did not start');
      await sleep(50);
    }
    const bench = new Bench(lab, probe);
    const only = process.env['BENCH_ONLY']?.split(',');
    const variants = bench.variants().filter((v) => !only || only.includes(v.name));
    const rounds = new Map<string, Result[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const v of variants) {
        const t0 = Date.now();
        process.stdout.write(`bench: round ${round}/${ROUNDS} ${v.name} ... `);
        const r = await bench.run(v, round === ROUNDS);
        rounds.set(v.name, [...(rounds.get(v.name) ?? []), r]);
        console.log(
          `${((Date.now() - t0) / 1000).toFixed(0)} s: ${fmt(r.bulk1MBps, 0)}/${fmt(r.bulkNMBps, 0)} MB/s ` +
            `(host ${Math.round((r.bulk1HostBusy ?? NaN) * 100)}% busy), ${fmt(r.connsPerSec, 0)} conn/s` +
            (r.cpuSecPerGiB !== undefined
              ? `, ${fmt(r.cpuSecPerGiB, 2)} CPU s/GiB (1x ${fmt(r.cpuSecPerGiB1, 2)}, ${PARALLEL}x ${fmt(r.cpuSecPerGiBN, 2)}, ${fmt(r.wakeupsPerMiBN, 1)} wake-ups/MiB), ${fmt(r.cpuUsPerConn, 0)} CPU µs/conn`
              : '') +
            (r.http1MBps !== undefined
              ? `; port 80: ${fmt(r.http1MBps, 0)}/${fmt(r.httpNMBps, 0)} MB/s, ${fmt(r.httpConnsPerSec, 0)} conn/s` +
                (r.httpCpuSecPerGiB !== undefined
                  ? `, ${fmt(r.httpCpuSecPerGiB, 2)} CPU s/GiB (1x ${fmt(r.httpCpuSecPerGiB1, 2)}, ${PARALLEL}x ${fmt(r.httpCpuSecPerGiBN, 2)}), ${fmt(r.httpCpuUsPerConn, 0)} CPU µs/conn`
                  : '')
              : '') +
            (r.notes.length ? ` (${r.notes.join('; ')})` : ''),
        );
      }
    }
    const results = variants.map((v) => combine(v.name, rounds.get(v.name) ?? []));
    const rs = ratios(results, rounds);
    const nofile = hardNofile();
    const meta = {
      date: new Date().toISOString(),
      host: {
        cpus: spawnSync('nproc', { encoding: 'utf8' }).stdout.trim(),
        kernel: spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim(),
        node: process.version,
        nofileHard: nofile,
      },
      params: {
        rounds: ROUNDS,
        fileMiB: FILE_MIB,
        parallel: PARALLEL,
        connRequests: CONN_REQUESTS,
        connWarmup: CONN_WARMUP,
        connConcurrency: CONN_CONCURRENCY,
        latencySamples: LATENCY_SAMPLES,
        idleWanted: IDLE_WANTED,
        idleHeld: bench.idleCount,
      },
      durationS: (Date.now() - started) / 1000,
    };
    console.log('');
    console.log(`median of ${ROUNDS} round${ROUNDS > 1 ? 's' : ''}:`);
    console.log(table(results));
    console.log('');
    console.log(httpTable(results));
    console.log('');
    for (const r of rs) {
      const spread =
        r.perRound && r.perRound.length > 1 ? `; by round ${Math.min(...r.perRound).toFixed(2)}–${Math.max(...r.perRound).toFixed(2)}` : '';
      console.log(`${r.ok ? 'ok  ' : 'MISS'} ${r.name}: ${r.value.toFixed(2)} (target ${r.target}${spread})`);
    }
    if (bench.idleCount < IDLE_WANTED) {
      console.log(
        `note: held ${bench.idleCount} idle connections, not ${IDLE_WANTED}: the hard RLIMIT_NOFILE is ${nofile} and the gateway and squid need 2 fds per connection`,
      );
    }
    const outDir = path.join(lab.repo, 'bench-results');
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `bench-${meta.date.replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify({ meta, results, ratios: rs, rounds: Object.fromEntries(rounds) }, null, 2) + '\n');
    console.log(`\nbench: ${meta.durationS.toFixed(0)} s; results in ${path.relative(process.cwd(), file)}`);
  } finally {
    await lab.destroy();
  }
}

main().catch((err: unknown) => {
  console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});

/**
 * End-to-end lab: four network namespaces wired with veth pairs, real squid,
 * real nginx and socat echo servers, all on TEST-NET addresses.
 *
 *   cl (client) ──eth0/lan0── gw (gateway under test) ──wan0/eth0── up (squid, intranet nginx) ──eth1/eth0── in (origin nginx, echo)
 *
 *   cl  eth0 192.0.2.2/24 2001:db8:1::2/64, default via gw
 *   gw  lan0 192.0.2.1/24 2001:db8:1::1/64, wan0 198.51.100.1/24 2001:db8:2::1/64, no default route, forwarding on
 *   up  eth0 198.51.100.2,.3/24 2001:db8:2::2,::3/64 (squid on .2:3128, intranet nginx on .3:80), eth1 203.0.113.1/24 2001:db8:3::1/64
 *   in  eth0 203.0.113.2/24 2001:db8:3::2/64: nginx :80/:443 (test CA), socat echo :22 and :5000
 *
 * Nothing touches the host's network: the veth pairs are created directly
 * inside the namespaces (`ip -n A link add X type veth peer name Y netns B`),
 * name resolution is done with squid's hosts_file and curl --resolve.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const LAB_PREFIX = 'tge2e';

export type NsRole = 'cl' | 'gw' | 'up' | 'in';
const ROLES: readonly NsRole[] = ['cl', 'gw', 'up', 'in'];

/**
 * What every squid of the lab is given, with its files in `dir`: a name,
 * the pid, logs in one line format (`%un`: the user), no cache, the lab's
 * hosts file for names. Listening ports and access rules come after.
 */
export function squidBaseConf(name: string, dir: string): string[] {
  return [
    `visible_hostname ${name}`,
    `pid_filename ${dir}/squid.pid`,
    `cache_log ${dir}/cache.log`,
    'logformat tg %ts.%03tu %>a %rm %ru %>Hs %<st %un',
    `access_log stdio:${dir}/access.log tg`,
    'buffered_logs off',
    'logfile_rotate 0',
    `coredump_dir ${dir}`,
    'cache deny all',
    'cache_mem 8 MB',
    'netdb_filename none',
    'pinger_enable off',
    'shutdown_lifetime 0 seconds',
    `hosts_file ${dir}/hosts`,
    'dns_nameservers 127.0.0.1',
  ];
}

/** Every address of the lab. */
export const ADDR = {
  client: { v4: '192.0.2.2', v6: '2001:db8:1::2' },
  gwLan: { v4: '192.0.2.1', v6: '2001:db8:1::1' },
  gwWan: { v4: '198.51.100.1', v6: '2001:db8:2::1' },
  proxy: { v4: '198.51.100.2', v6: '2001:db8:2::2', port: 3128 },
  intranet: { v4: '198.51.100.3', v6: '2001:db8:2::3' },
  upInet: { v4: '203.0.113.1', v6: '2001:db8:3::1' },
  origin: { v4: '203.0.113.2', v6: '2001:db8:3::2' },
  /** Names squid resolves through its hosts_file. */
  names: {
    www: 'www.example.test',
    api: 'api.example.test',
    git: 'git.example.test',
    v6: 'v6.example.test',
    intranet: 'intranet.test',
  },
  echoPorts: [22, 5000],
  proxyUrl: 'http://198.51.100.2:3128',
  proxyUrl6: 'http://[2001:db8:2::2]:3128',
  auth: { user: 'alice', password: 's3cr3t p@ss' },
  /** http_proxy URL with the lab's credentials, percent-encoded. */
  proxyUrlAuth: `http://alice:${encodeURIComponent('s3cr3t p@ss')}@198.51.100.2:3128`,
} as const;

/** The DNS servers startDnsServers() adds (not part of the default lab). */
export const DNS_ADDR = {
  /** dnsmasq in `in`: public names; gw reaches it only through squid. */
  public: { v4: '203.0.113.53', v6: '2001:db8:3::53' },
  /** dnsmasq in `up`: private names (corp.test); gw reaches it directly. */
  private: { v4: '198.51.100.53', v6: '2001:db8:2::53' },
  /** unbound's DNS-over-HTTPS port on the origin address (nginx has 443). */
  dohPort: 8443,
  dohUrl: 'https://203.0.113.2:8443/dns-query',
} as const;

export const LAB_HOSTS = [
  `${ADDR.origin.v4} ${ADDR.names.www} ${ADDR.names.api} ${ADDR.names.git} example.test`,
  `${ADDR.origin.v6} ${ADDR.names.v6}`,
  `${ADDR.intranet.v4} ${ADDR.names.intranet}`,
];

export interface SquidOptions {
  /** Require auth (alice / "s3cr3t p@ss"): Basic, or the scheme `authScheme` names. */
  auth?: boolean;
  /**
   * ntlm: squid's ntlm_fake_auth (the NTLM message flow; it accepts any
   * credentials). digest: digest_file_auth with alice's password. Either
   * alone: a squid that offers Basic too takes the gateway's first request
   * (Basic up front) and the scheme would never be used.
   */
  authScheme?: 'basic' | 'ntlm' | 'digest';
  /** Deny CONNECT to ports other than 443 (403), like corporate proxies. */
  connectOnly443?: boolean;
  /** max_filedescriptors (the bench holds thousands of idle tunnels); squid raises its own limit as root. */
  maxFds?: number;
  /**
   * read_ahead_gap: how far squid reads an answer ahead of what the client
   * took (16 KB by default). Relayed GETs (not CONNECT tunnels) go out in
   * pieces of at most this size; the bench raises it so that squid is not
   * what limits plain HTTP.
   */
  readAheadGap?: string;
}

export interface LabOptions {
  squid?: SquidOptions;
  /** Also serve www/files/large.bin of this many MiB (random; relay tests, bench) from both nginx servers. */
  largeFileMiB?: number;
}

export interface ExecOptions {
  input?: string | Buffer;
  /** Kill the whole process group after this long (default 20 s). */
  timeoutMs?: number;
  /** Environment (PATH is added). Default: only PATH and LANG=C, so the host's http_proxy never leaks in. */
  env?: Record<string, string>;
}

export interface ExecResult {
  /** Exit code; 128+signal number when killed by a signal. */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export interface SpawnOptions {
  env?: Record<string, string>;
  /** Default: ['ignore', 'pipe', 'pipe']. Read the pipes, or pass a log file via `logFile`. */
  stdio?: StdioOptions;
  /** Send stdout and stderr to this file (overrides stdio). */
  logFile?: string;
  /** Signal for a graceful stop at destroy (e.g. SIGTERM for nginx, whose master then reaps its workers). */
  stopSignal?: NodeJS.Signals;
}

export interface GatewayStartOptions {
  /** Default 15 s. */
  readyTimeoutMs?: number;
  /** Script to run instead of bin/transgate.js (for testing the lab itself). */
  script?: string;
  /** A command that execs the gateway, e.g. ['prlimit', '--nofile=300:300'] (the gateway keeps the pid). */
  wrap?: string[];
  /**
   * The gateway writes its output straight into its log file (as a daemon
   * writes to its journal) instead of a pipe this process reads line by
   * line; lines are read back from the file while someone waits for one.
   * For benchmarks: the harness then spends no CPU per log line.
   */
  logToFile?: boolean;
}

const SANE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function pathEnv(): string {
  const have = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const p of SANE_PATH.split(':')) if (!have.includes(p)) have.push(p);
  return have.join(':');
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** Like sleep, but does not keep the process alive (for races). */
const grace = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** A pid is alive when /proc has it and it is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

function signum(sig: NodeJS.Signals | null): number {
  if (!sig) return 0;
  return (os.constants.signals as Record<string, number>)[sig] ?? 0;
}

function killGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    /* no such group */
  }
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

function run(argv: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('lab: run() needs a command');
  const r = spawnSync(cmd, args, {
    input,
    encoding: 'utf8',
    env: { PATH: pathEnv(), LANG: 'C' },
    timeout: 20_000,
    killSignal: 'SIGKILL',
  });
  return { code: r.status ?? 128 + signum(r.signal), stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error ? String(r.error) : '') };
}

function mustRun(argv: string[], input?: string): string {
  const r = run(argv, input);
  if (r.code !== 0) throw new Error(`lab: ${argv.join(' ')} failed (${r.code}): ${r.stderr.trim()} ${r.stdout.trim()}`);
  return r.stdout;
}

export function listNetns(): string[] {
  const r = run(['ip', 'netns', 'list']);
  if (r.code !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n);
}

/** Pids of every process in a namespace (`ip netns pids`). */
export function netnsPids(ns: string): number[] {
  const r = run(['ip', 'netns', 'pids', ns]);
  if (r.code !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0 && n !== process.pid);
}

function creatorAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  if (!pidAlive(pid)) return false;
  try {
    // The creator is a node process; anything else is a recycled pid.
    return /node/.test(fs.readFileSync(`/proc/${pid}/comm`, 'utf8'));
  } catch {
    return false;
  }
}

/** Removes namespaces and temp dirs of earlier runs whose creating process is dead. Returns what it removed. */
/** Where `ip netns exec` finds per-namespace replacements for files in /etc. */
const NETNS_ETC = '/etc/netns';

export function removeLeftovers(): string[] {
  const removed: string[] = [];
  // Suites may add namespaces of their own named `<lab id>-x-<name>` (a container, say): leftovers too.
  const re = new RegExp(`^${LAB_PREFIX}-(\\d+)-[0-9a-z]+-(?:${ROLES.join('|')}|probe|x-[0-9a-z]+)$`);
  const stale = listNetns().filter((n) => {
    const m = re.exec(n);
    return m && !creatorAlive(Number(m[1]));
  });
  for (const ns of stale) for (const pid of netnsPids(ns)) killGroup(pid, 'SIGKILL');
  for (const ns of stale) {
    for (let i = 0; i < 50 && netnsPids(ns).some(pidAlive); i++) sleepSync(20);
    run(['ip', 'netns', 'del', ns]);
    removed.push(ns);
  }
  // Per-namespace /etc files (setGatewayHosts) of labs whose creator is gone.
  if (fs.existsSync(NETNS_ETC)) {
    for (const d of fs.readdirSync(NETNS_ETC)) {
      const m = re.exec(d);
      if (m && !creatorAlive(Number(m[1]))) fs.rmSync(path.join(NETNS_ETC, d), { recursive: true, force: true });
    }
  }
  const dirRe = new RegExp(`^${LAB_PREFIX}-(\\d+)-[0-9a-z]+$`);
  for (const d of fs.readdirSync(os.tmpdir())) {
    const m = dirRe.exec(d);
    if (m && !creatorAlive(Number(m[1]))) {
      fs.rmSync(path.join(os.tmpdir(), d), { recursive: true, force: true });
      removed.push(path.join(os.tmpdir(), d));
    }
  }
  return removed;
}

/**
 * Why the e2e suite cannot run here, or undefined when it can. With CI=true
 * it always returns undefined: in CI the suite must run (and fail loudly).
 */
export function e2eSkipReason(): string | undefined {
  if (process.env.CI === 'true') return undefined;
  if (process.platform !== 'linux') return 'e2e lab needs Linux network namespaces';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'e2e lab needs root (ip netns, nftables)';
  const probe = `${LAB_PREFIX}-${process.pid}-${crypto.randomBytes(2).toString('hex')}-probe`;
  const r = run(['ip', 'netns', 'add', probe]);
  if (r.code !== 0) return `ip netns unavailable: ${r.stderr.trim() || 'exit ' + r.code}`;
  run(['ip', 'netns', 'del', probe]);
  for (const bin of ['squid', 'nginx', 'socat', 'curl', 'openssl', 'htpasswd', 'nft']) {
    if (run(['sh', '-c', `command -v ${bin}`]).code !== 0) return `${bin} not installed`;
  }
  return undefined;
}

/** Walks up from this file to the repository root (the package.json named transgate). */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'transgate') return dir;
    } catch {
      /* keep going */
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('lab: repository root not found');
    dir = up;
  }
}

/** key=value tokens of a log line (`conn id=1 kind=http ...` → {id:'1', kind:'http', ...}). */
export function parseKv(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of line.matchAll(/([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    // Both groups are not optional: a match has them.
    let v = m[2]!;
    if (v.startsWith('"')) v = v.slice(1, -1);
    out[m[1]!] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Process exit cleanup: every live lab is destroyed synchronously.

const liveLabs = new Set<Lab>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const lab of [...liveLabs]) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      for (const lab of [...liveLabs]) lab.destroySync();
      process.removeListener(sig, handler);
      process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
  // A monitor does not change the default crash behaviour; 'exit' runs too.
  process.on('uncaughtExceptionMonitor', () => {
    for (const lab of [...liveLabs]) lab.destroySync();
  });
}

// ---------------------------------------------------------------------------

export class Gw {
  readonly lines: string[] = [];
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit code (128+signal when killed by a signal). */
  readonly exited: Promise<number>;
  exitCode: number | undefined;
  private waiters = new Set<() => void>();

  /** Set when the gateway writes to logFile itself: how far it has been read. */
  private fileTail: { file: string; offset: number; partial: string } | undefined;

  constructor(proc: ChildProcess, logFile: string, toFile = false) {
    this.proc = proc;
    this.pid = proc.pid ?? -1;
    if (toFile) this.fileTail = { file: logFile, offset: 0, partial: '' };
    const log = fs.createWriteStream(toFile ? '/dev/null' : logFile, { flags: 'a' });
    const onData = (prefix: string) => {
      let buf = '';
      return (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          this.push(buf.slice(0, i).replace(/\r$/, ''), log, prefix);
          buf = buf.slice(i + 1);
        }
      };
    };
    proc.stdout?.on('data', onData('out'));
    proc.stderr?.on('data', onData('err'));
    this.exited = new Promise<number>((resolve) => {
      proc.on('close', (code, sig) => {
        this.exitCode = code ?? 128 + signum(sig);
        log.end();
        this.notify();
        resolve(this.exitCode);
      });
    });
  }

  private push(line: string, log: fs.WriteStream, prefix: string): void {
    this.lines.push(line);
    log.write(`${prefix}: ${line}\n`);
    this.notify();
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** Reads what the gateway has added to its log file (logToFile). */
  private tail(): void {
    const t = this.fileTail;
    if (!t) return;
    let data: Buffer;
    try {
      const fd = fs.openSync(t.file, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        data = Buffer.alloc(Math.max(0, size - t.offset));
        fs.readSync(fd, data, 0, data.length, t.offset);
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return;
    }
    t.offset += data.length;
    const text = t.partial + data.toString('utf8');
    const parts = text.split('\n');
    t.partial = parts.pop() ?? '';
    for (const line of parts) this.lines.push(line.replace(/\r$/, ''));
  }

  /** Index to pass to waitFor / linesSince to see only later lines. */
  mark(): number {
    return this.lines.length;
  }

  linesSince(from: number): string[] {
    this.tail();
    return this.lines.slice(from);
  }

  output(): string {
    this.tail();
    return this.lines.join('\n');
  }

  /** Waits for a line matching `re` (searching from line index `from`). */
  waitFor(re: RegExp, timeoutMs = 5000, from = 0): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let done = false;
      const check = () => {
        if (done) return;
        this.tail();
        for (let i = from; i < this.lines.length; i++) {
          const line = this.lines[i]!; // i < this.lines.length
          if (re.test(line)) return finish(undefined, line);
        }
        if (this.exitCode !== undefined) {
          finish(new Error(`gateway exited (${this.exitCode}) before a line matched ${re}; output:\n${this.output()}`));
        }
      };
      const finish = (err: Error | undefined, line?: string) => {
        done = true;
        clearTimeout(timer);
        clearInterval(poll);
        this.waiters.delete(check);
        if (err) reject(err);
        else resolve(line as string);
      };
      const timer = setTimeout(
        () => finish(new Error(`no gateway line matched ${re} within ${timeoutMs} ms; output:\n${this.output()}`)),
        timeoutMs,
      );
      this.waiters.add(check);
      // A file is not a stream: look again every 50 ms.
      const poll = this.fileTail ? setInterval(check, 50) : undefined;
      check();
    });
  }

  /** Sends `signal` and waits for the exit; SIGKILL after timeoutMs. Returns the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number> {
    if (this.exitCode !== undefined) return this.exitCode;
    try {
      process.kill(this.pid, signal);
    } catch {
      /* already gone */
    }
    const t = setTimeout(() => killGroup(this.pid, 'SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }

  async kill9(): Promise<number> {
    if (this.exitCode !== undefined) return this.exitCode;
    killGroup(this.pid, 'SIGKILL');
    return this.exited;
  }
}

// ---------------------------------------------------------------------------

export class Lab {
  readonly id: string;
  readonly ns: Record<NsRole, string>;
  readonly addr = ADDR;
  readonly dir: string;
  readonly caFile: string;
  readonly repo: string;
  squidOptions: SquidOptions = {};
  private procs = new Set<ChildProcess>();
  private stopSignals = new Map<ChildProcess, NodeJS.Signals>();
  private allPids: number[] = [];
  private squid?: ChildProcess;
  private destroyed = false;
  private gwCount = 0;

  private constructor() {
    const suffix = crypto.randomBytes(2).toString('hex');
    this.id = `${LAB_PREFIX}-${process.pid}-${suffix}`;
    this.ns = { cl: `${this.id}-cl`, gw: `${this.id}-gw`, up: `${this.id}-up`, in: `${this.id}-in` };
    this.dir = path.join(os.tmpdir(), this.id);
    this.caFile = path.join(this.dir, 'tls', 'ca.crt');
    this.repo = repoRoot();
  }

  static async create(opts: LabOptions = {}): Promise<Lab> {
    removeLeftovers();
    installExitHooks();
    const lab = new Lab();
    liveLabs.add(lab);
    try {
      await lab.build(opts);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  /** Every pid this lab has started (servers, execs, gateways). */
  pids(): number[] {
    return [...this.allPids];
  }

  /** `ns`: a role (NsRole) or a namespace's own name. */
  private nsName(ns: string): string {
    return (this.ns as Record<string, string>)[ns] ?? ns;
  }

  // -- building -------------------------------------------------------------

  private async build(opts: LabOptions): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    fs.chmodSync(this.dir, 0o755);
    for (const sub of ['tls', 'www', 'squid', 'nginx-in', 'nginx-up']) fs.mkdirSync(path.join(this.dir, sub), { mode: 0o755 });

    this.buildNetwork();
    this.makeCerts();
    fs.writeFileSync(path.join(this.dir, 'www', 'big.bin'), crypto.randomBytes(1 << 20), { mode: 0o644 });
    if (opts.largeFileMiB) this.writeLargeFile(opts.largeFileMiB);
    fs.writeFileSync(path.join(this.dir, 'squid', 'hosts'), LAB_HOSTS.join('\n') + '\n', { mode: 0o644 });
    mustRun(['htpasswd', '-b', '-c', '-m', path.join(this.dir, 'squid', 'htpasswd'), ADDR.auth.user, ADDR.auth.password]);
    fs.writeFileSync(path.join(this.dir, 'squid', 'digest-passwd'), `${ADDR.auth.user}:${ADDR.auth.password}\n`, { mode: 0o644 });
    fs.chmodSync(path.join(this.dir, 'squid', 'htpasswd'), 0o644);
    mustRun(['chown', '-R', 'proxy:proxy', path.join(this.dir, 'squid')]);

    await Promise.all([this.startOriginServers(), this.startIntranet(), this.startSquid(opts.squid ?? {})]);
  }

  /** Path of the file behind /files/large.bin (see LabOptions.largeFileMiB). */
  get largeFile(): string {
    return path.join(this.dir, 'www', 'files', 'large.bin');
  }

  private writeLargeFile(mib: number): void {
    fs.mkdirSync(path.join(this.dir, 'www', 'files'), { mode: 0o755 });
    const fd = fs.openSync(this.largeFile, 'w', 0o644);
    try {
      // One random MiB repeated would compress and dedupe; fresh bytes per MiB keep every byte checked.
      for (let i = 0; i < mib; i++) fs.writeSync(fd, crypto.randomBytes(1 << 20));
    } finally {
      fs.closeSync(fd);
    }
  }

  private buildNetwork(): void {
    const { cl, gw, up } = this.ns;
    const inn = this.ns.in;
    for (const n of ROLES) mustRun(['ip', 'netns', 'add', this.ns[n]]);
    // Veth pairs are created inside the namespaces: the host never sees them.
    mustRun(['ip', '-n', cl, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'lan0', 'netns', gw]);
    mustRun(['ip', '-n', gw, 'link', 'add', 'wan0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', up]);
    mustRun(['ip', '-n', up, 'link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', inn]);

    mustRun([
      'ip',
      'netns',
      'exec',
      gw,
      'sysctl',
      '-q',
      '-w',
      'net.ipv4.ip_forward=1',
      'net.ipv6.conf.all.forwarding=1',
      'net.ipv4.conf.all.send_redirects=0',
      'net.ipv4.conf.default.send_redirects=0',
      'net.ipv4.conf.lan0.send_redirects=0',
      'net.ipv4.conf.wan0.send_redirects=0',
    ]);

    const batch = (ns: string, cmds: string[]) => mustRun(['ip', '-n', ns, '-batch', '-'], cmds.join('\n') + '\n');
    batch(cl, [
      'link set lo up',
      'addr add 192.0.2.2/24 dev eth0',
      'addr add 2001:db8:1::2/64 dev eth0 nodad',
      'link set eth0 up',
      'route add default via 192.0.2.1',
      'route add default via 2001:db8:1::1',
    ]);
    batch(gw, [
      'link set lo up',
      'addr add 192.0.2.1/24 dev lan0',
      'addr add 2001:db8:1::1/64 dev lan0 nodad',
      'addr add 198.51.100.1/24 dev wan0',
      'addr add 2001:db8:2::1/64 dev wan0 nodad',
      'link set lan0 up',
      'link set wan0 up',
    ]);
    batch(up, [
      'link set lo up',
      'addr add 198.51.100.2/24 dev eth0',
      'addr add 198.51.100.3/24 dev eth0',
      'addr add 2001:db8:2::2/64 dev eth0 nodad',
      'addr add 2001:db8:2::3/64 dev eth0 nodad',
      'addr add 203.0.113.1/24 dev eth1',
      'addr add 2001:db8:3::1/64 dev eth1 nodad',
      'link set eth0 up',
      'link set eth1 up',
    ]);
    batch(inn, ['link set lo up', 'addr add 203.0.113.2/24 dev eth0', 'addr add 2001:db8:3::2/64 dev eth0 nodad', 'link set eth0 up']);
  }

  private makeCerts(): void {
    const t = path.join(this.dir, 'tls');
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    mustRun([
      'openssl',
      'req',
      '-x509',
      ...ec,
      '-keyout',
      path.join(t, 'ca.key'),
      '-out',
      path.join(t, 'ca.crt'),
      '-days',
      '7',
      '-subj',
      '/CN=transgate e2e lab CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    mustRun([
      'openssl',
      'req',
      ...ec,
      '-keyout',
      path.join(t, 'server.key'),
      '-out',
      path.join(t, 'server.csr'),
      '-subj',
      '/CN=*.example.test',
    ]);
    fs.writeFileSync(
      path.join(t, 'ext.cnf'),
      [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature',
        'extendedKeyUsage=serverAuth',
        `subjectAltName=DNS:*.example.test,DNS:example.test,IP:${ADDR.origin.v4},IP:${ADDR.origin.v6}`,
      ].join('\n') + '\n',
    );
    mustRun([
      'openssl',
      'x509',
      '-req',
      '-in',
      path.join(t, 'server.csr'),
      '-CA',
      path.join(t, 'ca.crt'),
      '-CAkey',
      path.join(t, 'ca.key'),
      '-set_serial',
      '0x' + crypto.randomBytes(8).toString('hex'),
      '-days',
      '7',
      '-extfile',
      path.join(t, 'ext.cnf'),
      '-out',
      path.join(t, 'server.crt'),
    ]);
    fs.chmodSync(path.join(t, 'ca.crt'), 0o644);
  }

  private nginxConf(name: string, listens: string[], body: string, ssl: boolean): string {
    const d = path.join(this.dir, name);
    const tls = path.join(this.dir, 'tls');
    return [
      'daemon off;',
      'worker_processes 1;',
      `pid ${d}/nginx.pid;`,
      `error_log ${d}/error.log warn;`,
      'events { worker_connections 1024; }',
      'http {',
      `  access_log ${d}/access.log;`,
      `  client_body_temp_path ${d}/body;`,
      `  proxy_temp_path ${d}/proxy;`,
      `  fastcgi_temp_path ${d}/fastcgi;`,
      `  uwsgi_temp_path ${d}/uwsgi;`,
      `  scgi_temp_path ${d}/scgi;`,
      '  default_type text/plain;',
      '  keepalive_timeout 30s;',
      '  server {',
      ...listens.map((l) => `    listen ${l};`),
      '    server_name _;',
      ...(ssl ? [`    ssl_certificate ${tls}/server.crt;`, `    ssl_certificate_key ${tls}/server.key;`] : []),
      `    root ${this.dir}/www;`,
      '    location = /big.bin { default_type application/octet-stream; }',
      '    location /files/ { default_type application/octet-stream; }',
      // proxy_pass buffers the whole request body before it asks the upstream: /post answers only once it has read
      // every byte, so an upload's end never meets a connection the proxy already closed after an early answer.
      '    location = /post { proxy_pass http://127.0.0.1:8099/posted; }',
      `    location / { return 200 "${body}\\n"; }`,
      '  }',
      '  server { listen 127.0.0.1:8099; location / { return 200 "posted\\n"; } }',
      '}',
      '',
    ].join('\n');
  }

  private async startOriginServers(): Promise<void> {
    const conf = path.join(this.dir, 'nginx-in', 'nginx.conf');
    fs.writeFileSync(
      conf,
      this.nginxConf('nginx-in', ['80', '[::]:80', '443 ssl', '[::]:443 ssl'], 'origin host=$host uri=$request_uri proto=$scheme', true),
    );
    const nlog = path.join(this.dir, 'nginx-in', 'stderr.log');
    this.spawn('in', ['nginx', '-e', path.join(this.dir, 'nginx-in', 'error.log'), '-p', path.join(this.dir, 'nginx-in'), '-c', conf], {
      logFile: nlog,
      stopSignal: 'SIGTERM',
    });
    for (const port of ADDR.echoPorts) {
      this.spawn('in', ['socat', `TCP6-LISTEN:${port},fork,reuseaddr,ipv6only=0`, 'PIPE'], {
        logFile: path.join(this.dir, `echo-${port}.log`),
      });
    }
    await this.waitListening('in', ['0.0.0.0:80', '[::]:80', '0.0.0.0:443', '[::]:443', '*:22', '*:5000'], nlog);
  }

  private async startIntranet(): Promise<void> {
    const conf = path.join(this.dir, 'nginx-up', 'nginx.conf');
    fs.writeFileSync(
      conf,
      this.nginxConf('nginx-up', [`${ADDR.intranet.v4}:80`, `[${ADDR.intranet.v6}]:80`], 'intranet host=$host uri=$request_uri', false),
    );
    const nlog = path.join(this.dir, 'nginx-up', 'stderr.log');
    this.spawn('up', ['nginx', '-e', path.join(this.dir, 'nginx-up', 'error.log'), '-p', path.join(this.dir, 'nginx-up'), '-c', conf], {
      logFile: nlog,
      stopSignal: 'SIGTERM',
    });
    await this.waitListening('up', [`${ADDR.intranet.v4}:80`, `[${ADDR.intranet.v6}]:80`], nlog);
  }

  /** Listening TCP sockets of a namespace, as ss prints them ("0.0.0.0:80", "[::]:80", "*:22"). */
  async listening(ns: string): Promise<string[]> {
    const r = await this.exec(ns, ['ss', '-Hltn'], { timeoutMs: 5000 });
    return r.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[3])
      .filter((s): s is string => !!s);
  }

  private async waitListening(ns: NsRole, want: string[], logFile?: string, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let have: string[] = [];
    while (Date.now() < deadline) {
      have = await this.listening(ns);
      if (want.every((w) => have.includes(w))) return;
      await sleep(50);
    }
    let extra = '';
    if (logFile) {
      try {
        extra = fs.readFileSync(logFile, 'utf8').slice(-3000);
      } catch {
        /* none */
      }
    }
    throw new Error(`lab: ${ns} not listening on ${want.join(' ')} after ${timeoutMs} ms (have ${have.join(' ')})\n${extra}`);
  }

  // -- squid ----------------------------------------------------------------

  get squidDir(): string {
    return path.join(this.dir, 'squid');
  }

  get squidAccessLog(): string {
    return path.join(this.squidDir, 'access.log');
  }

  private squidConf(o: SquidOptions): string {
    const d = this.squidDir;
    const lines = [
      ...squidBaseConf('transgate-lab-squid', d),
      'dns_timeout 3 seconds',
      'connect_timeout 5 seconds',
      `http_port ${ADDR.proxy.v4}:${ADDR.proxy.port}`,
      `http_port [${ADDR.proxy.v6}]:${ADDR.proxy.port}`,
      ...(o.maxFds ? [`max_filedescriptors ${o.maxFds}`] : []),
      ...(o.readAheadGap ? [`read_ahead_gap ${o.readAheadGap}`] : []),
      'acl CONNECT method CONNECT',
      'acl SSL_ports port 443',
    ];
    if (o.connectOnly443) lines.push('http_access deny CONNECT !SSL_ports');
    if (o.auth && o.authScheme === 'ntlm') {
      lines.push('auth_param ntlm program /usr/lib/squid/ntlm_fake_auth', 'auth_param ntlm children 2 startup=1 idle=1');
    }
    if (o.auth && o.authScheme === 'digest') {
      lines.push(
        `auth_param digest program /usr/lib/squid/digest_file_auth ${d}/digest-passwd`,
        'auth_param digest children 2 startup=1 idle=1',
        'auth_param digest realm transgate-lab',
      );
    }
    if (o.auth) {
      // Basic only where no other scheme is asked for: a proxy that offers Basic too accepts the gateway's first request.
      if (o.authScheme === undefined || o.authScheme === 'basic') {
        lines.push(
          `auth_param basic program /usr/lib/squid/basic_ncsa_auth ${d}/htpasswd`,
          'auth_param basic children 2 startup=1 idle=1',
          'auth_param basic realm transgate-lab',
        );
      }
      lines.push('acl authed proxy_auth REQUIRED', 'http_access allow authed', 'http_access deny all');
    } else {
      lines.push('http_access allow all');
    }
    return lines.join('\n') + '\n';
  }

  /** Starts squid (if not running) with these options and waits until it listens. */
  async startSquid(o: SquidOptions = {}): Promise<void> {
    if (this.squid && this.squid.exitCode === null && this.squid.signalCode === null) throw new Error('lab: squid already running');
    this.squidOptions = { ...o };
    const conf = path.join(this.squidDir, 'squid.conf');
    fs.writeFileSync(conf, this.squidConf(o), { mode: 0o644 });
    const logFile = path.join(this.squidDir, 'stderr.log');
    this.squid = this.spawn('up', ['squid', '-N', '-f', conf], { logFile });
    const want = [`${ADDR.proxy.v4}:${ADDR.proxy.port}`, `[${ADDR.proxy.v6}]:${ADDR.proxy.port}`];
    const proc = this.squid;
    await Promise.race([
      this.waitListening('up', want, logFile),
      new Promise<never>((_, reject) =>
        proc.once('exit', (code, sig) => {
          let log = '';
          try {
            log =
              fs.readFileSync(path.join(this.squidDir, 'cache.log'), 'utf8').slice(-3000) + fs.readFileSync(logFile, 'utf8').slice(-2000);
          } catch {
            /* none */
          }
          reject(new Error(`lab: squid exited (${code ?? sig}) while starting\n${log}`));
        }),
      ),
    ]);
  }

  /** SIGKILLs squid (and its helpers) and waits until its port is closed: a dead upstream. */
  async stopSquid(): Promise<void> {
    const proc = this.squid;
    this.squid = undefined;
    if (proc?.pid) {
      const children = childPids(proc.pid);
      killGroup(proc.pid, 'SIGKILL');
      for (const c of children) killGroup(c, 'SIGKILL');
      if (proc.exitCode === null && proc.signalCode === null) await new Promise((r) => proc.once('exit', r));
      for (let i = 0; i < 100 && children.some(pidAlive); i++) await sleep(20);
    }
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const have = await this.listening('up');
      if (!have.some((a) => a.endsWith(`:${ADDR.proxy.port}`))) return;
      await sleep(50);
    }
    throw new Error('lab: squid port still open after stop');
  }

  async restartSquid(o: SquidOptions = {}): Promise<void> {
    await this.stopSquid();
    await this.startSquid(o);
  }

  /** Access log lines so far (`ts client method url status bytes user`). */
  async squidLog(): Promise<string[]> {
    try {
      const s = await fs.promises.readFile(this.squidAccessLog, 'utf8');
      return s.split('\n').filter(Boolean);
    } catch {
      return [];
    }
  }

  /** Polls the access log (from line index `from`) until a line matches. */
  async waitSquidLog(re: RegExp, timeoutMs = 3000, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let lines: string[];
    do {
      lines = (await this.squidLog()).slice(from);
      const hit = lines.find((l) => re.test(l));
      if (hit !== undefined) return hit;
      await sleep(50);
    } while (Date.now() < deadline);
    throw new Error(`squid log has no line matching ${re} within ${timeoutMs} ms; lines since ${from}:\n${lines.join('\n')}`);
  }

  /** Number of access log lines, for `waitSquidLog(re, t, from)` / `squidLogSince`. */
  async squidMark(): Promise<number> {
    return (await this.squidLog()).length;
  }

  /** Lines logged since `from`, after giving squid `settleMs` to write pending entries. */
  async squidLogSince(from: number, settleMs = 300): Promise<string[]> {
    if (settleMs > 0) await sleep(settleMs);
    return (await this.squidLog()).slice(from);
  }

  // -- DNS (test/e2e/dns.test.ts) ---------------------------------------------

  /**
   * Starts the lab's DNS servers (on demand: only the DNS tests need them):
   * a public dnsmasq in `in` (reachable from gw only through squid), a
   * private dnsmasq in `up` (reachable from gw directly) and unbound as a
   * DNS-over-HTTPS server in `in` (HTTP/2, test CA cert) forwarding to the
   * public dnsmasq. Each dnsmasq logs its queries to its own file.
   */
  async startDnsServers(): Promise<void> {
    const inn = this.ns.in;
    mustRun(['ip', '-n', inn, 'addr', 'add', `${DNS_ADDR.public.v4}/24`, 'dev', 'eth0']);
    mustRun(['ip', '-n', inn, 'addr', 'add', `${DNS_ADDR.public.v6}/64`, 'dev', 'eth0', 'nodad']);
    mustRun(['ip', '-n', this.ns.up, 'addr', 'add', `${DNS_ADDR.private.v4}/24`, 'dev', 'eth0']);
    mustRun(['ip', '-n', this.ns.up, 'addr', 'add', `${DNS_ADDR.private.v6}/64`, 'dev', 'eth0', 'nodad']);
    const d = path.join(this.dir, 'dns');
    fs.mkdirSync(d, { recursive: true, mode: 0o755 });
    const dnsmasq = (name: string, addrs: { v4: string; v6: string }, extra: string[]): string[] => [
      'dnsmasq',
      '-k',
      '--conf-file=/dev/null',
      '--no-resolv',
      '--no-hosts',
      '--user=root',
      '--group=root',
      `--pid-file=${path.join(d, `${name}.pid`)}`,
      '--bind-interfaces',
      `--listen-address=${addrs.v4}`,
      `--listen-address=${addrs.v6}`,
      '--local-ttl=300',
      '--log-queries',
      `--log-facility=${path.join(d, `${name}.log`)}`,
      '--cache-size=0',
      ...extra,
    ];
    const big = 'x'.repeat(200);
    this.spawn(
      'in',
      dnsmasq('public', DNS_ADDR.public, [
        `--address=/example.test/${ADDR.origin.v4}`,
        `--address=/example.test/${ADDR.origin.v6}`,
        // The wrong answers for private names: if one ever shows up, a private name went public.
        '--address=/corp.test/203.0.113.99',
        ...Array.from({ length: 12 }, (_, i) => `--txt-record=big.example.test,"${i} ${big}"`),
      ]),
      { logFile: path.join(d, 'public.stderr') },
    );
    this.spawn(
      'up',
      dnsmasq('private', DNS_ADDR.private, [
        `--address=/corp.test/${ADDR.intranet.v4}`,
        `--address=/corp.test/${ADDR.intranet.v6}`,
        '--address=/example.test/198.51.100.99',
      ]),
      { logFile: path.join(d, 'private.stderr') },
    );
    const t = path.join(this.dir, 'tls');
    fs.writeFileSync(
      path.join(d, 'unbound.conf'),
      [
        'server:',
        `  interface: ${ADDR.origin.v4}@${DNS_ADDR.dohPort}`,
        // Plain DNS too, for a zone whose negative answers carry an SOA (negative caching, RFC 2308).
        `  interface: ${ADDR.origin.v4}@53`,
        `  https-port: ${DNS_ADDR.dohPort}`,
        `  tls-service-key: "${t}/server.key"`,
        `  tls-service-pem: "${t}/server.crt"`,
        '  do-daemonize: no',
        '  username: ""',
        '  chroot: ""',
        `  directory: "${d}"`,
        `  pidfile: "${d}/unbound.pid"`,
        '  use-syslog: no',
        `  logfile: "${d}/unbound.log"`,
        '  log-queries: yes',
        '  verbosity: 1',
        '  access-control: 0.0.0.0/0 allow',
        '  module-config: "iterator"',
        '  do-not-query-localhost: no',
        '  cache-max-ttl: 0',
        // unbound answers test. itself (RFC 6761 defaults); the lab's names live on the public dnsmasq.
        '  local-zone: "test." nodefault',
        '  local-zone: "neg.test." static',
        '  local-data: "neg.test. 3600 IN SOA ns.neg.test. hostmaster.neg.test. 1 3600 600 86400 45"',
        'forward-zone:',
        '  name: "."',
        `  forward-addr: ${DNS_ADDR.public.v4}`,
        '',
      ].join('\n'),
    );
    this.spawn('in', ['unbound', '-d', '-c', path.join(d, 'unbound.conf')], { logFile: path.join(d, 'unbound.stderr') });
    await Promise.all([
      this.waitListening('in', [`${DNS_ADDR.public.v4}:53`, `[${DNS_ADDR.public.v6}]:53`], path.join(d, 'public.stderr')),
      this.waitListening('up', [`${DNS_ADDR.private.v4}:53`, `[${DNS_ADDR.private.v6}]:53`], path.join(d, 'private.stderr')),
      this.waitListening('in', [`${ADDR.origin.v4}:${DNS_ADDR.dohPort}`, `${ADDR.origin.v4}:53`], path.join(d, 'unbound.stderr')),
    ]);
  }

  /** Query lines ("query[A] git.example.test from 203.0.113.1") a lab DNS server logged so far. */
  dnsQueries(server: 'public' | 'private'): string[] {
    try {
      return fs
        .readFileSync(path.join(this.dir, 'dns', `${server}.log`), 'utf8')
        .split('\n')
        .filter((l) => /query\[/.test(l));
    } catch {
      return [];
    }
  }

  /** unbound's log (DoH queries show up as "info: <client> <name> <type> IN"). */
  dohLog(): string {
    try {
      return fs.readFileSync(path.join(this.dir, 'dns', 'unbound.log'), 'utf8');
    } catch {
      return '';
    }
  }

  // -- processes ------------------------------------------------------------

  /** Starts a tracked process in a namespace, in its own process group. */
  spawn(ns: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
    if (this.destroyed) throw new Error('lab: destroyed');
    let stdio: StdioOptions = opts.stdio ?? ['ignore', 'pipe', 'pipe'];
    let fd: number | undefined;
    if (opts.logFile) {
      fd = fs.openSync(opts.logFile, 'a');
      stdio = ['ignore', fd, fd];
    }
    const child = spawn('ip', ['netns', 'exec', this.nsName(ns), ...argv], {
      env: { PATH: pathEnv(), LANG: 'C', ...(opts.env ?? {}) },
      stdio,
      detached: true,
    });
    if (fd !== undefined) fs.closeSync(fd);
    if (child.pid) this.allPids.push(child.pid);
    this.procs.add(child);
    if (opts.stopSignal) this.stopSignals.set(child, opts.stopSignal);
    const forget = () => {
      this.procs.delete(child);
      this.stopSignals.delete(child);
    };
    child.on('exit', forget);
    child.on('error', forget);
    return child;
  }

  /** Runs argv (no shell; use ['sh','-c',...] for one) in a namespace; kills the process group on timeout. */
  async exec(ns: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 20_000;
    const started = Date.now();
    const child = this.spawn(ns, argv, { env: opts.env, stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    return new Promise<ExecResult>((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timedOut = false;
      child.stdout?.on('data', (b: Buffer) => out.push(b));
      child.stderr?.on('data', (b: Buffer) => err.push(b));
      const timer = setTimeout(() => {
        timedOut = true;
        if (child.pid) killGroup(child.pid, 'SIGKILL');
      }, timeoutMs);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on('close', (code, sig) => {
        clearTimeout(timer);
        // A pipeline may leave members of the group behind: end them.
        if (child.pid) killGroup(child.pid, 'SIGKILL');
        resolve({
          code: code ?? 128 + signum(sig),
          signal: sig,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          ms: Date.now() - started,
          timedOut,
        });
      });
      if (opts.input !== undefined && child.stdin) {
        child.stdin.on('error', () => {
          /* the command may not read its input */
        });
        child.stdin.end(opts.input);
      }
    });
  }

  // -- the gateway ------------------------------------------------------------

  get transgateBin(): string {
    return path.join(this.repo, 'bin', 'transgate.js');
  }

  /** Environment for a transgate CLI run: exactly `env` plus PATH. */
  gatewayEnv(env: Record<string, string> = {}): Record<string, string> {
    return { ...env, PATH: pathEnv() };
  }

  /** Runs `bin/transgate.js ...args` in gw to completion (rules, clear, --help). */
  transgate(args: string[], env: Record<string, string> = {}, timeoutMs = 20_000): Promise<ExecResult> {
    // The bin itself, as `npx transgate` runs it: its shebang carries the node flags.
    return this.exec('gw', [this.transgateBin, ...args], { env: this.gatewayEnv(env), timeoutMs });
  }

  /**
   * Starts the gateway in gw with exactly `env` (plus PATH) and waits up to
   * readyTimeoutMs for a line containing the word "ready".
   */
  async startGateway(args: string[], env: Record<string, string> = {}, opts: GatewayStartOptions = {}): Promise<Gw> {
    if (this.destroyed) throw new Error('lab: destroyed');
    const readyTimeoutMs = opts.readyTimeoutMs ?? 15_000;
    const n = ++this.gwCount;
    // TG_E2E_RELAY=js|splice runs every transgate of a suite with that relay
    // (the suites must pass with both); an explicit --relay in args wins.
    const relay = process.env['TG_E2E_RELAY'];
    if (relay && !opts.script && !args.includes('--relay')) args = [...args, '--relay', relay];
    const command = [...(opts.wrap ?? []), ...(opts.script ? [process.execPath, opts.script] : [this.transgateBin])];
    const logFile = path.join(this.dir, `gateway-${n}.log`);
    const out = opts.logToFile ? fs.openSync(logFile, 'a') : 'pipe';
    const child = spawn('ip', ['netns', 'exec', this.ns.gw, ...command, ...args], {
      env: this.gatewayEnv(env),
      stdio: ['ignore', out, out],
      detached: true,
    });
    if (typeof out === 'number') fs.closeSync(out);
    if (child.pid) this.allPids.push(child.pid);
    this.procs.add(child);
    child.on('exit', () => this.procs.delete(child));
    const gw = new Gw(child, logFile, opts.logToFile);
    child.on('error', (e) => gw.lines.push(`spawn error: ${e.message}`));
    try {
      await gw.waitFor(/\bready\b/, readyTimeoutMs);
    } catch (err) {
      await gw.kill9();
      throw new Error(`gateway did not become ready (args: ${args.join(' ')}): ${(err as Error).message}`, { cause: err });
    }
    return gw;
  }

  /**
   * Extra /etc/hosts lines for programs started in the gateway namespace
   * from now on: `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
   * /etc/hosts. Removed with the lab.
   */
  setGatewayHosts(lines: string[]): void {
    const dir = path.join(NETNS_ETC, this.ns.gw);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'hosts'), ['127.0.0.1 localhost', '::1 localhost', ...lines, ''].join('\n'));
  }

  // -- teardown -------------------------------------------------------------

  /** Kills every process, deletes namespaces and the temp dir. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    const exitOf = (p: ChildProcess) =>
      new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())));
    // Graceful first where it avoids orphans (nginx masters reap their workers).
    const gentle = [...this.stopSignals];
    for (const [p, sig] of gentle) {
      try {
        if (p.pid) process.kill(p.pid, sig);
      } catch {
        /* gone */
      }
    }
    await Promise.race([Promise.all(gentle.map(([p]) => exitOf(p))), grace(1000)]);
    const waits = [...this.procs].map(exitOf);
    this.killEverything();
    await Promise.race([Promise.all(waits), grace(5000)]);
    this.destroySync();
  }

  /** Pids of tracked processes not yet reaped (a reaped pid could belong to someone else by now). */
  private livePids(): number[] {
    return [...this.procs].filter((p) => p.exitCode === null && p.signalCode === null && p.pid).map((p) => p.pid as number);
  }

  private killEverything(): void {
    for (const pid of this.livePids()) killGroup(pid, 'SIGKILL');
    for (const n of ROLES) for (const pid of netnsPids(this.ns[n])) killGroup(pid, 'SIGKILL');
  }

  /** Synchronous teardown, used by the exit hooks. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    liveLabs.delete(this);
    const existing = new Set(listNetns());
    this.killEverything();
    const deadline = Date.now() + 5000;
    const remaining = () => [
      ...this.livePids().filter(pidAlive),
      ...ROLES.flatMap((n) => (existing.has(this.ns[n]) ? netnsPids(this.ns[n]) : [])).filter(pidAlive),
    ];
    let left = remaining();
    while (left.length && Date.now() < deadline) {
      for (const pid of left) killGroup(pid, 'SIGKILL');
      sleepSync(20);
      left = remaining();
    }
    for (const n of ROLES) if (existing.has(this.ns[n])) run(['ip', 'netns', 'del', this.ns[n]]);
    for (const n of ROLES) fs.rmSync(path.join(NETNS_ETC, this.ns[n]), { recursive: true, force: true });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Direct children of a pid (by /proc/<pid>/stat ppid). */
function childPids(ppid: number): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(e));
    } catch {
      /* raced */
    }
  }
  return out;
}

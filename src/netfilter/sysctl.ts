/**
 * The kernel settings a forwarding gateway needs, planned (pure), applied by
 * writing /proc/sys, and restored at stop to exactly what was there before.
 *
 *   const wants = sysctlWants({ ipv4: true, ipv6: true, interfaces: ['lan0'] });
 *   const p = planSysctls(wants, readSysctl);   // pure given the reader
 *   const applied = applySysctls(p.changes);     // throws, after undoing, on the first failure
 *   ...
 *   restoreSysctls(applied);
 *
 * rp_filter is deliberately not among the wants: TPROXY and REDIRECT keep the
 * client's source address on the interface it came in on, so strict reverse
 * path filtering passes (test/e2e/network.test.ts runs every mode with
 * rp_filter=1 to keep that true). The doctor reports it, it does not change it.
 */
import fs from 'node:fs';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';
import { interfaceMatches } from '../core/validate';

export interface SysctlWant {
  /** Path under /proc/sys, one segment per level; an interface name is one segment even when it holds a dot. */
  path: string[];
  value: string;
  /** Why transgate needs it: printed with the change. */
  why: string;
  /** Change it only from this value (accept_ra: 1 → 2, never 0 → 2). */
  onlyIf?: string;
}

export interface SysctlChange {
  path: string[];
  /** The sysctl(8) spelling: dots between levels, `/` for a dot inside an interface name. */
  key: string;
  from: string;
  to: string;
  why: string;
}

export interface SysctlPlan {
  changes: SysctlChange[];
  /** Settings already right. */
  unchanged: string[];
  /** Settings that do not exist here (no IPv6, interface gone): key and reason. */
  missing: Array<{ key: string; why: string }>;
}

export interface SysctlNeeds {
  ipv4: boolean;
  ipv6: boolean;
  /** LAN interfaces whose own send_redirects must be off (the kernel ORs `all` with the interface's value). */
  interfaces: string[];
  /** Bridge mode with TPROXY: br_netfilter must not run the IP hooks on bridged frames. */
  bridgeTproxy?: boolean;
  /**
   * IPv6 interfaces that must keep accepting router advertisements (the
   * uplinks: every interface but lo and the LAN ones). With forwarding on
   * the kernel ignores RAs where accept_ra is 1, and enabling forwarding
   * purges the default routes they gave: the box would lose its IPv6
   * uplink. accept_ra=2 keeps them.
   */
  raInterfaces?: string[];
}

/** Returns the current value, or undefined when the file does not exist. */
export type SysctlReader = (path: string[]) => string | undefined;
export type SysctlWriter = (path: string[], value: string) => void;

export function sysctlKey(path: readonly string[]): string {
  return path.map((p) => p.replace(/\./g, '/')).join('.');
}

export function sysctlFile(path: readonly string[]): string {
  for (const p of path) {
    if (p === '' || p === '.' || p === '..' || p.includes('/') || p.includes('\0')) {
      throw new GatewayError(ErrorCodes.CONFIG, `sysctl: bad path segment ${JSON.stringify(p)}`);
    }
  }
  return `/proc/sys/${path.join('/')}`;
}

/** Pure: what a gateway forwarding for `interfaces` needs. Wildcard interface names (`veth*`) are skipped. */
export function sysctlWants(n: SysctlNeeds): SysctlWant[] {
  const out: SysctlWant[] = [];
  const lan = [...new Set(n.interfaces)].filter((i) => i !== 'lo' && !i.endsWith('*'));
  if (n.ipv4) {
    out.push({ path: ['net', 'ipv4', 'ip_forward'], value: '1', why: "forward the LAN clients' other IPv4 traffic" });
    const why = 'no ICMP redirects: they teach clients to bypass this gateway';
    out.push({ path: ['net', 'ipv4', 'conf', 'all', 'send_redirects'], value: '0', why });
    out.push({ path: ['net', 'ipv4', 'conf', 'default', 'send_redirects'], value: '0', why });
    for (const i of lan) out.push({ path: ['net', 'ipv4', 'conf', i, 'send_redirects'], value: '0', why });
  }
  if (n.ipv6) {
    // Before forwarding: turning forwarding on purges RA default routes except where accept_ra is 2.
    const uplinks = [...new Set(n.raInterfaces ?? [])].filter((i) => i !== 'lo' && !i.endsWith('*'));
    for (const i of uplinks) {
      out.push({
        path: ['net', 'ipv6', 'conf', i, 'accept_ra'],
        value: '2',
        onlyIf: '1',
        why: 'keep the router advertisements (and IPv6 default route) of this uplink with forwarding on',
      });
    }
    out.push({ path: ['net', 'ipv6', 'conf', 'all', 'forwarding'], value: '1', why: "forward the LAN clients' other IPv6 traffic" });
  }
  if (n.bridgeTproxy) {
    // Measured (test/e2e/network.test.ts): with br_netfilter calling the IP
    // hooks, TPROXY runs inside the bridge path and the connection never
    // completes; with 0 the frames we take up meet it in the normal IP input.
    const why = 'bridge mode: TPROXY must see the frames in IP input, not inside br_netfilter';
    out.push({ path: ['net', 'bridge', 'bridge-nf-call-iptables'], value: '0', why });
    if (n.ipv6) out.push({ path: ['net', 'bridge', 'bridge-nf-call-ip6tables'], value: '0', why });
  }
  return out;
}

/** Pure given `read`: the changes needed to get from what is there to `wants`. */
export function planSysctls(wants: readonly SysctlWant[], read: SysctlReader): SysctlPlan {
  const plan: SysctlPlan = { changes: [], unchanged: [], missing: [] };
  const seen = new Set<string>();
  for (const w of wants) {
    const key = sysctlKey(w.path);
    if (seen.has(key)) continue;
    seen.add(key);
    const cur = read(w.path);
    if (cur === undefined) {
      plan.missing.push({ key, why: w.why });
    } else if (cur.trim() === w.value || (w.onlyIf !== undefined && cur.trim() !== w.onlyIf)) {
      plan.unchanged.push(key);
    } else {
      plan.changes.push({ path: [...w.path], key, from: cur.trim(), to: w.value, why: w.why });
    }
  }
  return plan;
}

/** Reads /proc/sys; undefined when the setting does not exist. */
export const readSysctl: SysctlReader = (path) => {
  try {
    return fs.readFileSync(sysctlFile(path), 'utf8').trim();
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw sysctlError('read', path, err);
  }
};

const writeSysctl: SysctlWriter = (path, value) => {
  try {
    fs.writeFileSync(sysctlFile(path), `${value}\n`);
  } catch (err) {
    throw sysctlError('write', path, err);
  }
};

function sysctlError(op: 'read' | 'write', path: readonly string[], err: unknown): GatewayError {
  const code = errnoOf(err);
  const key = sysctlKey(path);
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new GatewayError(
      ErrorCodes.PERMISSION,
      `sysctl ${key}: cannot ${op} ${sysctlFile(path)} (${code}): run as root with a writable /proc/sys, or set it yourself and pass --no-sysctl`,
      { cause: err },
    );
  }
  return new GatewayError(ErrorCodes.CONFIG, `sysctl ${key}: ${op} failed: ${code ?? String(err)}`, { cause: err });
}

/**
 * Writes every change in order. All-or-nothing: on a failure the ones
 * already written are put back and the error is thrown. Returns what was
 * applied (pass it to restoreSysctls).
 */
export function applySysctls(changes: readonly SysctlChange[], write: SysctlWriter = writeSysctl): SysctlChange[] {
  const done: SysctlChange[] = [];
  for (const c of changes) {
    try {
      write(c.path, c.to);
    } catch (err) {
      try {
        restoreSysctls(done, write);
      } catch {
        /* report the original failure */
      }
      throw err;
    }
    done.push(c);
  }
  return done;
}

/** Puts the previous values back, last change first. Tries every one; throws the first failure after trying all. */
export function restoreSysctls(applied: readonly SysctlChange[], write: SysctlWriter = writeSysctl): void {
  let first: unknown;
  for (const c of [...applied].reverse()) {
    try {
      write(c.path, c.from);
    } catch (err) {
      first ??= err;
    }
  }
  // eslint-disable-next-line @typescript-eslint/only-throw-error -- the first failure, rethrown as it was caught
  if (first !== undefined) throw first;
}

/** Interfaces with IPv4 settings here, except lo and the all/default pseudo-entries. */
export function ipv4Interfaces(): string[] {
  try {
    return fs.readdirSync('/proc/sys/net/ipv4/conf').filter((n) => n !== 'all' && n !== 'default' && n !== 'lo');
  } catch {
    return [];
  }
}

/** Interfaces with IPv6 settings here, except lo and all/default. */
export function ipv6Interfaces(): string[] {
  try {
    return fs.readdirSync('/proc/sys/net/ipv6/conf').filter((n) => n !== 'all' && n !== 'default' && n !== 'lo');
  } catch {
    return [];
  }
}

/** One line per change, as printed at start and stop. */
export function describeChange(c: SysctlChange, restoring = false): string {
  return restoring ? `sysctl ${c.key}: restored ${c.from} (was set to ${c.to})` : `sysctl ${c.key}: ${c.from} -> ${c.to} (${c.why})`;
}

// ---------------------------------------------------------------------------
// Crash safety: what start() changed is kept in a state file per network
// namespace, so `transgate clear` can put it back after a crash (SIGKILL,
// power loss of the process). A value is only restored while it still holds
// what transgate wrote: if someone changed it since, theirs wins.

const STATE_DIR = '/run/transgate';

/** The state file of this network namespace (namespaces share /run). */
export function sysctlStateFile(dir: string = STATE_DIR): string {
  let id = 'host';
  try {
    id = String(fs.statSync('/proc/self/ns/net').ino);
  } catch {
    /* no /proc: one file */
  }
  return `${dir}/sysctl-netns-${id}.json`;
}

export function saveSysctlState(applied: readonly SysctlChange[], file: string = sysctlStateFile()): void {
  fs.mkdirSync(file.slice(0, file.lastIndexOf('/')), { recursive: true, mode: 0o755 });
  fs.writeFileSync(file, `${JSON.stringify({ pid: process.pid, changes: applied }, null, 1)}\n`, { mode: 0o644 });
}

export function dropSysctlState(file: string = sysctlStateFile()): void {
  fs.rmSync(file, { force: true });
  try {
    fs.rmdirSync(file.slice(0, file.lastIndexOf('/'))); // only when empty: leave nothing behind in /run
  } catch {
    /* other namespaces' files are still there */
  }
}

/** Changes a crashed run left (from its state file), or [] when there is none or it is unreadable. */
export function loadSysctlState(file: string = sysctlStateFile()): SysctlChange[] {
  try {
    const data = JSON.parse(fs.readFileSync(file, 'utf8')) as { changes?: unknown };
    if (!Array.isArray(data.changes)) return [];
    return data.changes.filter(
      (c: { path?: unknown; from?: unknown; to?: unknown } | null | undefined): c is SysctlChange =>
        !!c &&
        Array.isArray(c.path) &&
        c.path.every((p: unknown) => typeof p === 'string') &&
        typeof c.from === 'string' &&
        typeof c.to === 'string',
    );
  } catch {
    return [];
  }
}

/** Pure given `read`: which of a crashed run's changes may be put back (still holding the value transgate wrote). */
export function restorableAfterCrash(changes: readonly SysctlChange[], read: SysctlReader): SysctlChange[] {
  return changes.filter((c) => read(c.path) === c.to);
}

/** Bridges on this host (interfaces with a bridge/ directory in sysfs). */
export function hostBridges(): string[] {
  try {
    return fs
      .readdirSync('/sys/class/net')
      .filter((n) => fs.existsSync(`/sys/class/net/${n}/bridge`))
      .sort();
  } catch {
    return [];
  }
}

/** Whether an interface name matches a --lan entry (a trailing * matches any suffix, as nftables reads it). */
/**
 * Bridges whose clients TPROXY cannot intercept: with br_netfilter calling
 * the IP hooks (bridge-nf-call-iptables=1, as Docker sets it), the tproxy
 * rule runs inside the bridge path and the socket it assigns is dropped
 * before IP input, so connections through the bridge never complete
 * (verified in the lab; REDIRECT is not affected). Empty when none.
 */
export function bridgesBlockingTproxy(opts: { lan: readonly string[]; read: SysctlReader; bridges: readonly string[] }): string[] {
  if (opts.read(['net', 'bridge', 'bridge-nf-call-iptables']) !== '1') return [];
  return opts.bridges.filter((b) => opts.lan.length === 0 || opts.lan.some((e) => interfaceMatches(e, b)));
}

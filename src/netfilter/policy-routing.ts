/**
 * Policy routing for TPROXY: packets that the nftables rules mark with
 * `fwmark` are looked up in `routeTable`, whose only route says "every
 * destination is local" (`local 0.0.0.0/0 dev lo`), so the kernel delivers
 * them to our transparent listeners instead of forwarding them.
 *
 * Building the commands is pure (used by plan()); installing and removing them
 * goes through a Runner. Removal needs only the fwmark and table numbers, so it
 * works after a crash without any saved state.
 */
import { ErrorCodes, GatewayError } from '../core/errors';
import { formatCommand, isNotFound, type Runner } from './exec';

export type IpFamily = 4 | 6;

export interface PolicyRoute {
  family: IpFamily;
  /** Arguments to `ip` (without the binary): `-4 rule add fwmark 0x7467 lookup 7467 pref 7467`. */
  ruleArgs: string[];
  /** Arguments to `ip`: `-4 route replace local 0.0.0.0/0 dev lo table 7467`. */
  routeArgs: string[];
}

/** What revert needs: our mark and table numbers, nothing else. */
export interface PolicyIds {
  fwmark: number;
  routeTable: number;
}

/** Routing tables that belong to the system: unspec, default, main, local. */
const RESERVED_TABLES = new Set([0, 253, 254, 255]);

export function formatMark(fwmark: number): string {
  return `0x${fwmark.toString(16)}`;
}

/** Throws a CONFIG error unless fwmark/routeTable are usable (and safe to flush). */
export function validatePolicyIds(ids: PolicyIds): void {
  if (!Number.isInteger(ids.fwmark) || ids.fwmark < 1 || ids.fwmark > 0xffffffff) {
    throw new GatewayError(ErrorCodes.CONFIG, `rules: fwmark must be an integer in 1..0xffffffff, got ${String(ids.fwmark)}`);
  }
  if (!Number.isInteger(ids.routeTable) || ids.routeTable < 1 || ids.routeTable > 0xffffffff || RESERVED_TABLES.has(ids.routeTable)) {
    throw new GatewayError(
      ErrorCodes.CONFIG,
      `rules: routeTable must be an integer in 1..4294967295 other than 253 (default), 254 (main) and 255 (local), got ${String(ids.routeTable)}`,
    );
  }
}

/** The `ip` commands for one family. Pure. */
export function policyRoute(family: IpFamily, ids: PolicyIds & { rulePriority: number }): PolicyRoute {
  const fam = `-${family}`;
  return {
    family,
    ruleArgs: [fam, 'rule', 'add', 'fwmark', formatMark(ids.fwmark), 'lookup', String(ids.routeTable), 'pref', String(ids.rulePriority)],
    routeArgs: [fam, 'route', 'replace', 'local', family === 4 ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', String(ids.routeTable)],
  };
}

function ruleDelArgs(family: IpFamily, ids: PolicyIds): string[] {
  return [`-${family}`, 'rule', 'del', 'fwmark', formatMark(ids.fwmark), 'lookup', String(ids.routeTable)];
}

const MAX_RULE_DELETES = 64;

function ipFailure(args: readonly string[], stderr: string): GatewayError {
  const text = stderr.trim() || 'failed';
  const what = `ip ${formatCommand(args)}`;
  if (/Operation not permitted|Permission denied/i.test(text)) {
    return new GatewayError(ErrorCodes.PERMISSION, `${what}: ${text}: run as root or with CAP_NET_ADMIN (sudo -E npx transgate)`);
  }
  return new GatewayError(ErrorCodes.RULES, `${what}: ${text}`);
}

/**
 * Deletes every `ip rule` of this family that matches our fwmark and table
 * (`ip rule del` removes one per call; loop until it fails). Returns how many
 * were removed. Throws only for a permission error.
 */
async function deleteRules(runner: Runner, family: IpFamily, ids: PolicyIds): Promise<number> {
  const args = ruleDelArgs(family, ids);
  let removed = 0;
  for (let i = 0; i < MAX_RULE_DELETES; i++) {
    const res = await runner(['ip', ...args]);
    if (res.code !== 0) {
      if (/Operation not permitted/i.test(res.stderr)) throw ipFailure(args, res.stderr);
      break; // "No such file or directory": none left; "Address family not supported": no IPv6 here
    }
    removed++;
  }
  return removed;
}

/** `ip -N route flush table T`, ignoring failures (an absent table is the normal case). */
async function flushTable(runner: Runner, family: IpFamily, ids: PolicyIds): Promise<void> {
  await runner(['ip', `-${family}`, 'route', 'flush', 'table', String(ids.routeTable)]);
}

/**
 * Installs the routes of a plan: stale rules with our mark+table are removed
 * first (so a restart after a crash never stacks duplicates), then the local
 * route and the rule are added. Throws on the first failure; the caller
 * reverts.
 */
export async function installPolicyRoutes(runner: Runner, routes: readonly PolicyRoute[], ids: PolicyIds): Promise<void> {
  for (const r of routes) {
    await deleteRules(runner, r.family, ids);
    for (const args of [r.routeArgs, r.ruleArgs]) {
      const res = await runner(['ip', ...args]);
      if (res.code !== 0) throw ipFailure(args, res.stderr);
    }
  }
}

/**
 * Removes our rules and our table's routes for both families; returns how
 * many ip rules were removed. Idempotent;
 * failures other than permission are ignored (nothing installed, no IPv6,
 * no `ip` binary at all).
 */
export async function removePolicyRoutes(runner: Runner, ids: PolicyIds): Promise<number> {
  let removed = 0;
  for (const family of [4, 6] as const) {
    try {
      removed += await deleteRules(runner, family, ids);
      await flushTable(runner, family, ids);
    } catch (err) {
      if (isNotFound(err)) return removed;
      throw err;
    }
  }
  return removed;
}

/** `ip rule` lines (both families) that point our fwmark at our table. */
export async function listRules(runner: Runner, ids: PolicyIds): Promise<string[]> {
  const mark = formatMark(ids.fwmark);
  const re = new RegExp(`\\bfwmark ${mark}(?:/0x[0-9a-f]+)? lookup ${ids.routeTable}\\b`, 'i');
  const lines: string[] = [];
  for (const family of [4, 6] as const) {
    const res = await runner(['ip', `-${family}`, 'rule', 'show']);
    if (res.code !== 0) continue;
    for (const line of res.stdout.split('\n')) {
      if (re.test(line)) lines.push(`${family === 6 ? 'ip -6 rule: ' : 'ip -4 rule: '}${line.trim()}`);
    }
  }
  return lines;
}

/** Routes in our table (both families), for describe/doctor. */
export async function listTableRoutes(runner: Runner, ids: PolicyIds): Promise<string[]> {
  const lines: string[] = [];
  for (const family of [4, 6] as const) {
    const res = await runner(['ip', `-${family}`, 'route', 'show', 'table', String(ids.routeTable)]);
    if (res.code !== 0) continue;
    for (const line of res.stdout.split('\n')) {
      if (line.trim()) lines.push(`ip -${family} route table ${ids.routeTable}: ${line.trim()}`);
    }
  }
  return lines;
}

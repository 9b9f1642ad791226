/**
 * The netfilter layer: plan (pure) → apply (atomic, all-or-nothing) → revert
 * (idempotent; needs only the fwmark and table numbers, so it also cleans up
 * after a crash).
 *
 *   const backend = new NftablesRuleBackend();   // or IptablesRuleBackend: the same RuleBackend
 *   const p = backend.plan(cfg);       // print renderPlan(p) for `transgate rules`
 *   await backend.apply(p);
 *   ...
 *   await backend.revert(p);           // or revert({ fwmark, routeTable }) after a crash
 */
import { ErrorCodes, withContext } from '../core/errors';
import { isNotFound, netnsRunner, run, type Runner } from './exec';
import { nftApplyScript, nftDeleteTable, nftListTable, nftPreflight } from './nftables';
import { BRIDGE_TABLE, DEFAULT_FWMARK, DEFAULT_ROUTE_TABLE, TABLE, plan, renderPlan, type RulesConfig, type RulesPlan } from './plan';
import { installPolicyRoutes, listRules, listTableRoutes, removePolicyRoutes, validatePolicyIds, type PolicyIds } from './policy-routing';
import type { RevertTarget, RuleBackend, RuleBackendOptions } from './rule-backend';

export * from './plan';
export { run, type Runner, type ExecResult } from './exec';
export { type PolicyIds } from './policy-routing';
export { nftError } from './nftables';
export type { RevertTarget, RuleBackendOptions } from './rule-backend';

const DEFAULT_IDS: PolicyIds = { fwmark: DEFAULT_FWMARK, routeTable: DEFAULT_ROUTE_TABLE };

function idsOf(t: RevertTarget<RulesPlan> | undefined, fallback: PolicyIds = DEFAULT_IDS): PolicyIds {
  const ids = t ? { fwmark: t.fwmark, routeTable: t.routeTable } : fallback;
  validatePolicyIds(ids);
  return ids;
}

function isPlan(x: RulesPlan | RulesConfig): x is RulesPlan {
  return typeof (x as RulesPlan).nftScript === 'string';
}

function toPlan(x: RulesPlan | RulesConfig): RulesPlan {
  return isPlan(x) ? x : plan(x);
}

/** `transgate rules` output for a config or a plan: summary, exact nft script, ip commands. */
export function describePlan(x: RulesPlan | RulesConfig): string {
  return renderPlan(toPlan(x));
}

export class NftablesRuleBackend implements RuleBackend<RulesPlan> {
  readonly name = 'nftables' as const;
  private readonly runner: Runner;
  /** ids of the last successful apply(), for revert() without arguments. */
  private applied: PolicyIds | undefined;

  constructor(options: RuleBackendOptions = {}) {
    const base = options.runner ?? run;
    this.runner = options.netns ? netnsRunner(options.netns, base) : base;
  }

  plan(cfg: RulesConfig): RulesPlan {
    return plan(cfg);
  }

  async check(x: RulesPlan | RulesConfig): Promise<void> {
    const p = toPlan(x);
    await nftPreflight(this.runner);
    await nftApplyScript(this.runner, p.nftScript, { check: true });
  }

  async apply(x: RulesPlan | RulesConfig): Promise<RulesPlan> {
    const p = toPlan(x);
    const ids = idsOf(p);
    await nftPreflight(this.runner);
    if (p.routes.length > 0) {
      // Fail before touching anything when `ip` is missing (throws "ip not found: install iproute2 ...").
      await this.runner(['ip', '-V']);
    }
    // One transaction: either the new table replaces any old one, or nothing changes.
    await nftApplyScript(this.runner, p.nftScript);
    try {
      if (p.routes.length > 0) {
        await installPolicyRoutes(this.runner, p.routes, ids);
      } else {
        // redirect mode: no policy routing, but drop what a crashed tproxy run may have left.
        await removePolicyRoutes(this.runner, ids);
      }
    } catch (err) {
      try {
        await this.revert(p.bridge ? p : ids);
      } catch {
        /* report the original failure */
      }
      throw withContext('apply netfilter rules (reverted)', err, ErrorCodes.RULES);
    }
    this.applied = ids;
    return p;
  }

  async revert(target?: RevertTarget<RulesPlan>): Promise<boolean> {
    const ids = idsOf(target, this.applied);
    let removed = false;
    let first: unknown;
    try {
      removed = await nftDeleteTable(this.runner);
      // Bridge mode's table (--bridge); `transgate clear` removes it whatever the flags.
      if (target && 'bridge' in target && target.bridge && (await nftDeleteTable(this.runner, BRIDGE_TABLE))) removed = true;
    } catch (err) {
      first = err;
    }
    try {
      if ((await removePolicyRoutes(this.runner, ids)) > 0) removed = true;
    } catch (err) {
      first ??= err;
    }
    if (first !== undefined) throw withContext('revert netfilter rules', first, ErrorCodes.RULES);
    if (!target || (this.applied && ids.fwmark === this.applied.fwmark && ids.routeTable === this.applied.routeTable)) {
      this.applied = undefined;
    }
    return removed;
  }

  clear(target?: RevertTarget<RulesPlan>): Promise<boolean> {
    return this.revert(target);
  }

  async isInstalled(ids?: PolicyIds): Promise<boolean> {
    const i = idsOf(ids);
    if ((await nftListTable(this.runner)) !== undefined) return true;
    return (await this.rules(i)).length > 0;
  }

  async describeInstalled(ids?: PolicyIds): Promise<string> {
    const i = idsOf(ids);
    const table = await nftListTable(this.runner);
    const rules = await this.rules(i);
    const routes = rules.length > 0 || table !== undefined ? await this.tableRoutes(i) : [];
    const out: string[] = [];
    out.push(table !== undefined ? `nftables table ${TABLE}:\n${table.trimEnd()}` : `nftables table ${TABLE}: not installed`);
    out.push(rules.length > 0 ? `policy routing rules:\n${rules.map((l) => `  ${l}`).join('\n')}` : 'policy routing rules: none');
    if (routes.length > 0) out.push(`routes:\n${routes.map((l) => `  ${l}`).join('\n')}`);
    return `${out.join('\n')}\n`;
  }

  private async rules(ids: PolicyIds): Promise<string[]> {
    try {
      return await listRules(this.runner, ids);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw err;
    }
  }

  private async tableRoutes(ids: PolicyIds): Promise<string[]> {
    try {
      return await listTableRoutes(this.runner, ids);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw err;
    }
  }
}

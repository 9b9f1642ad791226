/**
 * RuleBackend: what every firewall backend (nftables, iptables,
 * iptables-legacy) offers, and all that its users (the gateway's
 * Interception, `transgate clear`, doctor) may rely on.
 */
import type { Runner } from './exec';
import type { RulesConfig, RulesPlan } from './plan';
import type { PolicyIds, PolicyRoute } from './policy-routing';

/** The iptables binaries transgate drives: iptables-nft (`iptables`) or the legacy one. */
export type IptablesVariant = 'iptables' | 'iptables-legacy';

/** What the iptables backend applies: restore input per family and the policy routes. */
export interface IptablesPlan {
  backend: IptablesVariant;
  mode: RulesConfig['mode'];
  /** `iptables-restore --noflush` input, per family (absent: family off). */
  restore4?: string;
  restore6?: string;
  routes: PolicyRoute[];
  summary: string;
  fwmark: number;
  routeTable: number;
  rulePriority: number;
}

/** A plan of either backend. */
export type AnyRulesPlan = RulesPlan | IptablesPlan;

/** revert() accepts the config, the plan, or just the numbers (after a crash). */
export type RevertTarget<P extends AnyRulesPlan = AnyRulesPlan> = RulesConfig | P | PolicyIds;

export interface RuleBackend<P extends AnyRulesPlan = AnyRulesPlan> {
  readonly name: 'nftables' | IptablesVariant;
  /** Pure: the exact script and commands apply() would run. */
  plan(cfg: RulesConfig): P;
  /** Checks with the kernel (nft -c) or the binaries (iptables -S) without changing anything. */
  check(p: P | RulesConfig): Promise<void>;
  /**
   * Installs atomically (a config is planned first): on any failure everything
   * of ours is removed again and the error is thrown. Returns the plan applied.
   */
  apply(p: P | RulesConfig): Promise<P>;
  /**
   * Removes our rules and policy routes. Idempotent; safe when nothing is
   * installed. Without a target: the ids of the last apply(), else the
   * defaults (0x7467 / 7467). Resolves true when something was removed.
   */
  revert(target?: RevertTarget<P>): Promise<boolean>;
  /** Same as revert(): for `transgate clear`. */
  clear(target?: RevertTarget<P>): Promise<boolean>;
  /** Whether any rule of ours (nftables: or any of our ip rules) is present. */
  isInstalled(ids?: PolicyIds): Promise<boolean>;
  /** What of ours is installed, for doctor. */
  describeInstalled(ids?: PolicyIds): Promise<string>;
}

export interface RuleBackendOptions {
  /** Runs commands; default: run them directly. */
  runner?: Runner;
  /** Run every command inside this network namespace (`ip netns exec NAME`). */
  netns?: string;
}

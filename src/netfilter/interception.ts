/**
 * Interception: the host setup a run needs, as one lifecycle.
 *
 *   plan()    reads only: the sysctls to change, the rules (routes read now,
 *             the uplink decision and anything odd logged). Nothing changes.
 *   apply()   sysctls first, then the rules: the gateway calls it after its
 *             listeners are up, so nothing is intercepted before a listener
 *             can take it.
 *   revert()  rules first (clients stop being sent to listeners that are
 *             going away), then the sysctls. Idempotent; safe after a failed
 *             plan() or apply(). --fail-closed keeps both: clients are
 *             refused, not let through un-proxied, until transgate runs
 *             again or `transgate clear` (clearAll) removes them.
 */
import type { Config } from '../config/config';
import { rulesConfigForRun } from './backend';
import type { RulesConfig } from './plan';
import type { RuleBackend } from './rule-backend';
import {
  applySysctls,
  bridgesBlockingTproxy,
  describeChange,
  dropSysctlState,
  hostBridges,
  ipv4Interfaces,
  ipv6Interfaces,
  planSysctls,
  readSysctl,
  restoreSysctls,
  saveSysctlState,
  sysctlStateFile,
  sysctlWants,
  type SysctlChange,
  type SysctlPlan,
} from './sysctl';

export interface InterceptionLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** What apply() will do; undefined parts are left alone (--no-rules, --no-sysctl). */
export interface InterceptionPlan {
  sysctls?: SysctlPlan;
  /** With the bridge's MAC and this host's uplinks. */
  rules?: RulesConfig;
}

export class Interception {
  private planned: InterceptionPlan | undefined;
  /** What apply() changed in /proc/sys, put back by revert(). */
  private sysctlsChanged: SysctlChange[] = [];
  /** The rules as applied (bridge MAC included), for revert(). */
  private rulesApplied: RulesConfig | undefined;

  /** `backend` undefined, or --no-rules: nothing is installed (plan() still warns). */
  constructor(
    private readonly cfg: Config,
    private readonly log: InterceptionLog,
    private readonly backend: RuleBackend | undefined,
  ) {}

  /** Whether the rules are in place (and revert() would remove them). */
  get rulesInstalled(): boolean {
    return this.rulesApplied !== undefined;
  }

  async plan(): Promise<InterceptionPlan> {
    const cfg = this.cfg;
    if (cfg.mode === 'tproxy' && !cfg.bridge) {
      const blocked = bridgesBlockingTproxy({ lan: cfg.lan, read: readSysctl, bridges: hostBridges() });
      if (blocked.length > 0) {
        this.log.warn(
          `clients behind bridge ${blocked.join(', ')} will not be intercepted in tproxy mode: net.bridge.bridge-nf-call-iptables = 1 ` +
            `(br_netfilter, as Docker sets it) runs the TPROXY rule inside the bridge path, where it cannot work. ` +
            `Use --mode redirect (Docker hosts), or set the sysctl to 0 if nothing on this host needs it`,
        );
      }
    }
    const p: InterceptionPlan = {};
    if (this.backend && cfg.installRules && cfg.sysctl) {
      // Forwarding on, redirects off: without them the clients' other traffic
      // dies here, or ICMP redirects teach them to skip this gateway.
      const interfaces = cfg.lan.length > 0 ? cfg.lan : ipv4Interfaces();
      const bridgeTproxy = cfg.bridge !== undefined && cfg.mode === 'tproxy';
      // Uplinks: with --lan, every other interface; without, all (a LAN interface may be the uplink too).
      const raInterfaces = ipv6Interfaces().filter((i) => !cfg.lan.includes(i));
      p.sysctls = planSysctls(sysctlWants({ ipv4: cfg.ipv4, ipv6: cfg.ipv6, interfaces, bridgeTproxy, raInterfaces }), readSysctl);
      for (const m of p.sysctls.missing) this.log.warn(`sysctl ${m.key}: not present here, not set (${m.why})`);
    }
    if (this.backend && cfg.installRules) p.rules = await rulesConfigForRun(cfg, this.log);
    this.planned = p;
    return p;
  }

  /** Applies plan() (the last one, or a new one); on failure what is applied stays for revert(). */
  async apply(p?: InterceptionPlan): Promise<void> {
    const plan = p ?? this.planned ?? (await this.plan());
    if (plan.sysctls) {
      this.sysctlsChanged = applySysctls(plan.sysctls.changes);
      for (const c of this.sysctlsChanged) this.log.info(describeChange(c));
      if (this.sysctlsChanged.length > 0) {
        try {
          saveSysctlState(this.sysctlsChanged);
        } catch (err) {
          this.log.warn(
            `cannot save ${sysctlStateFile()} (${(err as Error).message}): after a crash, 'transgate clear' cannot restore the sysctls`,
          );
        }
      }
    }
    if (plan.rules && this.backend) {
      // all-or-nothing: a failed apply has removed what it installed.
      await this.backend.apply(plan.rules);
      this.rulesApplied = plan.rules;
      this.log.info(
        `installed ${this.cfg.mode} rules (${this.backend.name === 'nftables' ? 'nftables table inet transgate' : `${this.backend.name} chains TRANSGATE*`})`,
      );
    }
  }

  /** Idempotent. Rules first, then sysctls; with --fail-closed and the rules in place, both stay. Never throws: failures are logged. */
  async revert(): Promise<void> {
    if (this.rulesApplied && this.cfg.failClosed) {
      // --fail-closed: rules and sysctls outlive us, so clients get resets, not un-proxied access; `transgate clear` removes both.
      this.log.info(
        "leaving rules and sysctls in place (--fail-closed): clients are refused until transgate runs again; 'transgate clear' removes them",
      );
      this.rulesApplied = undefined;
      this.sysctlsChanged = [];
    }
    const rules = this.rulesApplied;
    if (rules && this.backend) {
      this.rulesApplied = undefined;
      try {
        await this.backend.revert(rules);
        this.log.info('removed rules');
      } catch (err) {
        this.log.error(`removing rules failed: ${(err as Error).message}; run 'transgate clear'`);
      }
    }
    if (this.sysctlsChanged.length > 0) {
      const changed = this.sysctlsChanged;
      this.sysctlsChanged = [];
      try {
        restoreSysctls(changed);
        dropSysctlState();
        for (const c of changed) this.log.info(describeChange(c, true));
      } catch (err) {
        this.log.error(
          `restoring sysctls failed: ${(err as Error).message}; set them back by hand: ${changed.map((c) => `${c.key}=${c.from}`).join(' ')}`,
        );
      }
    }
  }
}

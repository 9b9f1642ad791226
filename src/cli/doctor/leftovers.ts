import type { Config } from '../../config/config';
import { haveBinary, rulesConfigFor } from '../../netfilter/backend';
import { NftablesRuleBackend } from '../../netfilter/index';
import { IptablesRuleBackend } from '../../netfilter/iptables';
import { loadSysctlState } from '../../netfilter/sysctl';
import { fail, ok, warn, type Check, type DoctorDeps } from './check';

export async function checkLeftovers(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const rc = rulesConfigFor(cfg);
  const found: string[] = [];
  try {
    if (await new NftablesRuleBackend({ runner: d.runner }).isInstalled(rc)) found.push('nftables table inet transgate or its ip rules');
  } catch {
    /* no nft, or no permission: reported above */
  }
  for (const v of ['iptables', 'iptables-legacy'] as const) {
    if (!haveBinary(v)) continue;
    try {
      if (await new IptablesRuleBackend(v, { runner: d.runner }).isInstalled()) found.push(`${v} TRANSGATE chains`);
    } catch {
      /* as above */
    }
  }
  const sysctls = loadSysctlState().filter((c) => d.readSysctl(c.path) === c.to);
  if (sysctls.length > 0) found.push(`sysctls set by transgate (${sysctls.map((c) => `${c.key}=${c.to}, was ${c.from}`).join('; ')})`);
  const running = d.runningTransgate();
  if (found.length === 0) return [ok('leftovers', 'no transgate rules installed')];
  if (running.length > 0) return [ok('leftovers', `${found.join(', ')} installed by the running transgate (pid ${running.join(', ')})`)];
  if (cfg.failClosed) {
    return [
      warn(
        'leftovers',
        `${found.join(', ')} present but no transgate runs: left by --fail-closed, clients are refused until transgate runs again`,
        'start transgate, or sudo npx transgate clear to give the clients plain forwarding',
      ),
    ];
  }
  return [
    fail(
      'leftovers',
      `${found.join(', ')} present but no transgate runs: a crashed run left them, clients' traffic goes to a dead listener`,
      'sudo npx transgate clear',
    ),
  ];
}

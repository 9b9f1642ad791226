/**
 * `transgate doctor`: checks this host, its kernel and the upstream proxy,
 * each with OK / WARN / FAIL and, for anything not OK, a concrete fix.
 * Changes nothing, except a throwaway nftables check (`nft -c`) that the
 * kernel validates and discards. Exit status 1 on any FAIL.
 */
import type { Config } from '../../config/config';
import { errText, fail, type Check, type CheckStatus, type DoctorDeps } from './check';
import { defaultDoctorDeps } from './deps';
import { checkKernel } from './kernel';
import { checkLeftovers } from './leftovers';
import { checkPrivileges } from './privileges';
import { checkProxy } from './proxy';
import { splitTarget } from '../../core/names';
import { checkReturnPath } from './return-path';
import { checkSysctls } from './sysctls';
import { checkUplink } from './uplink';

export type { Check, DoctorDeps } from './check';
export { neighbourOf } from './return-path';

/** Runs every check; never throws (a check that breaks is reported as FAIL). */
export async function runDoctor(cfg: Config, deps: DoctorDeps = defaultDoctorDeps()): Promise<Check[]> {
  const checks: Check[] = [checkPrivileges(deps)];
  const guard = async (name: string, f: () => Promise<Check[]> | Check[]): Promise<void> => {
    try {
      checks.push(...(await f()));
    } catch (err) {
      checks.push(fail(name, `check failed: ${errText(err)}`, 'report this with the output of transgate doctor --json'));
    }
  };
  if (deps.isRoot()) await guard('kernel', () => checkKernel(cfg, deps));
  await guard('sysctl', () => checkSysctls(cfg, deps));
  await guard('return-path', () => checkReturnPath(cfg, deps));
  await guard('uplink', () => checkUplink(cfg, deps));
  await guard('proxy', () => checkProxy(cfg, deps));
  if (deps.isRoot()) await guard('leftovers', () => checkLeftovers(cfg, deps));
  return checks;
}

export function formatChecks(checks: readonly Check[]): string {
  const lines = ['transgate doctor'];
  for (const c of checks) {
    lines.push(`${c.status.padEnd(4)}  ${c.name}: ${c.message}`);
    if (c.fix) lines.push(`      fix: ${c.fix}`);
  }
  const n = (s: CheckStatus) => checks.filter((c) => c.status === s).length;
  lines.push(`${n('FAIL')} FAIL, ${n('WARN')} WARN, ${n('OK')} OK`);
  return `${lines.join('\n')}\n`;
}

/** `transgate doctor`: prints, returns the exit status. */
export async function doctorCommand(cfg: Config, write: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  const checks = await runDoctor(cfg);
  const failed = checks.some((c) => c.status === 'FAIL');
  write(cfg.json ? `${JSON.stringify({ ok: !failed, checks }, null, 2)}\n` : formatChecks(checks));
  return failed ? 1 : 0;
}

// Exported for unit tests.
export const _internal = { splitTarget, checkSysctls, checkUplink, checkProxy };

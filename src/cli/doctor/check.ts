/** What a check returns, and the host access checks are given (DoctorDeps: faked in unit tests). */
import type { Runner } from '../../netfilter/exec';
import type { SysctlReader } from '../../netfilter/sysctl';

export type CheckStatus = 'OK' | 'WARN' | 'FAIL';

export interface Check {
  /** Short stable name: privileges, kernel, sysctl, return-path, uplink, proxy, leftovers. */
  name: string;
  status: CheckStatus;
  message: string;
  /** What to do about it (WARN and FAIL). */
  fix?: string;
}

export interface DoctorDeps {
  runner: Runner;
  readSysctl: SysctlReader;
  isRoot: () => boolean;
  /** Other transgate processes in this network namespace. */
  runningTransgate: () => number[];
  /** Bridges on this host (default: read from sysfs). */
  bridges?: () => string[];
  timeoutMs: number;
}

export const ok = (name: string, message: string): Check => ({ name, status: 'OK', message });
export const warn = (name: string, message: string, fix: string): Check => ({ name, status: 'WARN', message, fix });
export const fail = (name: string, message: string, fix: string): Check => ({ name, status: 'FAIL', message, fix });

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

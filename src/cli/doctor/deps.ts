/** The real host access behind DoctorDeps. */
import fs from 'node:fs';
import { run } from '../../netfilter/exec';
import { readSysctl } from '../../netfilter/sysctl';
import type { DoctorDeps } from './check';

/** CAP_NET_ADMIN (bit 12) in the effective set, or uid 0. */
function hasNetAdmin(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? (BigInt(`0x${m[1]}`) & (1n << 12n)) !== 0n : false;
  } catch {
    return false;
  }
}

/** Pids of other transgate processes (bin/transgate.js run, not doctor/rules/clear) in our network namespace. */
function runningTransgate(): number[] {
  let ours: string;
  try {
    ours = fs.readlinkSync('/proc/self/ns/net');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (!argv.some((a) => /(^|\/)transgate(\.js)?$/.test(a))) continue;
      if (argv.some((a) => a === 'doctor' || a === 'rules' || a === 'clear')) continue;
      if (fs.readlinkSync(`/proc/${e}/ns/net`) !== ours) continue;
      out.push(Number(e));
    } catch {
      /* gone or not ours to read */
    }
  }
  return out;
}

export const defaultDoctorDeps = (): DoctorDeps => ({
  runner: run,
  readSysctl,
  isRoot: hasNetAdmin,
  runningTransgate,
  timeoutMs: 5000,
});

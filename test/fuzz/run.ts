/**
 * Runs the fuzz targets: FUZZ_ITERATIONS inputs each (default 100,000),
 * seeded by FUZZ_SEED (default below, printed either way), FUZZ_TARGET to
 * run some (comma-separated names). FUZZ_REPLAY=HEX checks that one input
 * against the target(s) instead. Exits 1 on the first failing input, which
 * is printed as hex with its seed and iteration.
 */
import { runTarget, type Target } from './harness';
import { dnsTarget } from './dns.fuzz';
import { framerTarget } from './framer.fuzz';
import { httpTarget } from './http.fuzz';
import { namesTarget } from './names.fuzz';
import { ntlmTarget } from './ntlm.fuzz';
import { challengeTarget } from './challenge.fuzz';
import { socks5Target } from './socks5.fuzz';
import { tlsTarget } from './tls.fuzz';

const DEFAULT_SEED = 0x7a11f022;
const DEFAULT_ITERATIONS = 100_000;

const all: Target[] = [dnsTarget, tlsTarget, httpTarget, framerTarget, namesTarget, ntlmTarget, challengeTarget, socks5Target];

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    console.error(`fuzz: ${name}=${v} is not an integer in 0..2^32-1`);
    process.exit(2);
  }
  return n;
}

function selected(): Target[] {
  const names = (process.env.FUZZ_TARGET ?? '').split(',').filter((s) => s !== '');
  if (names.length === 0) return all;
  const unknown = names.filter((n) => !all.some((t) => t.name === n));
  if (unknown.length > 0) {
    console.error(`fuzz: unknown target(s) ${unknown.join(', ')}; known: ${all.map((t) => t.name).join(', ')}`);
    process.exit(2);
  }
  return all.filter((t) => names.includes(t.name));
}

function describe(t: Target, input: Buffer): string {
  return t.describe ? t.describe(input) : input.toString('hex');
}

function main(): number {
  const targets = selected();
  const replay = process.env.FUZZ_REPLAY;
  if (replay !== undefined) {
    const input = Buffer.from(replay.replace(/\s+/g, ''), 'hex');
    let status = 0;
    for (const t of targets) {
      try {
        t.check(input);
        console.log(`fuzz ${t.name}: replayed input passes`);
      } catch (err) {
        console.error(`fuzz ${t.name}: replayed input fails:`, err);
        status = 1;
      }
    }
    return status;
  }

  const seed = envInt('FUZZ_SEED', DEFAULT_SEED);
  const iterations = envInt('FUZZ_ITERATIONS', DEFAULT_ITERATIONS);
  const seedText = `0x${seed.toString(16)}`;
  console.log(`fuzz: seed ${seedText} (FUZZ_SEED=${seed}), ${iterations} inputs per target`);
  const started = performance.now();
  for (const t of targets) {
    const res = runTarget(t, seed, iterations);
    if (res.failure) {
      const f = res.failure;
      console.error(`fuzz ${t.name}: FAILED at input ${f.iteration} of ${iterations} (seed ${seedText})`);
      console.error(`  input (${f.input.length} bytes): ${describe(t, f.input)}`);
      console.error('  error:', f.error);
      console.error(`  replay: FUZZ_SEED=${seed} FUZZ_TARGET=${t.name} FUZZ_ITERATIONS=${f.iteration + 1} node dist/test/fuzz/run.js`);
      if (f.input.length <= 4096)
        console.error(`      or: FUZZ_TARGET=${t.name} FUZZ_REPLAY=${f.input.toString('hex')} node dist/test/fuzz/run.js`);
      return 1;
    }
    const stats = t.stats
      ? ` [${Object.entries(t.stats)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}]`
      : '';
    console.log(`fuzz ${t.name}: ${res.iterations} inputs ok in ${(res.ms / 1000).toFixed(1)} s (seed ${seedText})${stats}`);
  }
  console.log(`fuzz: all ${targets.length} targets ok in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}

process.exitCode = main();

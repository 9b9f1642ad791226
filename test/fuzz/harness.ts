/**
 * A small deterministic fuzz harness: a seeded PRNG, byte mutators, and a
 * loop that runs one target's checks over generated and mutated inputs.
 * No dependency: every input follows from (seed, target, iteration), so a
 * failure printed with its seed, iteration and hex input can be replayed
 * (FUZZ_SEED, FUZZ_TARGET, FUZZ_REPLAY).
 */

/** mulberry32: 32 bits of state, good enough to spread inputs, and trivially reproducible. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.u32() / 0x100000000) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** FNV-1a over a string, to derive per-target and per-iteration seeds from the run's seed. */
export function hash32(text: string, h = 0x811c9dc5): number {
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Bytes parsers treat specially: line ends, NUL, DEL, the high half, separators, length-ish extremes. */
export const INTERESTING_BYTES = [
  0x00, 0x01, 0x09, 0x0a, 0x0d, 0x20, 0x2e, 0x3a, 0x40, 0x5b, 0x5d, 0x7f, 0x80, 0xc0, 0xff, 0x3f, 0x40, 0x16, 0x03,
];

function interestingByte(r: Rng): number {
  return r.chance(0.7) ? r.pick(INTERESTING_BYTES) : r.range(0x80, 0xff);
}

/** One random change: the usual byte-level mutations plus length-field tweaks. */
export function mutateOnce(r: Rng, buf: Buffer, corpus: readonly Buffer[]): Buffer {
  const n = buf.length;
  switch (r.int(12)) {
    case 0: {
      // bit flip
      if (n === 0) return Buffer.from([r.u32() & 0xff]);
      const out = Buffer.from(buf);
      out[r.int(n)]! ^= 1 << r.int(8);
      return out;
    }
    case 1: {
      // one byte set to an interesting value
      if (n === 0) return Buffer.from([interestingByte(r)]);
      const out = Buffer.from(buf);
      out[r.int(n)] = interestingByte(r);
      return out;
    }
    case 2: {
      // insert a few bytes (random or interesting)
      const at = r.int(n + 1);
      const len = r.range(1, 8);
      const ins = Buffer.alloc(len);
      for (let i = 0; i < len; i++) ins[i] = r.chance(0.5) ? interestingByte(r) : r.u32() & 0xff;
      return Buffer.concat([buf.subarray(0, at), ins, buf.subarray(at)]);
    }
    case 3: {
      // delete a range
      if (n === 0) return buf;
      const at = r.int(n);
      const len = r.range(1, Math.min(16, n - at));
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + len)]);
    }
    case 4: {
      // splice: our head with another input's tail
      const other = r.pick(corpus);
      return Buffer.concat([buf.subarray(0, r.int(n + 1)), other.subarray(r.int(other.length + 1))]);
    }
    case 5:
    case 6: {
      // length-field tweak: a u8, u16 or u24 somewhere, nudged or set to an extreme
      if (n < 3) return buf;
      const width = r.range(1, 3);
      const at = r.int(n - width + 1);
      const max = 2 ** (8 * width) - 1;
      const cur = buf.readUIntBE(at, width);
      const next = r.pick([0, 1, max, cur + 1, cur - 1, cur + r.range(2, 64), cur - r.range(2, 64), r.int(max + 1)]);
      const out = Buffer.from(buf);
      out.writeUIntBE(((next % (max + 1)) + (max + 1)) % (max + 1), at, width);
      return out;
    }
    case 7:
      // truncation
      return buf.subarray(0, r.int(n + 1));
    case 8: {
      // a chunk repeated
      if (n === 0) return buf;
      const at = r.int(n);
      const chunk = buf.subarray(at, at + r.range(1, 32));
      const times = r.range(1, r.chance(0.1) ? 200 : 4);
      return Buffer.concat([buf.subarray(0, at), ...Array<Buffer>(times).fill(chunk), buf.subarray(at)]);
    }
    case 9:
      // random tail
      return Buffer.concat([buf, r.bytes(r.range(1, 32))]);
    case 10: {
      // a run overwritten with one interesting byte
      if (n === 0) return buf;
      const out = Buffer.from(buf);
      const at = r.int(n);
      out.fill(interestingByte(r), at, Math.min(n, at + r.range(1, 8)));
      return out;
    }
    default: {
      // swap two bytes
      if (n < 2) return buf;
      const out = Buffer.from(buf);
      const a = r.int(n);
      const b = r.int(n);
      const t = out[a]!;
      out[a] = out[b]!;
      out[b] = t;
      return out;
    }
  }
}

export function mutate(r: Rng, buf: Buffer, corpus: readonly Buffer[]): Buffer {
  let out = buf;
  const rounds = r.chance(0.6) ? 1 : r.range(2, 6);
  for (let i = 0; i < rounds; i++) out = mutateOnce(r, out, corpus);
  return out;
}

export interface Target {
  name: string;
  /** A valid-ish input built from parts. */
  generate(r: Rng): Buffer;
  /** Byte fixtures from the unit tests, mutated as well. */
  fixtures: readonly Buffer[];
  /** Throws (an assertion or the parser's own throw) when an invariant does not hold. */
  check(input: Buffer): void;
  /** How an input is printed on failure (default: one hex line). */
  describe?(input: Buffer): string;
  /** How many inputs reached each interesting outcome, printed with the count: shows the inputs get deep. */
  stats?: Record<string, number>;
}

/** Where each iteration's input comes from: fresh structure, mutations of structure or fixtures, or noise. */
export function inputFor(t: Target, r: Rng): Buffer {
  const mode = r.int(100);
  if (mode < 30) return t.generate(r);
  if (mode < 75) return mutate(r, t.generate(r), t.fixtures.length > 0 ? t.fixtures : [t.generate(r)]);
  if (mode < 92 && t.fixtures.length > 0) return mutate(r, r.pick(t.fixtures), t.fixtures);
  const out = r.bytes(r.int(r.chance(0.9) ? 64 : 2048));
  for (let i = 0; i < out.length; i++) if (r.chance(0.2)) out[i] = interestingByte(r);
  return out;
}

export interface RunResult {
  name: string;
  iterations: number;
  ms: number;
  failure?: { iteration: number; input: Buffer; error: unknown };
}

export function runTarget(t: Target, seed: number, iterations: number): RunResult {
  const started = performance.now();
  const base = hash32(t.name, seed);
  for (let i = 0; i < iterations; i++) {
    // Each iteration has its own stream, so iteration i is the same input whatever ran before it.
    const r = new Rng(hash32(String(i), base));
    const input = inputFor(t, r);
    try {
      t.check(input);
    } catch (error) {
      return { name: t.name, iterations: i + 1, ms: performance.now() - started, failure: { iteration: i, input, error } };
    }
  }
  return { name: t.name, iterations, ms: performance.now() - started };
}

/** A stream derived from the input's bytes, for checks that pick split points: the same input, the same cuts. */
export function inputRng(buf: Buffer): Rng {
  let h = 0x811c9dc5 ^ buf.length;
  const step = Math.max(1, buf.length >> 6);
  for (let i = 0; i < buf.length; i += step) h = Math.imul(h ^ buf[i]!, 0x01000193);
  return new Rng(h);
}

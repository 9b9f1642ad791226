/**
 * `node dist/bench/cache-micro.js`: ns per DnsCache get (hit) and set
 * (with eviction, the cache full), and per NameMap remember, in one
 * process, no I/O. The DNS gateway serves cache hits at about 50k/s and
 * writes the name map once per answer, so a change to the LRU under them
 * is measured here before and after. Median of ROUNDS rounds.
 *
 * Knobs: CACHE_MICRO_OPS (per round, default 2e5), CACHE_MICRO_ROUNDS (default 7).
 */
import { DnsCache } from '../src/dns/cache';
import { parseMessage } from '../src/dns/message';
import { NameMap } from '../src/dns/name-map';

const OPS = Number(process.env.CACHE_MICRO_OPS ?? 2e5) || 2e5;
const ROUNDS = Number(process.env.CACHE_MICRO_ROUNDS ?? 7) || 7;
const CAPACITY = 10_000;

const ANSWER = Buffer.from('12348180000100010000000001610000010001c00c00010001 0000003c0004cb007102'.replace(/ /g, ''), 'hex');
const PARSED = parseMessage(ANSWER);
// Keys shaped like the resolver's (type|class|name), more of them than the cache holds for the set run.
const KEYS = Array.from({ length: CAPACITY * 2 }, (_, i) => `1|1|host${i}.example.test`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[(s.length - 1) >> 1]!;
}

function nsPerOp(run: () => void): number {
  const t = process.hrtime.bigint();
  run();
  return Number(process.hrtime.bigint() - t) / OPS;
}

function measure(name: string, run: () => void): void {
  run(); // warm up: let the JIT settle before timing
  const xs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) xs.push(nsPerOp(run));
  console.log(
    `${name.padEnd(28)} ${median(xs).toFixed(1).padStart(7)} ns/op (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`,
  );
}

const hits = new DnsCache(CAPACITY);
for (let i = 0; i < CAPACITY; i++) hits.set(KEYS[i]!, ANSWER, PARSED, 3600);
let sink = 0;
measure('DnsCache get (hit)', () => {
  for (let i = 0; i < OPS; i++) sink += hits.get(KEYS[i % CAPACITY]!)!.age;
});

const full = new DnsCache(CAPACITY);
measure('DnsCache set (evicting)', () => {
  for (let i = 0; i < OPS; i++) full.set(KEYS[i % KEYS.length]!, ANSWER, PARSED, 3600);
});

const names = new NameMap(CAPACITY);
const ADDRS = Array.from({ length: CAPACITY * 2 }, (_, i) => `203.0.${(i >> 8) & 255}.${i & 255}`);
measure('NameMap remember (evicting)', () => {
  for (let i = 0; i < OPS; i++) names.remember('192.0.2.2', ADDRS[i % ADDRS.length]!, 'www.example.test', 60);
});
if (sink < 0) console.log(sink);

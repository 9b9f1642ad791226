/**
 * `node dist/bench/ip-micro.js`: ns per CidrSet.has (the per-connection
 * client and internal-address checks), per answerAddresses of a DNS answer
 * with two A and two AAAA records (the per-answer name-map write), and per
 * IPv6 canonicalization (names.parseIPv6, every bracketed Host or
 * authority), in one process, no I/O. Median of ROUNDS rounds.
 *
 * Knobs: IP_MICRO_OPS (per round, default 2e5), IP_MICRO_ROUNDS (default 7).
 */
import { CidrSet } from '../src/core/ip';
import { parseIPv6 } from '../src/core/names';
import { answerAddresses, parseMessage } from '../src/dns/message';

const OPS = Number(process.env.IP_MICRO_OPS ?? 2e5) || 2e5;
const ROUNDS = Number(process.env.IP_MICRO_ROUNDS ?? 7) || 7;

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
    `${name.padEnd(34)} ${median(xs).toFixed(1).padStart(7)} ns/op (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`,
  );
}

// A gateway's sets: a few client ranges, the internal addresses (gateway.ts) as they come.
const clients = new CidrSet();
for (const r of ['192.168.1.0/24', '10.0.0.0/8', '172.16.0.0/12', '2001:db8:1::/64', 'fd00::/8']) clients.add(r);

// Client addresses as a dual-stack socket reports them: plain v4, v4-mapped, v6; hits and misses.
const V4 = Array.from({ length: 256 }, (_, i) => `192.168.${i & 3}.${i}`);
const MAPPED = V4.map((a) => `::ffff:${a}`);
const V6 = Array.from({ length: 256 }, (_, i) => `2001:db8:${i & 1}::${i.toString(16)}`);

let sink = 0;
measure('CidrSet.has v4', () => {
  for (let i = 0; i < OPS; i++) if (clients.has(V4[i & 255]!)) sink++;
});
measure('CidrSet.has v4-mapped', () => {
  for (let i = 0; i < OPS; i++) if (clients.has(MAPPED[i & 255]!)) sink++;
});
measure('CidrSet.has v6', () => {
  for (let i = 0; i < OPS; i++) if (clients.has(V6[i & 255]!)) sink++;
});

// Header (4 answers), question www.example.test A, then 2 A and 2 AAAA records pointing at the question name.
const rr = (type: string, rdata: string) => `c00c${type}00010000003c${(rdata.length / 2).toString(16).padStart(4, '0')}${rdata}`;
const ANSWER = Buffer.from(
  '12348180000100040000000003777777076578616d706c6504746573740000010001' +
    rr('0001', 'cb007102') +
    rr('0001', 'cb007103') +
    rr('001c', '20010db8000000000000000000000001') +
    rr('001c', '20010db800010000000000ab00cd0000'),
  'hex',
);
const PARSED = parseMessage(ANSWER);
measure('answerAddresses (2 A + 2 AAAA)', () => {
  for (let i = 0; i < OPS; i++) sink += answerAddresses(ANSWER, PARSED).length;
});
const LITERALS = ['2001:DB8::1', '2001:db8:0:0:1:0:0:1', '::ffff:192.0.2.1', 'fe80::a:b:c:d'];
measure('parseIPv6 (canonical text)', () => {
  for (let i = 0; i < OPS; i++) sink += parseIPv6(LITERALS[i & 3]!)!.length;
});
if (sink < 0) console.log(sink);

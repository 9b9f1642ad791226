/**
 * The DNS gateway against a hostile client on the LAN, in the namespace
 * lab with real servers (squid, the public dnsmasq answering *.example.test
 * with 203.0.113.2, the private dnsmasq): question names that write into a
 * proxy's request line, a flood from one client, private names aimed at a
 * public server of the client's choosing, and DNS over TCP to the gateway
 * itself. Raw queries are built by hand in python3, as an attacker would.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ADDR, DNS_ADDR, type ExecResult, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const MODES = ['tproxy', 'redirect'] as const;
const PUB4 = DNS_ADDR.public.v4;
const PRIV4 = DNS_ADDR.private.v4;
const GW_LAN = ADDR.gwLan.v4;
const GW_WAN = ADDR.gwWan.v4;
const ORIGIN = ADDR.origin.v4;
/** A second address on the client's interface: another client of the gateway. */
const OTHER_CLIENT = '192.0.2.3';
/** What the injected name would have added to squid's request: none of it may reach squid. */
const INJECTED = ['Via', 'GET /', 'HTTP/1.1', 'evil'];

function proxyEnv(): Record<string, string> {
  return { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl };
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 800)}`;
}

function dig(lab: Lab, args: string[]): Promise<ExecResult> {
  return lab.exec('cl', ['dig', '+time=3', '+tries=1', ...args], { timeoutMs: 15_000 });
}

function answers(r: ExecResult): string[] {
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith(';'))
    .map((l) => l.trim().split(/\s+/).slice(4).join(' '));
}

function python(lab: Lab, script: string, timeoutMs = 20_000): Promise<ExecResult> {
  return lab.exec('cl', ['/usr/bin/python3', '-c', script], { timeoutMs });
}

/** python3: q(id, labels) builds an A query from a list of labels (bytes), no compression. */
const PY_QUERY = `
import socket, struct, sys, time, select
def q(i, labels):
    name = b''.join(bytes([len(l)]) + l for l in labels) + b'\\0'
    return struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0) + name + struct.pack('>HH', 1, 1)
`;

/** Waits for a conn line (connection log) matching `pred` after `from`. */
async function connLine(gw: Gw, from: number, pred: (line: string) => boolean, timeoutMs = 5000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = gw.linesSince(from).find((l) => /\bconn id=/.test(l) && pred(l));
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no conn line; gateway output:\n${gw.linesSince(from).slice(-30).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('adversarial dns clients', { skip }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create();
    await lab.startDnsServers();
    await lab.exec('cl', ['ip', 'addr', 'add', `${OTHER_CLIENT}/24`, 'dev', 'eth0']);
  });

  after(async () => {
    await lab?.destroy();
  });

  for (const mode of MODES) {
    describe(`${mode} mode`, () => {
      // After REDIRECT a UDP query's destination is gone: the public server must be named.
      const modeArgs = ['--mode', mode, '--log-level', 'debug', ...(mode === 'redirect' ? ['--public-dns', PUB4] : [])];

      test('(a) regression: a question name with CR LF and control bytes never reaches squid; the connection goes as CONNECT address:port', async () => {
        // The name once went into the name map as it was and came back as
        // `CONNECT x HTTP/1.1\r\nVia: ...:22`, writing headers of its own.
        const gw = await lab.startGateway(modeArgs, proxyEnv());
        try {
          const script = `${PY_QUERY}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
label = b'x HTTP/1.1\\r\\nVia: 1.1 evil\\r\\n\\r\\nGET / HTTP/1.1\\r\\nX:\\x1b[31m\\x7f\\x01'
s.sendto(q(0x4242, [label, b'example', b'test']), ('${PUB4}', 53))
a, _ = s.recvfrom(4096)
rcode = struct.unpack('>H', a[2:4])[0] & 15
an = struct.unpack('>H', a[6:8])[0]
print(rcode, an, socket.inet_ntoa(a[-4:]) if an else '-')
`;
          const r = await python(lab, script);
          assert.equal(r.stdout.trim(), `0 1 ${ORIGIN}`, `the query is answered (forwarded as asked): ${show(r)}`);
          const from = gw.mark();
          const sq = await lab.squidMark();
          const s = await lab.exec(
            'cl',
            ['sh', '-c', `(printf 'probe-${mode}\\n'; sleep 1) | socat -t 2 - TCP:${ORIGIN}:22,connect-timeout=5`],
            { timeoutMs: 15_000 },
          );
          assert.equal(s.stdout, `probe-${mode}\n`, show(s));
          await lab.waitSquidLog(new RegExp(` CONNECT ${ORIGIN.replace(/\./g, '\\.')}:22 200 `), 5000, sq);
          const log = await lab.squidLogSince(sq);
          for (const bad of INJECTED) assert.ok(!log.some((l) => l.includes(bad)), `squid saw '${bad}':\n${log.join('\n')}`);
          const line = await connLine(gw, from, (l) => l.includes(`dst=${ORIGIN}:22`));
          assert.doesNotMatch(line, /[\x00-\x1f\x7f-\xff]/, `raw control bytes in: ${JSON.stringify(line)}`);
          assert.equal(parseKv(line).name, '-', line);
          // The query's own log line: escaped, whole, on one line.
          const dnsLine = gw.linesSince(0).find((l) => /\bdns client=/.test(l) && l.includes('Via'));
          assert.ok(dnsLine, gw.output());
          assert.doesNotMatch(dnsLine, /[\x00-\x1f\x7f-\xff]/);
          assert.match(dnsLine, /name=x\\032HTTP\\0471\\0461\\013\\010Via/);
        } finally {
          await gw.stop();
        }
      });

      test('(b) regression: a flood beyond --dns-client-rate is dropped; another client is still answered', async () => {
        const gw = await lab.startGateway([...modeArgs, '--dns-client-rate', '50'], proxyEnv());
        try {
          // Warm the cache, so that the flood measures the limiter, not the upstream.
          const warm = await dig(lab, [`@${PUB4}`, `flood-${mode}.example.test`, '+short']);
          assert.equal(warm.stdout.trim(), ORIGIN, show(warm));
          await new Promise((r) => setTimeout(r, 2100)); // the warm-up query's token back, and then some
          const script = `${PY_QUERY}
flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flood.bind(('${ADDR.client.v4}', 0))
flood.setblocking(False)
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(('${OTHER_CLIENT}', 0))
other.settimeout(1)
labels = [b'flood-${mode}', b'example', b'test']
sent = got = other_ok = 0
t0 = time.time()
def drain():
    global got
    while True:
        try:
            flood.recv(4096)
            got += 1
        except BlockingIOError:
            return
# 1.5 s of flood, about 2000 queries a second; the other client asks once every 100 ms meanwhile.
next_other = t0
i = 0
while time.time() - t0 < 1.5:
    for _ in range(20):
        i += 1
        try:
            flood.sendto(q(i & 0xffff, labels), ('${PUB4}', 53))
            sent += 1
        except BlockingIOError:
            pass
    drain()
    if time.time() >= next_other:
        next_other += 0.1
        other.sendto(q(7, labels), ('${PUB4}', 53))
        try:
            a = other.recv(4096)
            if struct.unpack('>H', a[6:8])[0] == 1: other_ok += 1
        except socket.timeout:
            pass
    time.sleep(0.01)
end = time.time() + 1
while time.time() < end:
    select.select([flood], [], [], 0.1)
    drain()
print(sent, got, other_ok, round(time.time() - t0 - 1, 2))
`;
          const r = await python(lab, script);
          const [sent, got, otherOk, secs] = r.stdout.trim().split(/\s+/).map(Number) as [number, number, number, number];
          assert.ok(sent >= 1500, `flood of ${sent} queries: ${show(r)}`);
          // Burst of 100 (twice the rate) plus 50/s over the flood, with slack for timing.
          assert.ok(got <= 100 + 50 * secs + 30, `the flooder got ${got} answers of ${sent} in ${secs} s: ${show(r)}`);
          assert.ok(got >= 50, `the flooder still gets its rate: ${got}`);
          assert.ok(otherOk >= 14, `the other client got ${otherOk} answers: ${show(r)}`);
        } finally {
          await gw.stop();
        }
      });

      describe('(c) private names without --private-dns', () => {
        let gw: Gw;
        const resolvDir = (): string => path.join('/etc/netns', lab.ns.gw);
        before(async () => {
          // The gateway's own resolver: the private dnsmasq (ip netns exec
          // mounts this file over /etc/resolv.conf for the gateway).
          fs.mkdirSync(resolvDir(), { recursive: true });
          fs.writeFileSync(path.join(resolvDir(), 'resolv.conf'), `nameserver ${PRIV4}\n`);
          // A way from the gateway to the public server that does not pass
          // squid: the route a leaked UDP query would take.
          await lab.exec('up', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
          await lab.exec('gw', ['ip', 'route', 'add', '203.0.113.0/24', 'via', ADDR.proxy.v4]);
          await lab.exec('in', ['ip', 'route', 'add', '198.51.100.0/24', 'via', ADDR.upInet.v4]);
          gw = await lab.startGateway([...modeArgs, '--private-domains', 'corp.test'], proxyEnv());
        });
        after(async () => {
          await gw?.stop();
          await lab.exec('gw', ['ip', 'route', 'del', '203.0.113.0/24']);
          await lab.exec('in', ['ip', 'route', 'del', '198.51.100.0/24']);
          await lab.exec('up', ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0']);
          fs.rmSync(path.join(resolvDir(), 'resolv.conf'), { force: true });
        });

        for (const proto of ['+notcp', '+tcp']) {
          test(`regression: asked of a public server (${proto.slice(1)}), a private name goes to the gateway's own resolver, never to that server`, async () => {
            // It went by UDP to whatever server the client named: a way out past the proxy.
            const name = `leak-${proto.slice(1)}-${mode}.corp.test`;
            const reach = await lab.exec('gw', ['dig', '+time=2', '+tries=1', `@${PUB4}`, 'reach.example.test', '+short']);
            assert.equal(reach.stdout.trim(), ORIGIN, `the public server is reachable from the gateway directly: ${show(reach)}`);
            const r = await dig(lab, [proto, `@${PUB4}`, name, 'A', '+noall', '+answer']);
            assert.deepEqual(answers(r), [ADDR.intranet.v4], `answered by the private server: ${show(r)}\n${gw.output().slice(-2000)}`);
            const priv = lab.dnsQueries('private').filter((l) => l.includes(` ${name} `));
            assert.equal(priv.length, 1, priv.join('\n'));
            assert.match(priv[0]!, new RegExp(`from ${GW_WAN.replace(/\./g, '\\.')}$`));
            const pub = lab.dnsQueries('public').filter((l) => l.includes(name));
            assert.deepEqual(pub, [], 'the private name reached the server the client asked');
          });
        }
      });

      test("(d) regression: DNS over TCP to the gateway's own address is answered, so truncated answers can be retried over TCP", async () => {
        // The loop check refused every connection to a local address before it looked at kind dns.
        const gw = await lab.startGateway([...modeArgs, '--public-dns', PUB4], proxyEnv());
        try {
          const tcp = await dig(lab, ['+tcp', `@${GW_LAN}`, `own-tcp-${mode}.example.test`, 'A', '+short']);
          assert.equal(tcp.stdout.trim(), ORIGIN, `${show(tcp)}\n${gw.output().slice(-2000)}`);
          const big = await dig(lab, [`@${GW_LAN}`, '+bufsize=512', 'big.example.test', 'TXT']);
          assert.match(big.stdout, /Truncated, retrying in TCP mode/, show(big));
          assert.equal(answers(big).filter((a) => a.startsWith('"')).length, 12, show(big));
        } finally {
          await gw.stop();
        }
      });
    });
  }
});

/**
 * End-to-end tests of the DNS gateway in the namespace lab, with real
 * servers: a public dnsmasq in `in` that the gateway reaches only through
 * squid (CONNECT :53), a private dnsmasq in `up` that it reaches directly,
 * and unbound serving DNS over HTTPS in `in`. Clients in `cl` ask with dig;
 * each server's query log proves where each query went.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADDR, DNS_ADDR, type ExecResult, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const MODES = ['tproxy', 'redirect'] as const;
const PUB4 = DNS_ADDR.public.v4;
const PUB6 = DNS_ADDR.public.v6;
const PRIV4 = DNS_ADDR.private.v4;
/** Where squid's connections to `in` come from: proof that a query went through the proxy. */
const SQUID_SRC = ADDR.upInet.v4;
const GW_WAN = ADDR.gwWan.v4;

function proxyEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl, ...extra };
}

function show(r: ExecResult): string {
  return `code=${r.code} ms=${r.ms}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 600)}`;
}

function dig(lab: Lab, args: string[]): Promise<ExecResult> {
  return lab.exec('cl', ['dig', '+time=4', '+tries=1', ...args], { timeoutMs: 15_000 });
}

/** The answer section's record data for dig +noall +answer output. */
function answers(r: ExecResult): string[] {
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith(';'))
    .map((l) => l.trim().split(/\s+/).slice(4).join(' '));
}

function status(r: ExecResult): string | undefined {
  return /status: ([A-Z]+)/.exec(r.stdout)?.[1];
}

function queriesFor(lab: Lab, server: 'public' | 'private', name: string): string[] {
  return lab.dnsQueries(server).filter((l) => l.includes(` ${name} `));
}

/** Waits for the gateway's dns debug line for `name` after `from`. */
async function dnsLine(
  gw: Gw,
  from: number,
  pred: (f: Record<string, string>) => boolean,
  what: string,
  timeoutMs = 5000,
): Promise<Record<string, string>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const line of gw.linesSince(from)) {
      if (!/\bdns client=/.test(line)) continue;
      const f = parseKv(line);
      if (pred(f)) return f;
    }
    if (Date.now() > deadline) throw new Error(`no dns line for ${what}; gateway output:\n${gw.linesSince(from).slice(-30).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Sends raw datagrams from cl and prints the answers as hex (one line each, or "none"). */
function rawUdp(lab: Lab, host: string, packetsHex: string[]): Promise<ExecResult> {
  const script = `
    const dgram = require('node:dgram');
    const packets = ${JSON.stringify(packetsHex)};
    (async () => {
      for (const hex of packets) {
        const s = dgram.createSocket(${JSON.stringify(host.includes(':') ? 'udp6' : 'udp4')});
        const got = await new Promise((resolve) => {
          const t = setTimeout(() => resolve('none'), 800);
          s.on('message', (m) => { clearTimeout(t); resolve(m.toString('hex')); });
          s.send(Buffer.from(hex, 'hex'), 53, ${JSON.stringify(host)});
        });
        s.close();
        console.log(got);
      }
    })();`;
  return lab.exec('cl', [process.execPath, '-e', script], { timeoutMs: 20_000 });
}

describe('dns gateway', { skip }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create();
    await lab.startDnsServers();
  });

  after(async () => {
    await lab?.destroy();
  });

  for (const mode of MODES) {
    describe(`${mode} mode`, () => {
      let gw: Gw;
      before(async () => {
        const args = [
          '--mode',
          mode,
          '--log-level',
          'debug',
          '--private-domains',
          'corp.test',
          '--private-dns',
          PRIV4,
          '--dns-timeout',
          '1s',
        ];
        // After REDIRECT a UDP query's destination is gone: the public server must be named.
        if (mode === 'redirect') args.push('--public-dns', PUB4);
        gw = await lab.startGateway(args, proxyEnv({ no_proxy: 'corp.test,direct.example.test' }));
      });
      after(async () => {
        await gw?.stop();
      });

      test('A over UDP: public name answered through the proxy, never by the private server', async () => {
        const name = `a-${mode}.example.test`;
        const from = gw.mark();
        const r = await dig(lab, [`@${PUB4}`, name, 'A', '+noall', '+answer']);
        assert.equal(r.code, 0, show(r));
        assert.deepEqual(answers(r), [ADDR.origin.v4], show(r));
        const q = queriesFor(lab, 'public', name);
        assert.equal(q.length, 1, `public server log: ${q.join('\n')}`);
        assert.match(q[0]!, new RegExp(`from ${SQUID_SRC.replace(/\./g, '\\.')}$`), 'the query reached the public server from squid');
        assert.equal(queriesFor(lab, 'private', name).length, 0, 'a public name went to the private server');
        const f = await dnsLine(gw, from, (x) => x.name === name, name);
        assert.equal(f.route, 'proxy');
        assert.equal(f.proto, 'udp');
        assert.equal(f.rcode, 'NOERROR');
      });

      test('AAAA over TCP from the client', async () => {
        const name = `aaaa-${mode}.example.test`;
        const r = await dig(lab, ['+tcp', `@${PUB4}`, name, 'AAAA', '+noall', '+answer']);
        assert.equal(r.code, 0, show(r));
        assert.deepEqual(answers(r), [ADDR.origin.v6], show(r));
        assert.equal(queriesFor(lab, 'public', name).length, 1);
      });

      test('private names go to the private server directly, never to the public one', async () => {
        const name = `intranet-${mode}.corp.test`;
        const from = gw.mark();
        const r = await dig(lab, [`@${PUB4}`, name, 'A', '+noall', '+answer']);
        assert.equal(r.code, 0, show(r));
        assert.deepEqual(answers(r), [ADDR.intranet.v4], show(r));
        const q = queriesFor(lab, 'private', name);
        assert.equal(q.length, 1, q.join('\n'));
        assert.match(q[0]!, new RegExp(`from ${GW_WAN.replace(/\./g, '\\.')}$`), 'asked directly from the gateway');
        assert.equal(queriesFor(lab, 'public', name).length, 0, 'a private name went to the public server');
        const f = await dnsLine(gw, from, (x) => x.name === name, name);
        assert.equal(f.route, 'private');
      });

      test('clients whose resolver is the gateway itself or an internal (private) address are answered too', async () => {
        // DHCP hands clients the gateway or an internal resolver: port 53 is intercepted whatever the destination.
        for (const [asked, label] of [
          [ADDR.gwLan.v4, 'gw'],
          ['10.0.0.53', 'internal'],
        ] as const) {
          const name = `asked-${label}-${mode}.corp.test`;
          const r = await dig(lab, [`@${asked}`, name, 'A', '+noall', '+answer']);
          assert.deepEqual(answers(r), [ADDR.intranet.v4], `@${asked}: ${show(r)}\n${gw.output()}`);
          assert.equal(queriesFor(lab, 'private', name).length, 1, `@${asked}: the private server answers private names`);
        }
        if (mode === 'redirect') {
          // With --public-dns, public names asked of the gateway or of an internal resolver go through the proxy.
          for (const [asked, label] of [
            [ADDR.gwLan.v4, 'gw'],
            ['10.0.0.53', 'internal'],
          ] as const) {
            const name = `asked-${label}.example.test`;
            const r = await dig(lab, [`@${asked}`, name, 'A', '+noall', '+answer']);
            assert.deepEqual(answers(r), [ADDR.origin.v4], `@${asked}: ${show(r)}`);
            const q = queriesFor(lab, 'public', name);
            assert.equal(q.length, 1, q.join('\n'));
            assert.match(q[0]!, new RegExp(`from ${SQUID_SRC.replace(/\./g, '\\.')}$`), 'through the proxy');
          }
        }
      });

      test('cache: the second identical query does not reach the server, and keeps the case asked', async () => {
        const name = `cache-${mode}.example.test`;
        const from = gw.mark();
        const first = await dig(lab, [`@${PUB4}`, name, 'A']);
        assert.equal(status(first), 'NOERROR', show(first));
        const mixed = name.toUpperCase();
        const second = await dig(lab, [`@${PUB4}`, mixed, 'A']);
        assert.equal(status(second), 'NOERROR', show(second));
        assert.match(second.stdout, new RegExp(`;${mixed.replace(/\./g, '\\.')}\\.\\s+IN\\s+A`), 'question case kept');
        assert.equal(queriesFor(lab, 'public', name).length, 1, 'second query reached the server');
        const hit = await dnsLine(gw, from, (x) => x.name === mixed, mixed);
        assert.equal(hit.cached, '1');
        // TTLs count down from the server's 300.
        const ttl = Number(/\s(\d+)\s+IN\s+A\s/.exec(second.stdout.split('ANSWER SECTION')[1] ?? '')?.[1]);
        assert.ok(ttl > 0 && ttl <= 300, `ttl ${ttl}`);
      });

      test('name recovery: SSH to a resolved address reaches squid as CONNECT name:22', async () => {
        const r = await dig(lab, [`@${PUB4}`, ADDR.names.git, 'A', '+short']);
        assert.equal(r.stdout.trim(), ADDR.origin.v4, show(r));
        const mark = await lab.squidMark();
        const s = await lab.exec(
          'cl',
          ['sh', '-c', `(printf 'ssh-probe\\n'; sleep 1) | socat -t 2 - TCP:${ADDR.origin.v4}:22,connect-timeout=5`],
          { timeoutMs: 15_000 },
        );
        assert.equal(s.stdout, 'ssh-probe\n', show(s));
        const log = await lab.squidLogSince(mark);
        assert.ok(
          log.some((l) => l.includes('CONNECT git.example.test:22')),
          `squid log:\n${log.join('\n')}`,
        );
      });

      test('name recovery honours no_proxy names: a resolved no_proxy name goes direct', async () => {
        const name = 'direct.example.test';
        const r = await dig(lab, [`@${PUB4}`, name, 'A', '+short']);
        assert.equal(r.stdout.trim(), ADDR.origin.v4, show(r));
        const from = gw.mark();
        await lab.exec('cl', ['sh', '-c', `(printf 'x\\n'; sleep 0.3) | socat -t 1 - TCP:${ADDR.origin.v4}:22,connect-timeout=3`], {
          timeoutMs: 10_000,
        });
        const deadline = Date.now() + 5000;
        let line: string | undefined;
        while (!line && Date.now() < deadline) {
          line = gw.linesSince(from).find((l) => /\bconn id=/.test(l) && l.includes(`name=${name}`));
          if (!line) await new Promise((res) => setTimeout(res, 50));
        }
        assert.ok(line, `no conn line with name=${name}:\n${gw.linesSince(from).join('\n')}`);
        assert.equal(parseKv(line).route, 'direct');
      });

      test('truncation: a big answer over UDP is cut with TC, dig retries over TCP and gets it all', async () => {
        const from = gw.mark();
        const r = await dig(lab, [`@${PUB4}`, '+bufsize=512', 'big.example.test', 'TXT']);
        assert.equal(r.code, 0, show(r));
        assert.match(r.stdout, /Truncated, retrying in TCP mode/, show(r));
        assert.equal(answers(r).filter((a) => a.startsWith('"')).length, 12, show(r));
        await dnsLine(gw, from, (x) => x.name === 'big.example.test' && x.proto === 'udp', 'udp');
        await dnsLine(gw, from, (x) => x.name === 'big.example.test' && x.proto === 'tcp', 'tcp');
      });

      test('IPv6 client asking an IPv6 server', async () => {
        const name = `v6-${mode}.example.test`;
        const r = await dig(lab, ['-6', `@${PUB6}`, name, 'AAAA', '+noall', '+answer']);
        assert.equal(r.code, 0, show(r));
        assert.deepEqual(answers(r), [ADDR.origin.v6], show(r));
        const r4 = await dig(lab, ['-6', `@${PUB6}`, `${name}`, 'A', '+noall', '+answer']);
        assert.deepEqual(answers(r4), [ADDR.origin.v4], show(r4));
        const p = await dig(lab, ['-6', '+tcp', `@${PUB6}`, `v6-${mode}.corp.test`, 'AAAA', '+noall', '+answer']);
        assert.deepEqual(answers(p), [ADDR.intranet.v6], show(p));
      });

      // Under redirect the gateway was given --public-dns, so the client's choice of server does not matter
      // there; the direct-mode group's silent private server covers that path.
      if (mode === 'tproxy')
        test('an unreachable upstream gives SERVFAIL within the timeout', async () => {
          // Nothing answers at 203.0.113.98: squid keeps trying to connect, the gateway gives up after --dns-timeout 1s.
          const r = await dig(lab, ['+tcp', '@203.0.113.98', `down-${mode}.example.test`, 'A']);
          assert.equal(status(r), 'SERVFAIL', show(r));
          assert.ok(r.ms < 3000, `took ${r.ms} ms`);
        });

      test('DNS over TCP: several queries in one write are all answered (RFC 7766 pipelining)', async () => {
        const script = `
          const net = require('node:net');
          const q = (id, name) => {
            const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
            const m = Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
            return Buffer.concat([Buffer.from([m.length >> 8, m.length & 255]), m]);
          };
          const s = net.connect(53, ${JSON.stringify(PUB4)}, () => s.write(Buffer.concat([q(1, 'p1-${mode}.example.test'), q(2, 'p2-${mode}.corp.test'), q(3, 'p3-${mode}.example.test')])));
          let buf = Buffer.alloc(0);
          const ids = [];
          s.on('data', (c) => {
            buf = Buffer.concat([buf, c]);
            while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
              const m = buf.subarray(2, 2 + buf.readUInt16BE(0));
              ids.push(m.readUInt16BE(0) + ':' + (m.readUInt16BE(2) & 15) + ':' + m.readUInt16BE(6));
              buf = buf.subarray(2 + m.length);
            }
            if (ids.length === 3) { console.log(ids.sort().join(' ')); s.end(); }
          });
          // After our end the gateway closes its side too: the process then exits by itself.
          const t = setTimeout(() => { console.log('timeout ' + ids.join(' ')); process.exit(1); }, 5000);
          s.on('close', () => clearTimeout(t));`;
        const r = await lab.exec('cl', [process.execPath, '-e', script], { timeoutMs: 15_000 });
        assert.equal(r.stdout.trim(), '1:0:1 2:0:1 3:0:1', show(r));
      });

      // Only under TPROXY does the client's choice of server (unbound on the origin address) count.
      if (mode === 'tproxy')
        test('negative answers are cached for the SOA minimum (RFC 2308)', async () => {
          const name = 'missing.neg.test';
          const from = gw.mark();
          const first = await dig(lab, [`@${ADDR.origin.v4}`, name, 'A']);
          assert.equal(status(first), 'NXDOMAIN', show(first));
          assert.match(first.stdout, /AUTHORITY SECTION:\s+neg\.test\.\s+\d+\s+IN\s+SOA/, show(first));
          const second = await dig(lab, [`@${ADDR.origin.v4}`, name, 'A']);
          assert.equal(status(second), 'NXDOMAIN', show(second));
          const hit = await dnsLine(gw, from, (x) => x.name === name && x.cached === '1', 'cached NXDOMAIN');
          assert.equal(hit.rcode, 'NXDOMAIN');
          const seen = lab
            .dohLog()
            .split('\n')
            .filter((l) => l.includes(` ${name}. A IN`));
          assert.equal(seen.length, 1, `unbound saw:\n${seen.join('\n')}`);
          const ttl = Number(/neg\.test\.\s+(\d+)\s+IN\s+SOA/.exec(second.stdout)?.[1]);
          assert.ok(ttl <= 45, `SOA TTL ${ttl} served from the cache, at most the SOA minimum 45`);
        });

      test('garbage and malformed packets: dropped or FORMERR, and the gateway keeps answering', async () => {
        const badPointer = '1234' + '0100' + '0001' + '0000' + '0000' + '0000' + 'c00c' + '00010001';
        const twoQuestions = 'abcd' + '0100' + '0002' + '0000' + '0000' + '0000' + '0161000001' + '0001' + '0161000001' + '0001';
        const response = 'beef' + '8180' + '0000' + '0000' + '0000' + '0000';
        const r = await rawUdp(lab, PUB4, ['00', 'ff'.repeat(700), badPointer, twoQuestions, response]);
        const lines = r.stdout.trim().split('\n');
        assert.equal(lines.length, 5, show(r));
        assert.equal(lines[0], 'none', 'a 1-byte packet is dropped');
        // 700 bytes of 0xff: QR set, a "response": dropped.
        assert.equal(lines[1], 'none');
        assert.equal(lines[2]!.slice(0, 4), '1234', 'FORMERR keeps the ID');
        assert.equal(parseInt(lines[2]!.slice(6, 8), 16) & 0xf, 1, `FORMERR expected: ${lines[2]}`);
        assert.equal(parseInt(lines[3]!.slice(6, 8), 16) & 0xf, 1, `FORMERR expected: ${lines[3]}`);
        assert.equal(lines[4], 'none', 'responses are never answered');
        const ok = await dig(lab, [`@${PUB4}`, `after-garbage-${mode}.example.test`, '+short']);
        assert.equal(ok.stdout.trim(), ADDR.origin.v4, show(ok));
        assert.ok(gw.running);
      });
    });
  }

  test('--no-dns: port 53 is not intercepted', async () => {
    const on = await lab.transgate(['rules']);
    const off = await lab.transgate(['rules', '--no-dns']);
    assert.equal(on.code, 0, show(on));
    assert.match(on.stdout, /udp dport \{ 53 \}/);
    assert.match(on.stdout, /tcp dport \{ 53 \}/);
    assert.equal(off.code, 0, show(off));
    assert.doesNotMatch(off.stdout, /dport \{ 53 \}/);
  });

  describe('DNS over HTTPS', () => {
    let gw: Gw;
    before(async () => {
      gw = await lab.startGateway(
        [
          '--log-level',
          'debug',
          '--private-domains',
          'corp.test',
          '--private-dns',
          PRIV4,
          '--dns-over-https-enabled',
          '--doh-url',
          DNS_ADDR.dohUrl,
          '--doh-ca',
          lab.caFile,
        ],
        proxyEnv(),
      );
    });
    after(async () => {
      await gw?.stop();
    });

    test('public names go to the DoH server through the proxy (CONNECT :8443, HTTP/2)', async () => {
      const name = 'doh.example.test';
      const from = gw.mark();
      const r = await dig(lab, [`@${PUB4}`, name, 'A', '+noall', '+answer']);
      assert.deepEqual(answers(r), [ADDR.origin.v4], show(r));
      const f = await dnsLine(gw, from, (x) => x.name === name, name);
      assert.equal(f.route, 'doh');
      // unbound saw it from squid's address: it came through the proxy (squid logs the tunnel only when it closes).
      assert.match(lab.dohLog(), new RegExp(`${SQUID_SRC.replace(/\./g, '\\.')} doh\\.example\\.test\\. A IN`), lab.dohLog());
      assert.equal(queriesFor(lab, 'private', name).length, 0);
      // Private names still go to the private server.
      const p = await dig(lab, [`@${PUB4}`, 'doh.corp.test', 'A', '+short']);
      assert.equal(p.stdout.trim(), ADDR.intranet.v4, show(p));
    });
  });

  describe('direct mode', () => {
    let gw: Gw;
    before(async () => {
      // The gateway reaches 198.51.100.53 directly; as public server it answers example.test with 198.51.100.99.
      // Nothing answers at 198.51.100.54 (no such host): private names wait for --dns-timeout.
      gw = await lab.startGateway(
        [
          '--log-level',
          'debug',
          '--dns-over-tcp-disabled',
          '--public-dns',
          PRIV4,
          '--private-domains',
          'corp.test',
          '--private-dns',
          '198.51.100.54',
          '--dns-timeout',
          '1s',
        ],
        proxyEnv(),
      );
    });
    after(async () => {
      await gw?.stop();
    });

    test('--dns-over-tcp-disabled: public names are asked directly over UDP', async () => {
      const name = 'direct-mode.example.test';
      const from = gw.mark();
      const r = await dig(lab, [`@${PUB4}`, name, 'A', '+short']);
      assert.equal(r.stdout.trim(), '198.51.100.99', show(r));
      const f = await dnsLine(gw, from, (x) => x.name === name, name);
      assert.equal(f.route, 'direct');
      assert.match(queriesFor(lab, 'private', name)[0] ?? '', new RegExp(`from ${GW_WAN.replace(/\./g, '\\.')}$`));
    });

    test('a silent upstream DNS gives SERVFAIL within --dns-timeout', async () => {
      for (const proto of ['+notcp', '+tcp']) {
        const r = await dig(lab, [proto, `@${PUB4}`, `silent${proto.slice(1)}.corp.test`, 'A']);
        assert.equal(status(r), 'SERVFAIL', show(r));
        assert.ok(r.ms >= 900 && r.ms < 2500, `SERVFAIL after ${r.ms} ms, want about 1000`);
      }
    });
  });
});

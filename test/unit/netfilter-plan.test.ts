import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, GatewayError } from '../../src/core/errors';
import {
  NftablesRuleBackend,
  describePlan,
  nftError,
  normalizeCidr,
  plan,
  routeCommands,
  type ExecResult,
  type RulesConfig,
  type Runner,
} from '../../src/netfilter/index';
import { isNotFound, notFoundError, run } from '../../src/netfilter/exec';
import { rulesConfig } from '../support/rules-config';

function baseConfig(over: Partial<RulesConfig> = {}): RulesConfig {
  return rulesConfig(over);
}

const DEFAULT_TPROXY_SCRIPT = `table inet transgate {}
delete table inet transgate
table inet transgate {
	set bypass4 {
		type ipv4_addr
		flags interval
		auto-merge
		elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4, 255.255.255.255/32 }
	}

	set bypass6 {
		type ipv6_addr
		flags interval
		auto-merge
		elements = { ::/128, ::1/128, fc00::/7, fe80::/10, ff00::/8, ::ffff:0:0/96 }
	}

	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		iifname "lo" return
		meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x7467 accept
		fib daddr type local return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		meta nfproto ipv4 tcp dport { 80 } tproxy ip to 127.0.0.1:3180 meta mark set 0x7467 accept
		meta nfproto ipv6 tcp dport { 80 } tproxy ip6 to [::1]:3180 meta mark set 0x7467 accept
		meta nfproto ipv4 tcp dport { 443 } tproxy ip to 127.0.0.1:3143 meta mark set 0x7467 accept
		meta nfproto ipv6 tcp dport { 443 } tproxy ip6 to [::1]:3143 meta mark set 0x7467 accept
		meta nfproto ipv4 tcp dport { 22 } tproxy ip to 127.0.0.1:3122 meta mark set 0x7467 accept
		meta nfproto ipv6 tcp dport { 22 } tproxy ip6 to [::1]:3122 meta mark set 0x7467 accept
	}
}
`;

function chainLines(script: string): string[] {
  const start = script.indexOf('\tchain prerouting {');
  return script
    .slice(start)
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter((l) => l && l !== '}');
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

describe('netfilter plan: tproxy', () => {
  it('produces the exact default script', () => {
    assert.equal(plan(baseConfig()).nftScript, DEFAULT_TPROXY_SCRIPT);
  });

  it('starts with the replace preamble so a leftover table is replaced, never duplicated', () => {
    const lines = plan(baseConfig()).nftScript.split('\n');
    assert.deepEqual(lines.slice(0, 3), ['table inet transgate {}', 'delete table inet transgate', 'table inet transgate {']);
    assert.equal(plan(baseConfig({ mode: 'redirect' })).nftScript.split('\n')[1], 'delete table inet transgate');
  });

  it('orders the chain: iif, transparent sockets, local, bypass, tproxy', () => {
    const rules = chainLines(plan(baseConfig()).nftScript);
    assert.equal(rules[0], 'type filter hook prerouting priority mangle; policy accept;');
    assert.equal(rules[1], 'iifname "lo" return');
    assert.equal(rules[2], 'meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x7467 accept');
    assert.equal(rules[3], 'fib daddr type local return');
    assert.equal(rules[4], 'ip daddr @bypass4 return');
    assert.equal(rules[5], 'ip6 daddr @bypass6 return');
    assert.match(rules[6]!, /tproxy/);
  });

  it('plans policy routing for both families', () => {
    const p = plan(baseConfig());
    assert.deepEqual(p.routes, [
      {
        family: 4,
        ruleArgs: ['-4', 'rule', 'add', 'fwmark', '0x7467', 'lookup', '7467', 'pref', '7467'],
        routeArgs: ['-4', 'route', 'replace', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '7467'],
      },
      {
        family: 6,
        ruleArgs: ['-6', 'rule', 'add', 'fwmark', '0x7467', 'lookup', '7467', 'pref', '7467'],
        routeArgs: ['-6', 'route', 'replace', 'local', '::/0', 'dev', 'lo', 'table', '7467'],
      },
    ]);
    assert.deepEqual(routeCommands(p), [
      'ip -4 route replace local 0.0.0.0/0 dev lo table 7467',
      'ip -4 rule add fwmark 0x7467 lookup 7467 pref 7467',
      'ip -6 route replace local ::/0 dev lo table 7467',
      'ip -6 rule add fwmark 0x7467 lookup 7467 pref 7467',
    ]);
    assert.equal(p.fwmark, 0x7467);
    assert.equal(p.routeTable, 7467);
  });

  it('puts several ports of a group in one set', () => {
    const p = plan(baseConfig({ tcp: [{ ports: [22, 5000, 22], listenPort: 3122 }] }));
    assert.ok(p.nftScript.includes('meta nfproto ipv4 tcp dport { 22, 5000 } tproxy ip to 127.0.0.1:3122 meta mark set 0x7467 accept'));
    assert.ok(p.nftScript.includes('meta nfproto ipv6 tcp dport { 22, 5000 } tproxy ip6 to [::1]:3122 meta mark set 0x7467 accept'));
    assert.match(p.summary, /TCP ports 22, 5000 → 127\.0\.0\.1:3122, \[::1\]:3122/);
  });

  it('intercepts UDP with a tproxy rule only (no socket rule for udp)', () => {
    const p = plan(baseConfig({ udp: [{ ports: [53], listenPort: 3153 }] }));
    assert.ok(p.nftScript.includes('meta nfproto ipv4 udp dport { 53 } tproxy ip to 127.0.0.1:3153 meta mark set 0x7467 accept'));
    assert.ok(p.nftScript.includes('meta nfproto ipv6 udp dport { 53 } tproxy ip6 to [::1]:3153 meta mark set 0x7467 accept'));
    assert.ok(!p.nftScript.includes('l4proto udp socket'));
    // tcp rules come before udp rules
    assert.ok(p.nftScript.indexOf('tcp dport { 22 }') < p.nftScript.indexOf('udp dport { 53 }'));
  });

  it('restricts to LAN interfaces when given', () => {
    const one = plan(baseConfig({ lanInterfaces: ['lan0'] }));
    const rules = chainLines(one.nftScript);
    assert.equal(rules[1], 'iifname != { "lan0" } return');
    assert.ok(!one.nftScript.includes('iifname "lo"'));
    const two = plan(baseConfig({ lanInterfaces: ['lan0', 'br-lan', 'lan0'] }));
    assert.equal(chainLines(two.nftScript)[1], 'iifname != { "lan0", "br-lan" } return');
    assert.match(two.summary, /arriving on: lan0, br-lan/);
  });

  it('IPv4-only omits every IPv6 rule, set and route', () => {
    const p = plan(baseConfig({ ipv6: false }));
    assert.ok(!p.nftScript.includes('ipv6'));
    assert.ok(!p.nftScript.includes('ip6'));
    assert.ok(!p.nftScript.includes('bypass6'));
    assert.ok(p.nftScript.includes('ip daddr @bypass4 return'));
    assert.deepEqual(
      p.routes.map((r) => r.family),
      [4],
    );
  });

  it('IPv6-only omits every IPv4 rule, set and route', () => {
    const p = plan(baseConfig({ ipv4: false }));
    assert.ok(!p.nftScript.includes('ipv4'));
    assert.ok(!p.nftScript.includes('bypass4'));
    assert.ok(!p.nftScript.includes('tproxy ip to'));
    assert.ok(p.nftScript.includes('tproxy ip6 to [::1]:3180'));
    assert.deepEqual(
      p.routes.map((r) => r.family),
      [6],
    );
    assert.deepEqual(p.routes[0]!.routeArgs.slice(3, 5), ['local', '::/0']);
  });

  it('declares empty bypass sets without an elements line (nft rejects `elements = { }`)', () => {
    const p = plan(baseConfig({ bypass4: [], bypass6: [] }));
    assert.ok(!p.nftScript.includes('elements'));
    assert.ok(p.nftScript.includes('\tset bypass4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\t}'));
    assert.ok(p.nftScript.includes('\tset bypass6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\tauto-merge\n\t}'));
    assert.match(p.summary, /IPv4 bypass: \(none\)/);
  });

  it('normalises bypass CIDRs: host bits, bare addresses, duplicates, IPv6 compression', () => {
    const p = plan(
      baseConfig({ bypass4: ['10.1.2.3/8', '10.0.0.0/8', '203.0.113.7'], bypass6: ['2001:DB8:0:0:0:0:0:1/64', '2001:db8::9'] }),
    );
    assert.ok(p.nftScript.includes('elements = { 10.0.0.0/8, 203.0.113.7/32 }'));
    assert.ok(p.nftScript.includes('elements = { 2001:db8::/64, 2001:db8::9/128 }'));
    assert.equal(normalizeCidr('::ffff:1.2.3.4/96', 6), '::ffff:0:0/96');
    assert.equal(normalizeCidr('0.0.0.0/0', 4), '0.0.0.0/0');
    assert.equal(normalizeCidr('1:0:0:1:0:0:0:1', 6), '1:0:0:1::1/128');
    assert.equal(normalizeCidr('1:0:1:0:1:0:1:0', 6), '1:0:1:0:1:0:1:0/128');
  });

  it('without tproxy addresses targets :PORT (wildcard listeners)', () => {
    const p = plan(baseConfig({ tproxyAddress4: undefined, tproxyAddress6: '' }));
    assert.ok(p.nftScript.includes('meta nfproto ipv4 tcp dport { 80 } tproxy ip to :3180 meta mark set 0x7467 accept'));
    assert.ok(p.nftScript.includes('meta nfproto ipv6 tcp dport { 80 } tproxy ip6 to :3180 meta mark set 0x7467 accept'));
  });

  it('uses the configured mark and table', () => {
    const p = plan(baseConfig({ fwmark: 1, routeTable: 100, rulePriority: 100 }));
    assert.ok(p.nftScript.includes('meta mark set 0x1 accept'));
    assert.deepEqual(p.routes[0]!.ruleArgs, ['-4', 'rule', 'add', 'fwmark', '0x1', 'lookup', '100', 'pref', '100']);
  });
});

describe('netfilter plan: redirect', () => {
  it('uses a nat chain, redirect rules and no policy routing', () => {
    const p = plan(baseConfig({ mode: 'redirect', tcp: [{ ports: [80], listenPort: 3180 }], udp: [{ ports: [53], listenPort: 3153 }] }));
    const rules = chainLines(p.nftScript);
    assert.deepEqual(rules, [
      'type nat hook prerouting priority dstnat; policy accept;',
      'iifname "lo" return',
      'fib daddr type local return',
      'ip daddr @bypass4 return',
      'ip6 daddr @bypass6 return',
      'meta nfproto ipv4 tcp dport { 80 } redirect to :3180',
      'meta nfproto ipv6 tcp dport { 80 } redirect to :3180',
      'meta nfproto ipv4 udp dport { 53 } redirect to :3153',
      'meta nfproto ipv6 udp dport { 53 } redirect to :3153',
      // REDIRECT's listeners bind every address: only redirected packets may reach them.
      'chain listeners_input {',
      'type filter hook input priority filter; policy accept;',
      'meta l4proto { tcp, udp } th dport { 3153, 3180 } ct direction original ct status & dnat == 0 drop',
    ]);
    assert.deepEqual(p.routes, []);
    assert.ok(!p.nftScript.includes('tproxy'));
    assert.ok(!p.nftScript.includes('mark'));
    assert.match(p.summary, /no policy routing/);
  });

  it('redirect IPv4-only with LAN interfaces', () => {
    const p = plan(baseConfig({ mode: 'redirect', ipv6: false, lanInterfaces: ['eth1'] }));
    assert.ok(!p.nftScript.includes('ipv6'));
    assert.equal(chainLines(p.nftScript)[1], 'iifname != { "eth1" } return');
  });
});

describe('netfilter plan: determinism and validation', () => {
  it('is deterministic and does not mutate its input', () => {
    const cfg = deepFreeze(baseConfig({ udp: [{ ports: [53], listenPort: 3153 }], lanInterfaces: ['lan0'] }));
    const a = plan(cfg);
    const b = plan(structuredClone<RulesConfig>(cfg));
    assert.deepEqual(a, b);
    assert.equal(describePlan(cfg), describePlan(a));
  });

  it('summary says what is intercepted, where to, and what is bypassed', () => {
    const s = plan(baseConfig()).summary;
    assert.match(s, /tproxy mode, IPv4 \+ IPv6/);
    assert.match(s, /TCP port 443 → 127\.0\.0\.1:3143, \[::1\]:3143/);
    assert.match(s, /every interface except lo/);
    assert.match(s, /IPv4 bypass: 0\.0\.0\.0\/8, 10\.0\.0\.0\/8/);
    assert.match(s, /IPv6 bypass: ::\/128, ::1\/128, fc00::\/7/);
    assert.match(s, /packets marked 0x7467 use routing table 7467/);
  });

  it('describePlan prints summary, the exact script and the ip commands', () => {
    const text = describePlan(baseConfig());
    assert.ok(text.includes(DEFAULT_TPROXY_SCRIPT));
    assert.ok(text.includes('ip -4 rule add fwmark 0x7467 lookup 7467 pref 7467'));
  });

  const bad: Array<[string, Partial<RulesConfig>]> = [
    ['no family', { ipv4: false, ipv6: false }],
    ['port 0', { tcp: [{ ports: [0], listenPort: 3180 }] }],
    ['port 70000', { tcp: [{ ports: [70000], listenPort: 3180 }] }],
    ['bad listen port', { tcp: [{ ports: [80], listenPort: 1.5 }] }],
    ['empty ports', { tcp: [{ ports: [], listenPort: 3180 }] }],
    [
      'port in two groups',
      {
        tcp: [
          { ports: [80], listenPort: 3180 },
          { ports: [80, 81], listenPort: 3181 },
        ],
      },
    ],
    ['nothing to intercept', { tcp: [], udp: [] }],
    ['main table', { routeTable: 254 }],
    ['local table', { routeTable: 255 }],
    ['zero mark', { fwmark: 0 }],
    ['priority 0', { rulePriority: 0 }],
    ['v6 in bypass4', { bypass4: ['fc00::/7'] }],
    ['bad prefix', { bypass4: ['10.0.0.0/33'] }],
    ['garbage cidr', { bypass6: ['nope'] }],
    ['quote in interface', { lanInterfaces: ['lan"0'] }],
    ['long interface', { lanInterfaces: ['abcdefghijklmnop'] }],
    ['bad tproxy address', { tproxyAddress4: '::1' }],
    ['bad mode', { mode: 'masquerade' as RulesConfig['mode'] }],
  ];
  for (const [name, over] of bad) {
    it(`rejects ${name} with a CONFIG error`, () => {
      assert.throws(
        () => plan(baseConfig(over)),
        (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
      );
    });
  }
});

// ---------------------------------------------------------------------------
// apply / revert against a scripted runner (no real commands)

type Reply = Partial<ExecResult> | ((argv: string[], input?: string) => Partial<ExecResult>);

function fakeRunner(reply: (cmd: string, input?: string) => Reply | undefined): { runner: Runner; calls: string[]; inputs: string[] } {
  const calls: string[] = [];
  const inputs: string[] = [];
  const runner: Runner = async (argv, options) => {
    const cmd = argv.join(' ');
    calls.push(cmd);
    if (options?.input !== undefined) inputs.push(options.input);
    let r = reply(cmd, options?.input);
    if (typeof r === 'function') r = r([...argv], options?.input);
    return { code: 0, stdout: '', stderr: '', ...(r ?? {}) };
  };
  return { runner, calls, inputs };
}

const NO_RULE = { code: 2, stderr: 'RTNETLINK answers: No such file or directory\n' };

describe('netfilter backend with a fake runner', () => {
  it('apply: preflight, one nft transaction, stale rules removed, routes then rules', async () => {
    let left4 = 2; // two stale IPv4 rules from crashed runs
    const f = fakeRunner((cmd) => {
      if (cmd === 'ip -4 rule del fwmark 0x7467 lookup 7467') return left4-- > 0 ? {} : NO_RULE;
      if (cmd.includes('rule del')) return NO_RULE;
      return undefined;
    });
    const backend = new NftablesRuleBackend({ runner: f.runner });
    const p = plan(baseConfig());
    assert.equal(await backend.apply(p), p);
    assert.deepEqual(f.calls, [
      'nft list tables',
      'ip -V',
      'nft -f -',
      'ip -4 rule del fwmark 0x7467 lookup 7467',
      'ip -4 rule del fwmark 0x7467 lookup 7467',
      'ip -4 rule del fwmark 0x7467 lookup 7467',
      'ip -4 route replace local 0.0.0.0/0 dev lo table 7467',
      'ip -4 rule add fwmark 0x7467 lookup 7467 pref 7467',
      'ip -6 rule del fwmark 0x7467 lookup 7467',
      'ip -6 route replace local ::/0 dev lo table 7467',
      'ip -6 rule add fwmark 0x7467 lookup 7467 pref 7467',
    ]);
    assert.deepEqual(f.inputs, [p.nftScript]);
  });

  it('apply accepts a config and plans it', async () => {
    const f = fakeRunner((cmd) => (cmd.includes('rule del') ? NO_RULE : undefined));
    const backend = new NftablesRuleBackend({ runner: f.runner });
    const p = await backend.apply(baseConfig({ mode: 'redirect' }));
    assert.equal(p.mode, 'redirect');
    assert.deepEqual(f.inputs, [plan(baseConfig({ mode: 'redirect' })).nftScript]);
    // redirect: no rule add, but leftovers of a tproxy run are cleaned
    assert.ok(!f.calls.some((c) => c.includes('rule add')));
    assert.ok(f.calls.includes('ip -4 rule del fwmark 0x7467 lookup 7467'));
    assert.ok(!f.calls.includes('ip -V'));
  });

  it('apply is all-or-nothing: a failing ip command reverts the table and rules', async () => {
    const f = fakeRunner((cmd) => {
      if (cmd.startsWith('ip -6 route replace'))
        return { code: 2, stderr: 'RTNETLINK answers: Address family not supported by protocol\n' };
      if (cmd.includes('rule del')) return NO_RULE;
      return undefined;
    });
    const backend = new NftablesRuleBackend({ runner: f.runner });
    await assert.rejects(backend.apply(plan(baseConfig())), (e: unknown) => {
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, ErrorCodes.RULES);
      assert.match(e.message, /ip -6 route replace local ::\/0 dev lo table 7467: RTNETLINK answers: Address family not supported/);
      return true;
    });
    const after = f.calls.slice(f.calls.indexOf('ip -6 route replace local ::/0 dev lo table 7467') + 1);
    assert.deepEqual(after, [
      'nft delete table inet transgate',
      'ip -4 rule del fwmark 0x7467 lookup 7467',
      'ip -4 route flush table 7467',
      'ip -6 rule del fwmark 0x7467 lookup 7467',
      'ip -6 route flush table 7467',
    ]);
  });

  it('apply maps "Operation not permitted" to PERMISSION before changing anything', async () => {
    const f = fakeRunner((cmd) =>
      cmd === 'nft list tables' ? { code: 1, stderr: 'Operation not permitted (you must be root)\n' } : undefined,
    );
    const backend = new NftablesRuleBackend({ runner: f.runner });
    await assert.rejects(backend.apply(plan(baseConfig())), (e: unknown) => {
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, ErrorCodes.PERMISSION);
      assert.match(e.message, /run as root or with CAP_NET_ADMIN \(sudo -E npx transgate\)/);
      return true;
    });
    assert.deepEqual(f.calls, ['nft list tables']);
  });

  it('apply names the missing kernel feature and leaves routing alone when nft fails', async () => {
    const p = plan(baseConfig());
    const lineNo = p.nftScript.split('\n').findIndex((l) => l.includes('tproxy ip to 127.0.0.1:3180')) + 1;
    const stderr =
      `/dev/stdin:${lineNo}:3-86: Error: Could not process rule: No such file or directory\n` +
      '\t\tmeta nfproto ipv4 tcp dport { 80 } tproxy ip to 127.0.0.1:3180 meta mark set 0x7467 accept\n' +
      '\t\t^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n';
    const f = fakeRunner((cmd) => (cmd === 'nft -f -' ? { code: 1, stderr } : undefined));
    const backend = new NftablesRuleBackend({ runner: f.runner });
    await assert.rejects(backend.apply(p), (e: unknown) => {
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, ErrorCodes.RULES);
      assert.match(e.message, /kernel lacks nftables support for TPROXY \(kernel module nft_tproxy/);
      return true;
    });
    assert.equal(f.calls.at(-1), 'nft -f -');
  });

  it('nftError recognises socket, fib and nat failures', () => {
    const script =
      'a\nmeta l4proto tcp socket transparent 1 accept\nfib daddr type local return\ntype nat hook prerouting priority dstnat;\n';
    const at = (n: number): string => `/dev/stdin:${n}:1-10: Error: Could not process rule: No such file or directory\n`;
    assert.match(nftError(at(2), script).message, /socket matching/);
    assert.match(nftError(at(3), script).message, /fib lookups/);
    assert.match(nftError(at(4), script).message, /NAT chains/);
    assert.match(nftError('/dev/stdin:9:1-2: Error: syntax error, unexpected junk\n', script).message, /nft -f - failed: .*syntax error/);
    assert.equal(nftError('netlink: Error: cache initialization failed: Operation not permitted', '').code, ErrorCodes.PERMISSION);
  });

  it('revert is idempotent and tolerates nothing installed', async () => {
    const f = fakeRunner((cmd) => {
      if (cmd === 'nft delete table inet transgate')
        return { code: 1, stderr: 'Error: Could not process rule: No such file or directory\ndelete table inet transgate\n' };
      if (cmd.includes('rule del')) return NO_RULE;
      if (cmd.includes('route flush')) return { code: 2, stderr: 'Error: ipv4: FIB table does not exist.\nFlush terminated\n' };
      return undefined;
    });
    const backend = new NftablesRuleBackend({ runner: f.runner });
    assert.equal(await backend.revert({ fwmark: 0x7467, routeTable: 7467 }), false);
    assert.equal(await backend.revert(baseConfig()), false);
    assert.equal(await backend.clear(), false);
  });

  it('revert removes every stacked rule and reports it', async () => {
    let left = 3;
    const f = fakeRunner((cmd) => {
      if (cmd === 'ip -4 rule del fwmark 0x1 lookup 100') return left-- > 0 ? {} : NO_RULE;
      if (cmd.includes('rule del')) return NO_RULE;
      return undefined;
    });
    const backend = new NftablesRuleBackend({ runner: f.runner });
    assert.equal(await backend.revert({ fwmark: 1, routeTable: 100 }), true);
    assert.equal(f.calls.filter((c) => c === 'ip -4 rule del fwmark 0x1 lookup 100').length, 4);
    assert.ok(f.calls.includes('ip -4 route flush table 100'));
    assert.ok(f.calls.includes('ip -6 route flush table 100'));
  });

  it('revert refuses to flush a system routing table', async () => {
    const f = fakeRunner(() => undefined);
    const backend = new NftablesRuleBackend({ runner: f.runner });
    await assert.rejects(
      backend.revert({ fwmark: 1, routeTable: 254 }),
      (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
    );
    assert.deepEqual(f.calls, []);
  });

  it('revert still cleans routing when nft is not installed', async () => {
    const calls: string[] = [];
    const runner: Runner = async (argv) => {
      calls.push(argv.join(' '));
      if (argv[0] === 'nft') throw notFoundError('nft');
      return { code: argv.includes('del') ? 2 : 0, stdout: '', stderr: '' };
    };
    const backend = new NftablesRuleBackend({ runner });
    assert.equal(await backend.revert(baseConfig()), false);
    assert.ok(calls.includes('ip -6 route flush table 7467'));
  });

  it('isInstalled / describeInstalled read nft and ip rule', async () => {
    const f = fakeRunner((cmd) => {
      if (cmd === 'nft list table inet transgate') return { stdout: 'table inet transgate {\n}\n' };
      if (cmd === 'ip -4 rule show')
        return {
          stdout:
            '0:\tfrom all lookup local\n7467:\tfrom all fwmark 0x7467 lookup 7467\n74670:\tfrom all fwmark 0x74670 lookup 7467\n32766:\tfrom all lookup main\n',
        };
      if (cmd === 'ip -6 rule show') return { stdout: '0:\tfrom all lookup local\n' };
      if (cmd === 'ip -4 route show table 7467') return { stdout: 'local default dev lo scope host\n' };
      return undefined;
    });
    const backend = new NftablesRuleBackend({ runner: f.runner });
    assert.equal(await backend.isInstalled(), true);
    const text = await backend.describeInstalled();
    assert.match(text, /nftables table inet transgate:\ntable inet transgate \{/);
    assert.match(text, /ip -4 rule: 7467:\tfrom all fwmark 0x7467 lookup 7467/);
    assert.ok(!text.includes('0x74670'));
    assert.match(text, /ip -4 route table 7467: local default dev lo scope host/);

    const none = fakeRunner((cmd) =>
      cmd.startsWith('nft list table') ? { code: 1, stderr: 'Error: No such file or directory\n' } : undefined,
    );
    const b2 = new NftablesRuleBackend({ runner: none.runner });
    assert.equal(await b2.isInstalled(), false);
    assert.match(await b2.describeInstalled(), /not installed[\s\S]*policy routing rules: none/);
  });

  it('netns option prefixes every command with ip netns exec', async () => {
    const f = fakeRunner(() => undefined);
    const backend = new NftablesRuleBackend({ runner: f.runner, netns: 'tgtest' });
    await backend.isInstalled();
    assert.equal(f.calls[0], 'ip netns exec tgtest nft list table inet transgate');
  });
});

describe('netfilter exec', () => {
  it('runs with argv and stdin, returns code/stdout/stderr', async () => {
    const r = await run(['sh', '-c', 'cat; echo err >&2; exit 3'], { input: 'hello' });
    assert.deepEqual(r, { code: 3, stdout: 'hello', stderr: 'err\n' });
  });

  it('maps a missing binary to an install hint', async () => {
    await assert.rejects(run(['/nonexistent/bin/nft', 'list', 'tables']), (e: unknown) => {
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, ErrorCodes.RULES);
      assert.equal(e.message, 'nft not found: install nftables (apt-get install nftables)');
      assert.ok(isNotFound(e));
      return true;
    });
    assert.equal(notFoundError('ip').message, 'ip not found: install iproute2 (apt-get install iproute2)');
  });

  it('kills the command after the timeout', async () => {
    const t0 = Date.now();
    await assert.rejects(run(['sleep', '10'], { timeoutMs: 150 }), /timed out after 150 ms/);
    assert.ok(Date.now() - t0 < 5000);
  });
});

describe('plan: groups for every destination (DNS)', () => {
  for (const mode of ['tproxy', 'redirect'] as const) {
    it(`${mode}: port 53 is intercepted before the local and bypass returns, other ports after`, () => {
      const dns = { ports: [53], listenPort: 3153, allDestinations: true };
      const p = plan(baseConfig({ mode, tcp: [{ ports: [80], listenPort: 3180 }, dns], udp: [dns] }));
      const lines = p.nftScript.split('\n').map((l) => l.trim());
      const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
      const local = at(/^fib daddr type local return$/);
      const bypass = at(/^ip daddr @bypass4 return$/);
      assert.ok(local > 0 && bypass > local, p.nftScript);
      for (const re of [/ipv4 udp dport \{ 53 \}/, /ipv6 udp dport \{ 53 \}/, /ipv4 tcp dport \{ 53 \}/]) {
        const i = at(re);
        assert.ok(i > 0 && i < local, `${re} must come before the local return:\n${p.nftScript}`);
      }
      assert.ok(at(/ipv4 tcp dport \{ 80 \}/) > bypass, 'HTTP stays behind the bypass returns');
    });
  }
});

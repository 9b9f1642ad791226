import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, GatewayError } from '../../src/core/errors';
import {
  applySysctls,
  bridgesBlockingTproxy,
  describeChange,
  planSysctls,
  restorableAfterCrash,
  restoreSysctls,
  sysctlFile,
  sysctlKey,
  sysctlWants,
  type SysctlReader,
} from '../../src/netfilter/sysctl';

/** A fake /proc/sys: a map from key to value; absent keys do not exist. */
function fakeProc(init: Record<string, string>) {
  const values = new Map(Object.entries(init));
  const writes: string[] = [];
  const read: SysctlReader = (p) => values.get(sysctlKey(p));
  const write = (p: string[], v: string): void => {
    const k = sysctlKey(p);
    if (!values.has(k)) throw new GatewayError(ErrorCodes.CONFIG, `no ${k}`);
    writes.push(`${k}=${v}`);
    values.set(k, v);
  };
  return { values, writes, read, write };
}

describe('sysctlWants', () => {
  it('asks for forwarding on and redirects off, per LAN interface too', () => {
    const keys = sysctlWants({ ipv4: true, ipv6: true, interfaces: ['lan0', 'eth0.100'] }).map((w) => `${sysctlKey(w.path)}=${w.value}`);
    assert.deepEqual(keys, [
      'net.ipv4.ip_forward=1',
      'net.ipv4.conf.all.send_redirects=0',
      'net.ipv4.conf.default.send_redirects=0',
      'net.ipv4.conf.lan0.send_redirects=0',
      // sysctl(8) spells a dot inside an interface name as '/'
      'net.ipv4.conf.eth0/100.send_redirects=0',
      'net.ipv6.conf.all.forwarding=1',
    ]);
  });

  it('skips lo, wildcards and disabled families', () => {
    const keys = sysctlWants({ ipv4: false, ipv6: true, interfaces: ['lo', 'veth*'] }).map((w) => sysctlKey(w.path));
    assert.deepEqual(keys, ['net.ipv6.conf.all.forwarding']);
    const v4 = sysctlWants({ ipv4: true, ipv6: false, interfaces: ['lo', 'veth*', 'lan0', 'lan0'] }).map((w) => sysctlKey(w.path));
    assert.deepEqual(v4, [
      'net.ipv4.ip_forward',
      'net.ipv4.conf.all.send_redirects',
      'net.ipv4.conf.default.send_redirects',
      'net.ipv4.conf.lan0.send_redirects',
    ]);
  });

  it('maps an interface with a dot to its /proc/sys file', () => {
    assert.equal(sysctlFile(['net', 'ipv4', 'conf', 'eth0.100', 'send_redirects']), '/proc/sys/net/ipv4/conf/eth0.100/send_redirects');
    assert.throws(
      () => sysctlFile(['net', '..', 'x']),
      (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.CONFIG,
    );
    assert.throws(() => sysctlFile(['net', 'a/b']), GatewayError);
  });
});

describe('planSysctls', () => {
  it('changes only what differs, reports what is missing', () => {
    const proc = fakeProc({
      'net.ipv4.ip_forward': '0',
      'net.ipv4.conf.all.send_redirects': '1',
      'net.ipv4.conf.default.send_redirects': '0',
      'net.ipv4.conf.lan0.send_redirects': '0',
    });
    const p = planSysctls(sysctlWants({ ipv4: true, ipv6: true, interfaces: ['lan0'] }), proc.read);
    assert.deepEqual(
      p.changes.map((c) => [c.key, c.from, c.to]),
      [
        ['net.ipv4.ip_forward', '0', '1'],
        ['net.ipv4.conf.all.send_redirects', '1', '0'],
      ],
    );
    assert.deepEqual(p.unchanged, ['net.ipv4.conf.default.send_redirects', 'net.ipv4.conf.lan0.send_redirects']);
    assert.deepEqual(
      p.missing.map((m) => m.key),
      ['net.ipv6.conf.all.forwarding'],
    );
    assert.match(describeChange(p.changes[0]!), /^sysctl net\.ipv4\.ip_forward: 0 -> 1 \(forward/);
  });

  it('plans nothing when everything is already right', () => {
    const proc = fakeProc({
      'net.ipv4.ip_forward': '1\n',
      'net.ipv4.conf.all.send_redirects': '0',
      'net.ipv4.conf.default.send_redirects': '0',
      'net.ipv6.conf.all.forwarding': '1',
    });
    const p = planSysctls(sysctlWants({ ipv4: true, ipv6: true, interfaces: [] }), proc.read);
    assert.equal(p.changes.length, 0);
    assert.equal(p.unchanged.length, 4);
  });
});

describe('applySysctls / restoreSysctls', () => {
  it('restores exactly the previous values, last change first', () => {
    const proc = fakeProc({
      'net.ipv4.ip_forward': '0',
      'net.ipv4.conf.all.send_redirects': '1',
      'net.ipv4.conf.default.send_redirects': '0',
      'net.ipv6.conf.all.forwarding': '0',
    });
    const p = planSysctls(sysctlWants({ ipv4: true, ipv6: true, interfaces: [] }), proc.read);
    const applied = applySysctls(p.changes, proc.write);
    assert.equal(applied.length, 3);
    assert.equal(proc.values.get('net.ipv4.ip_forward'), '1');
    assert.equal(proc.values.get('net.ipv6.conf.all.forwarding'), '1');
    restoreSysctls(applied, proc.write);
    assert.deepEqual(Object.fromEntries(proc.values), {
      'net.ipv4.ip_forward': '0',
      'net.ipv4.conf.all.send_redirects': '1',
      'net.ipv4.conf.default.send_redirects': '0',
      'net.ipv6.conf.all.forwarding': '0',
    });
    assert.deepEqual(proc.writes.slice(3), [
      'net.ipv6.conf.all.forwarding=0',
      'net.ipv4.conf.all.send_redirects=1',
      'net.ipv4.ip_forward=0',
    ]);
  });

  it('is all-or-nothing: a failing write undoes the earlier ones and throws', () => {
    const proc = fakeProc({
      'net.ipv4.ip_forward': '0',
      'net.ipv4.conf.all.send_redirects': '1',
      'net.ipv4.conf.default.send_redirects': '0',
    });
    const p = planSysctls(sysctlWants({ ipv4: true, ipv6: false, interfaces: [] }), proc.read);
    let n = 0;
    const failing = (path: string[], v: string): void => {
      if (++n === 2) throw new GatewayError(ErrorCodes.PERMISSION, 'read-only');
      proc.write(path, v);
    };
    assert.throws(
      () => applySysctls(p.changes, failing),
      (e: unknown) => e instanceof GatewayError && e.code === ErrorCodes.PERMISSION,
    );
    assert.equal(proc.values.get('net.ipv4.ip_forward'), '0');
    assert.equal(proc.values.get('net.ipv4.conf.all.send_redirects'), '1');
  });

  it('restore tries every setting even when one fails, then throws', () => {
    const proc = fakeProc({ a: '1', b: '1' });
    const applied = [
      { path: ['a'], key: 'a', from: '0', to: '1', why: '' },
      { path: ['gone'], key: 'gone', from: '0', to: '1', why: '' },
      { path: ['b'], key: 'b', from: '0', to: '1', why: '' },
    ];
    assert.throws(() => restoreSysctls(applied, proc.write), GatewayError);
    assert.equal(proc.values.get('a'), '0');
    assert.equal(proc.values.get('b'), '0');
  });
});

describe('sysctlWants: bridge mode with TPROXY', () => {
  it("turns off br_netfilter's IP hooks for both families", () => {
    const keys = sysctlWants({ ipv4: true, ipv6: true, interfaces: [], bridgeTproxy: true }).map((w) => `${sysctlKey(w.path)}=${w.value}`);
    assert.ok(keys.includes('net.bridge.bridge-nf-call-iptables=0'));
    assert.ok(keys.includes('net.bridge.bridge-nf-call-ip6tables=0'));
    assert.ok(!sysctlWants({ ipv4: true, ipv6: true, interfaces: [] }).some((w) => w.path[1] === 'bridge'));
  });
});

describe('sysctlWants: IPv6 uplinks keep their router advertisements', () => {
  it('accept_ra 1 -> 2 before forwarding goes on; 0 (RAs off on purpose) is left alone', () => {
    const wants = sysctlWants({ ipv4: false, ipv6: true, interfaces: ['lan0'], raInterfaces: ['wan0', 'wan1', 'lo'] });
    assert.deepEqual(
      wants.map((w) => sysctlKey(w.path)),
      ['net.ipv6.conf.wan0.accept_ra', 'net.ipv6.conf.wan1.accept_ra', 'net.ipv6.conf.all.forwarding'],
    );
    const proc = fakeProc({
      'net.ipv6.conf.wan0.accept_ra': '1',
      'net.ipv6.conf.wan1.accept_ra': '0',
      'net.ipv6.conf.all.forwarding': '0',
    });
    const p = planSysctls(wants, proc.read);
    assert.deepEqual(
      p.changes.map((c) => `${c.key}=${c.to}`),
      ['net.ipv6.conf.wan0.accept_ra=2', 'net.ipv6.conf.all.forwarding=1'],
    );
    assert.ok(p.unchanged.includes('net.ipv6.conf.wan1.accept_ra'));
    const applied = applySysctls(p.changes, proc.write);
    restoreSysctls(applied, proc.write);
    // Restored in reverse: forwarding off first, then accept_ra back to 1.
    assert.deepEqual(proc.writes.slice(2), ['net.ipv6.conf.all.forwarding=0', 'net.ipv6.conf.wan0.accept_ra=1']);
  });
});

describe('restorableAfterCrash', () => {
  it('puts back only what still holds the value transgate wrote', () => {
    const proc = fakeProc({ 'net.ipv4.ip_forward': '1', 'net.ipv6.conf.all.forwarding': '0' });
    const left = [
      { path: ['net', 'ipv4', 'ip_forward'], key: 'net.ipv4.ip_forward', from: '0', to: '1', why: '' },
      // Someone turned it off again since: theirs wins.
      { path: ['net', 'ipv6', 'conf', 'all', 'forwarding'], key: 'net.ipv6.conf.all.forwarding', from: '0', to: '1', why: '' },
    ];
    assert.deepEqual(
      restorableAfterCrash(left, proc.read).map((c) => c.key),
      ['net.ipv4.ip_forward'],
    );
  });
});

describe('bridgesBlockingTproxy', () => {
  const reader = (v: string | undefined) => (p: string[]) => (p.join('.') === 'net.bridge.bridge-nf-call-iptables' ? v : undefined);
  it('names the client bridges when br_netfilter calls the IP hooks', () => {
    const bridges = ['br-1a2b', 'docker0', 'lanbr'];
    assert.deepEqual(bridgesBlockingTproxy({ lan: [], read: reader('1'), bridges }), bridges);
    assert.deepEqual(bridgesBlockingTproxy({ lan: ['docker0', 'br-*'], read: reader('1'), bridges }), ['br-1a2b', 'docker0']);
    assert.deepEqual(bridgesBlockingTproxy({ lan: ['eth1'], read: reader('1'), bridges }), []);
  });
  it('is empty without br_netfilter or with it not calling iptables', () => {
    assert.deepEqual(bridgesBlockingTproxy({ lan: [], read: reader(undefined), bridges: ['docker0'] }), []);
    assert.deepEqual(bridgesBlockingTproxy({ lan: [], read: reader('0'), bridges: ['docker0'] }), []);
  });
});

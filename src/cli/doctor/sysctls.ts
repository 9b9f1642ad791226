import type { Config } from '../../config/config';
import { bridgesBlockingTproxy, hostBridges, ipv4Interfaces, ipv6Interfaces } from '../../netfilter/sysctl';
import { fail, ok, warn, type Check, type DoctorDeps } from './check';

export function checkSysctls(cfg: Config, d: DoctorDeps): Check[] {
  const out: Check[] = [];
  const read = (path: string[]): string | undefined => {
    try {
      return d.readSysctl(path);
    } catch {
      return undefined;
    }
  };
  const auto = '';
  const persist =
    'make it permanent in /etc/sysctl.d/99-transgate.conf (systemd-networkd resets it unless the .network file says IPForward=yes)' +
    (cfg.sysctl ? '; `transgate run` also sets it while it runs' : ' (--no-sysctl: transgate leaves it alone)');
  if (cfg.ipv4) {
    const v = read(['net', 'ipv4', 'ip_forward']);
    out.push(
      v === '1'
        ? ok('sysctl', 'net.ipv4.ip_forward = 1')
        : fail(
            'sysctl',
            `net.ipv4.ip_forward = ${v ?? '?'}: the clients' other IPv4 traffic dies at this box`,
            `${auto}sysctl -w net.ipv4.ip_forward=1; ${persist}`,
          ),
    );
    const lan = cfg.lan.length > 0 ? cfg.lan.filter((i) => !i.endsWith('*')) : ipv4Interfaces();
    const on = [['all'], ...lan.map((i) => [i])]
      .filter(([i]) => read(['net', 'ipv4', 'conf', i!, 'send_redirects']) === '1')
      .map(([i]) => i!);
    // The kernel sends redirects when `all` OR the interface says so.
    out.push(
      on.length === 0
        ? ok('sysctl', 'send_redirects is off: clients are not told to skip this gateway')
        : warn(
            'sysctl',
            `send_redirects is on (${on.map((i) => `net.ipv4.conf.${i.replace(/\./g, '/')}.send_redirects`).join(', ')}): ICMP redirects teach clients on the same subnet as the router to bypass this gateway`,
            `sysctl -w ${on.map((i) => `net.ipv4.conf.${i.replace(/\./g, '/')}.send_redirects=0`).join(' ')}${cfg.sysctl ? ' (`transgate run` also does this while it runs)' : ''}`,
          ),
    );
    const rp = read(['net', 'ipv4', 'conf', 'all', 'rp_filter']);
    out.push(
      ok(
        'sysctl',
        `net.ipv4.conf.all.rp_filter = ${rp ?? '?'}: strict (1) and loose (2) both work with ${cfg.mode}, the clients' source stays on the interface it came in on`,
      ),
    );
  }
  if (!cfg.bridge && cfg.mode === 'tproxy') {
    const blocked = bridgesBlockingTproxy({ lan: cfg.lan, read: (p) => read(p), bridges: d.bridges ? d.bridges() : hostBridges() });
    if (blocked.length > 0) {
      out.push(
        fail(
          'sysctl',
          `net.bridge.bridge-nf-call-iptables = 1 and clients arrive through bridge ${blocked.join(', ')}: br_netfilter runs TPROXY inside the bridge path, where intercepted connections never complete`,
          '--mode redirect (works with br_netfilter; what Docker hosts need), or sysctl -w net.bridge.bridge-nf-call-iptables=0 if nothing here needs it (Docker does, for its filtering between containers)',
        ),
      );
    }
  }
  if (cfg.bridge && cfg.mode === 'tproxy') {
    const v = read(['net', 'bridge', 'bridge-nf-call-iptables']);
    if (v === '1') {
      const msg =
        'net.bridge.bridge-nf-call-iptables = 1: br_netfilter runs TPROXY inside the bridge path, where intercepted connections never complete';
      const fix = 'sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0, or --mode redirect';
      out.push(cfg.sysctl ? warn('sysctl', `${msg} (\`transgate run\` sets it to 0 while it runs)`, fix) : fail('sysctl', msg, fix));
    } else {
      out.push(ok('sysctl', `bridge mode: net.bridge.bridge-nf-call-iptables = ${v ?? 'absent (no br_netfilter)'}`));
    }
  }
  if (cfg.ipv6) {
    const v = read(['net', 'ipv6', 'conf', 'all', 'forwarding']);
    if (v === undefined) out.push(warn('sysctl', 'IPv6 is not available here', 'run with --no-ipv6, or enable IPv6'));
    // With forwarding on, accept_ra=1 means RAs are ignored: an uplink's RA default route expires.
    const uplinks = ipv6Interfaces().filter((i) => !cfg.lan.includes(i));
    const ignoring = uplinks.filter((i) => read(['net', 'ipv6', 'conf', i, 'accept_ra']) === '1');
    if (v === '1' && ignoring.length > 0) {
      out.push(
        warn(
          'sysctl',
          `IPv6 forwarding is on and accept_ra is 1 on ${ignoring.join(', ')}: router advertisements are ignored there, so a default route learned from them expires`,
          `sysctl -w ${ignoring.map((i) => `net.ipv6.conf.${i.replace(/\./g, '/')}.accept_ra=2`).join(' ')}${cfg.sysctl ? ' (`transgate run` does this while it runs)' : ''}`,
        ),
      );
    }
    if (v !== undefined)
      out.push(
        v === '1'
          ? ok('sysctl', 'net.ipv6.conf.all.forwarding = 1')
          : fail(
              'sysctl',
              `net.ipv6.conf.all.forwarding = ${v}: the clients' other IPv6 traffic dies at this box`,
              `${auto}sysctl -w net.ipv6.conf.all.forwarding=1; ${persist}`,
            ),
      );
  }
  return out;
}

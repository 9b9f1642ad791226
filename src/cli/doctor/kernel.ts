import type { Config } from '../../config/config';
import { backendName, haveBinary, rulesConfigFor } from '../../netfilter/backend';
import { NftablesRuleBackend } from '../../netfilter/index';
import { IptablesRuleBackend, iptablesBinaries } from '../../netfilter/iptables';
import { errText, fail, ok, type Check, type DoctorDeps } from './check';

export async function checkKernel(cfg: Config, d: DoctorDeps): Promise<Check[]> {
  const backend = backendName(cfg);
  const rc = rulesConfigFor(cfg);
  const out: Check[] = [];
  const what = cfg.mode === 'tproxy' ? 'TPROXY, socket match' : 'nat REDIRECT';
  try {
    if (backend === 'nftables') {
      if (!haveBinary('nft')) {
        out.push(fail('kernel', 'nft is not installed', 'apt-get install nftables (or use --firewall iptables)'));
        return out;
      }
      // nft -c: the kernel validates the whole transaction and throws it away.
      await new NftablesRuleBackend({ runner: d.runner }).check(rc);
      out.push(
        ok('kernel', `nftables accepts transgate's ${cfg.mode} ruleset (${what}, fib, sets) — checked with nft -c, nothing installed`),
      );
    } else {
      const b = iptablesBinaries(backend, 4);
      if (!haveBinary(b.cmd)) {
        out.push(fail('kernel', `${b.cmd} is not installed`, 'apt-get install iptables'));
        return out;
      }
      const plan = new IptablesRuleBackend(backend, { runner: d.runner }).plan(rc);
      for (const [f, text] of [
        [4, plan.restore4],
        [6, plan.restore6],
      ] as const) {
        if (!text) continue;
        const bin = iptablesBinaries(backend, f).restore;
        const res = await d.runner([bin, '--test', '--noflush'], { input: text });
        if (res.code !== 0) throw new Error(`${bin} --test: ${res.stderr.trim().split('\n')[0] ?? 'failed'}`);
      }
      out.push(ok('kernel', `${backend} accepts transgate's ${cfg.mode} rules (${what}) — checked with ${b.restore} --test`));
    }
  } catch (err) {
    out.push(
      fail(
        'kernel',
        `the kernel or ${backend} rejects transgate's rules: ${errText(err)}`,
        cfg.mode === 'tproxy'
          ? 'load the modules (modprobe nft_tproxy nft_socket xt_TPROXY xt_socket) or try --mode redirect'
          : 'load the modules (modprobe nft_chain_nat nft_redir) or try --mode tproxy',
      ),
    );
  }
  if (cfg.mode === 'tproxy') {
    const res = await d.runner(['ip', '-4', 'rule', 'show']).catch((e: unknown) => ({ code: -1, stdout: '', stderr: errText(e) }));
    out.push(
      res.code === 0
        ? ok('kernel', 'policy routing (ip rule) is available')
        : fail(
            'kernel',
            `policy routing is not available: ${res.stderr.trim()}`,
            'a kernel with CONFIG_IP_MULTIPLE_TABLES, and iproute2 installed; or --mode redirect',
          ),
    );
  }
  return out;
}

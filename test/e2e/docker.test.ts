/**
 * A Docker host: containers behind a bridge (docker0) reach the internet
 * through the proxy with no proxy settings, while Docker-style iptables rules
 * (FORWARD policy DROP, MASQUERADE, DOCKER chains) and a table of the user's
 * own stay in place and untouched. A namespace stands in for the container.
 * Docker turns on br_netfilter (bridge-nf-call-iptables=1), which defeats
 * TPROXY for traffic through a bridge: the recipe is --mode redirect, and
 * tproxy mode says so.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { ADDR, DNS_ADDR, type Gw, Lab, e2eSkipReason } from './lab';

const skip = e2eSkipReason();
const O4 = ADDR.origin.v4;
const BRIDGE_IP = '172.17.0.1';
const CONTAINER_IP = '172.17.0.2';

/** What `docker` installs on a host (iptables-nft), abridged to the rules that touch container traffic. */
const DOCKER_RULES = [
  ['-t', 'nat', '-N', 'DOCKER'],
  ['-t', 'nat', '-A', 'PREROUTING', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', 'DOCKER'],
  ['-t', 'nat', '-A', 'POSTROUTING', '-s', '172.17.0.0/16', '!', '-o', 'docker0', '-j', 'MASQUERADE'],
  ['-t', 'nat', '-A', 'DOCKER', '-i', 'docker0', '-j', 'RETURN'],
  ['-N', 'DOCKER-USER'],
  ['-A', 'DOCKER-USER', '-j', 'RETURN'],
  ['-P', 'FORWARD', 'DROP'],
  ['-A', 'FORWARD', '-j', 'DOCKER-USER'],
  ['-A', 'FORWARD', '-o', 'docker0', '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'ACCEPT'],
  ['-A', 'FORWARD', '-i', 'docker0', '!', '-o', 'docker0', '-j', 'ACCEPT'],
];

/** A table of the user's own: counts what arrives from containers, before and after transgate's chain. */
const USER_TABLE = `table inet mine {
  chain count_pre { type filter hook prerouting priority raw; policy accept; iifname "docker0" counter; }
  chain count_in { type filter hook input priority filter; policy accept; iifname "docker0" counter; }
}`;

describe('Docker host: containers behind a bridge', { skip, timeout: 180_000 }, () => {
  let lab: Lab;
  let ct: string;
  let gw: Gw | undefined;
  let dockerBefore = '';

  const inCt = (argv: string[]) => lab.exec(ct, argv, { timeoutMs: 20_000 });

  before(async () => {
    lab = await Lab.create();
    await lab.startDnsServers();
    ct = `${lab.id}-x-ct`;
    const must = async (ns: string, argv: string[]): Promise<void> => {
      const r = await lab.exec(ns, argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    };
    const host = async (argv: string[]): Promise<void> => {
      const r = await lab.exec('gw', argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    };
    const add = spawnSync('ip', ['netns', 'add', ct], { encoding: 'utf8' });
    assert.equal(add.status, 0, add.stderr);
    await host(['ip', 'link', 'add', 'docker0', 'type', 'bridge']);
    await host(['ip', 'addr', 'add', `${BRIDGE_IP}/16`, 'dev', 'docker0']);
    await host(['ip', 'link', 'set', 'docker0', 'up']);
    // Created straight into both namespaces (the host never sees the pair), as the lab does for its own links.
    const veth = spawnSync('ip', ['-n', lab.ns.gw, 'link', 'add', 'vethct', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ct], {
      encoding: 'utf8',
    });
    assert.equal(veth.status, 0, veth.stderr);
    await host(['ip', 'link', 'set', 'vethct', 'master', 'docker0', 'up']);
    await must(ct, ['ip', 'link', 'set', 'lo', 'up']);
    await must(ct, ['ip', 'addr', 'add', `${CONTAINER_IP}/16`, 'dev', 'eth0']);
    await must(ct, ['ip', 'link', 'set', 'eth0', 'up']);
    await must(ct, ['ip', 'route', 'add', 'default', 'via', BRIDGE_IP]);
    for (const rule of DOCKER_RULES) await host(['iptables', ...rule]);
    const mine = await lab.exec('gw', ['nft', '-f', '-'], { input: USER_TABLE });
    assert.equal(mine.code, 0, mine.stderr);
    dockerBefore = (await lab.exec('gw', ['iptables-save'])).stdout;
    // Docker points containers at the host's resolver: here, the bridge address, answered by transgate.
    // The Docker-host recipe: redirect mode, because Docker's br_netfilter defeats TPROXY on its bridges (last test).
    gw = await lab.startGateway(['--mode', 'redirect', '--public-dns', DNS_ADDR.public.v4], {
      http_proxy: ADDR.proxyUrl,
      https_proxy: ADDR.proxyUrl,
    });
  });

  after(async () => {
    await gw?.stop('SIGTERM', 5000).catch(() => gw?.kill9());
    await lab?.transgate(['clear']).catch(() => undefined);
    if (ct) spawnSync('ip', ['netns', 'del', ct]);
    await lab?.destroy();
  });

  test('a container with no proxy settings resolves a public name and fetches it over HTTP and HTTPS through the proxy', async () => {
    const from = await lab.squidMark();
    const dig = await inCt(['dig', '+time=4', '+tries=1', `@${BRIDGE_IP}`, 'www.example.test', 'A', '+short']);
    assert.equal(
      dig.stdout.trim(),
      O4,
      `${dig.stdout}${dig.stderr}\n${gw!.output()}\n${(await lab.exec('gw', ['nft', 'list', 'ruleset'])).stdout}`,
    );
    const http = await inCt([
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--resolve',
      `www.example.test:80:${O4}`,
      'http://www.example.test/build-step',
    ]);
    assert.match(http.stdout, /^origin host=www\.example\.test uri=\/build-step/, `${http.stderr}\n${gw!.output()}`);
    const https = await inCt([
      'curl',
      '-sS',
      '--max-time',
      '10',
      '--cacert',
      lab.caFile,
      '--resolve',
      `www.example.test:443:${O4}`,
      'https://www.example.test/pull',
    ]);
    assert.match(https.stdout, /^origin host=www\.example\.test uri=\/pull proto=https/, https.stderr);
    await lab.waitSquidLog(/ GET http:\/\/www\.example\.test\/build-step 200 /, 3000, from);
    await lab.waitSquidLog(/ CONNECT www\.example\.test:443 /, 3000, from);
    // The gateway saw the container as the client.
    await gw!.waitFor(new RegExp(`\\bconn id=.* client=${CONTAINER_IP.replace(/\./g, '\\.')}:`), 3000);
  });

  test("the user's own table saw the container's traffic (it runs beside transgate's, not instead of it)", async () => {
    const r = await lab.exec('gw', ['nft', 'list', 'table', 'inet', 'mine']);
    const counts = [...r.stdout.matchAll(/counter packets (\d+)/g)].map((m) => Number(m[1]));
    assert.equal(counts.length, 2, r.stdout);
    assert.ok(counts[0]! > 0 && counts[1]! > 0, r.stdout);
  });

  test("stop removes transgate's rules and leaves Docker's and the user's as they were", async () => {
    assert.equal(await gw!.stop(), 0);
    gw = undefined;
    const tables = (await lab.exec('gw', ['nft', 'list', 'tables'])).stdout;
    assert.doesNotMatch(tables, /transgate/);
    assert.match(tables, /table inet mine/);
    const dockerAfter = (await lab.exec('gw', ['iptables-save'])).stdout;
    const strip = (s: string) =>
      s
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]/, ''))
        .join('\n');
    assert.equal(strip(dockerAfter), strip(dockerBefore));
  });

  test('tproxy mode with bridge-nf-call-iptables=1: the start warns and doctor fails, both naming --mode redirect', async () => {
    const sysctl = await lab.exec('gw', ['sysctl', '-n', 'net.bridge.bridge-nf-call-iptables']);
    assert.equal(sysctl.stdout.trim(), '1', 'Docker hosts run with br_netfilter calling iptables');
    const env = { http_proxy: ADDR.proxyUrl, https_proxy: ADDR.proxyUrl };
    const g = await lab.startGateway(['--mode', 'tproxy', '--no-dns'], env);
    try {
      assert.ok(
        g.lines.some((l) => /warn .*bridge docker0 will not be intercepted in tproxy mode.*--mode redirect/.test(l)),
        g.output(),
      );
    } finally {
      assert.equal(await g.stop(), 0);
    }
    const doctor = await lab.transgate(['doctor', '--mode', 'tproxy', '--doctor-target', 'www.example.test:443'], env, 60_000);
    assert.equal(doctor.code, 1, doctor.stdout + doctor.stderr);
    assert.match(doctor.stdout, /FAIL .*bridge-nf-call-iptables = 1 and clients arrive through bridge docker0/);
    assert.match(doctor.stdout, /fix: --mode redirect/);
  });
});

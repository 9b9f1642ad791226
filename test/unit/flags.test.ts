import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildConfig } from '../../src/config/config';
import { FLAGS, helpText, parseArgs, parseDuration, parsePorts } from '../../src/config/flags';
import { GatewayError } from '../../src/core/errors';

function flagCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof GatewayError ? err.code : 'not-a-gateway-error';
  }
  return undefined;
}

describe('parseArgs', () => {
  test('defaults', () => {
    const a = parseArgs([]);
    assert.equal(a.command, 'run');
    assert.equal(a.values['mode'], 'tproxy');
    assert.deepEqual(a.values['http-ports'], [80, 11371], 'HKP (gpg --recv-keys) is HTTP on 11371');
    assert.deepEqual(a.values['tls-ports'], [443]);
    assert.deepEqual(a.values['tcp-proxy-dports'], [22]);
    assert.equal(a.given.size, 0);
  });

  test('go-transproxy single-dash spelling and --flag=value', () => {
    const a = parseArgs(['-tcp-proxy-dports', '22,5000', '--mode=redirect', '-loglevel', 'debug']);
    assert.deepEqual(a.values['tcp-proxy-dports'], [22, 5000]);
    assert.equal(a.values['mode'], 'redirect');
    assert.equal(a.values['log-level'], 'debug');
    assert.deepEqual([...a.given].sort(), ['log-level', 'mode', 'tcp-proxy-dports']);
  });

  test('commands and negations', () => {
    assert.equal(parseArgs(['rules', '--mode', 'redirect']).command, 'rules');
    assert.equal(parseArgs(['clear']).command, 'clear');
    assert.equal(parseArgs(['--no-ipv6']).values['ipv6'], false);
    assert.equal(parseArgs(['-disable-iptables']).values['rules'], false);
    assert.equal(parseArgs(['--ipv4=false']).values['ipv4'], false);
  });

  test('wrong flags say what is wrong', () => {
    assert.equal(
      flagCode(() => parseArgs(['--bogus'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['--mode', 'nat'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['--http-ports'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['--http-ports', '0'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['--http-ports', '70000'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['stray'])),
      'TG_ERR_FLAG',
    );
    assert.equal(
      flagCode(() => parseArgs(['--fwmark', 'x'])),
      'TG_ERR_FLAG',
    );
    assert.match(
      String(
        (() => {
          try {
            parseArgs(['--mode', 'nat']);
          } catch (e) {
            return (e as Error).message;
          }
          return '';
        })(),
      ),
      /tproxy, redirect/,
    );
  });

  test('ports and ranges', () => {
    assert.deepEqual(parsePorts('22, 5000-5002,22', 'x'), [22, 5000, 5001, 5002]);
    assert.throws(() => parsePorts('5-1', 'x'));
    assert.throws(() => parsePorts('1-5000', 'x'), /too wide/);
  });

  test('durations', () => {
    assert.equal(parseDuration('500ms', 'x'), 500);
    assert.equal(parseDuration('10', 'x'), 10_000);
    assert.equal(parseDuration('1.5s', 'x'), 1500);
    assert.equal(parseDuration('5m', 'x'), 300_000);
    assert.throws(() => parseDuration('soon', 'x'));
  });

  test('--help documents every flag with its default', () => {
    const help = helpText('0.0.0');
    for (const f of FLAGS) assert.ok(help.includes(`--${f.name}`), `--${f.name} missing from --help`);
    assert.match(help, /--tcp-proxy-dports.*\n?.*\(default: 22\)/);
    assert.match(help, /http_proxy/);
  });
});

describe('buildConfig', () => {
  const env = { http_proxy: 'http://alice:p%40ss@proxy.example:3128', no_proxy: '.corp.example,10.0.0.0/8,bad/99' };

  test('proxy and no_proxy from the environment', () => {
    const cfg = buildConfig(parseArgs([]).values, env);
    assert.equal(cfg.upstream.http[0]?.host, 'proxy.example');
    assert.equal(cfg.upstream.https[0]?.port, 3128, 'https falls back to http_proxy');
    assert.equal(cfg.upstream.http[0]?.auth?.password, 'p@ss');
    assert.ok(cfg.noProxy.matchName('git.corp.example', 22));
    assert.ok(
      cfg.warnings.some((w) => w.includes('bad/99')),
      'invalid no_proxy entries are warned about',
    );
  });

  test('the trust-boundary flags: --clients by family, limits and --fail-closed', () => {
    const cfg = buildConfig(
      parseArgs(['--clients', '192.0.2.0/24,2001:db8:1::5', '--max-conns-per-client', '8', '--max-conns', '100', '--fail-closed']).values,
      env,
    );
    assert.deepEqual([cfg.clients4, cfg.clients6], [['192.0.2.0/24'], ['2001:db8:1::5/128']]);
    assert.deepEqual([cfg.maxConnsPerClient, cfg.maxConns, cfg.failClosed, cfg.dnsClientRate], [8, 100, true, 1000]);
    const d = buildConfig(parseArgs([]).values, env);
    assert.deepEqual([d.clients4, d.clients6, d.maxConnsPerClient, d.maxConns, d.failClosed], [[], [], 512, 0, false]);
    // DNS servers reach a CONNECT line: canonical text.
    assert.deepEqual(buildConfig(parseArgs(['--public-dns', '[2001:DB8:0::53]:5353']).values, env).dns?.publicDns, {
      host: '2001:db8::53',
      port: 5353,
    });
  });

  test('no proxy at all: direct, with a warning that says how to set one', () => {
    const cfg = buildConfig(parseArgs([]).values, {});
    assert.deepEqual(cfg.upstream, { http: [], https: [] });
    assert.ok(cfg.warnings.some((w) => /http_proxy/.test(w)));
  });

  test('--upstream: several proxies in order for every port, repeatable, over the environment; a bad one names the flag', () => {
    const cfg = buildConfig(
      parseArgs([
        '--upstream',
        'http://a.example:3128,http://b.example:3128',
        '--upstream=http://c.example:8080',
        '--upstream',
        'a.example:3128',
      ]).values,
      env,
    );
    assert.deepEqual(
      cfg.upstream.http.map((p) => p.display),
      ['http://a.example:3128', 'http://b.example:3128', 'http://c.example:8080'],
      'in order, the repeated one once, the environment not used',
    );
    assert.equal(cfg.upstream.https, cfg.upstream.http);
    assert.equal(cfg.upstreamCheckMs, 30_000);
    assert.equal(buildConfig(parseArgs(['--upstream-check-interval', '0']).values, env).upstreamCheckMs, 0);
    assert.throws(
      () => buildConfig(parseArgs(['--upstream', 'http://ok.example:1,http://u:secret@bad!host:3128']).values, env),
      (e: GatewayError) => e.code === 'TG_ERR_CONFIG' && /--upstream/.test(e.message) && !/secret/.test(e.message),
    );
  });

  test('--proxy-credentials: user:password from a file of mode 0600 for the upstreams without any; others refused', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-cred-'));
    try {
      const file = path.join(dir, 'cred');
      fs.writeFileSync(file, 'CORP\\alice:s3cret:x\nignored\n', { mode: 0o600 });
      const cfg = buildConfig(
        parseArgs(['--proxy-credentials', file, '--upstream', 'http://a.test:3128,http://bob:pw@b.test:3128']).values,
        {},
      );
      assert.deepEqual(cfg.upstream.http[0]!.auth, { user: 'CORP\\alice', password: 's3cret:x' });
      assert.equal(cfg.upstream.http[0]!.authorization, `Basic ${Buffer.from('CORP\\alice:s3cret:x').toString('base64')}`);
      assert.deepEqual(cfg.upstream.http[1]!.auth, { user: 'bob', password: 'pw' }, "a URL's own credentials win");
      assert.equal(cfg.upstream.https, cfg.upstream.http);
      fs.chmodSync(file, 0o640);
      assert.throws(
        () => buildConfig(parseArgs(['--proxy-credentials', file]).values, { http_proxy: 'http://a.test:3128' }),
        (e: GatewayError) => e.code === 'TG_ERR_CONFIG' && /chmod 600/.test(e.message) && !/s3cret/.test(e.message),
      );
      fs.writeFileSync(file, 's3cret-without-user\n', { mode: 0o600 });
      fs.chmodSync(file, 0o600);
      assert.throws(
        () => buildConfig(parseArgs(['--proxy-credentials', file]).values, {}),
        (e: GatewayError) => /user:password/.test(e.message) && !/s3cret/.test(e.message),
      );
      assert.throws(() => buildConfig(parseArgs(['--proxy-credentials', path.join(dir, 'none')]).values, {}), /ENOENT/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a list flag given twice adds to it', () => {
    assert.deepEqual(parseArgs(['--lan', 'eth1', '--lan', 'eth2,eth3']).values['lan'], ['eth1', 'eth2', 'eth3']);
  });

  test('conflicting and invalid settings fail before start-up', () => {
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--tls-ports', '80']).values, env)),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--http-proxy-listen', '3143']).values, env)),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--bypass', 'nope']).values, env)),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--clients', '192.0.2.0/33']).values, env)),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--no-ipv4', '--no-ipv6']).values, env)),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs([]).values, { http_proxy: 'socks5://x:1080' })),
      'TG_ERR_CONFIG',
    );
    assert.equal(
      flagCode(() => buildConfig(parseArgs(['--lan', 'a b;rm']).values, env)),
      'TG_ERR_CONFIG',
    );
    const a = parseArgs(['--tls-ports', '80']);
    assert.equal(
      flagCode(() => buildConfig(a.values, env, a.given)),
      'TG_ERR_CONFIG',
      'only 11371 yields',
    );
  });

  // 11371 joined the --http-ports default: `--tcp-proxy-dports 22,11371`, which started before, failed
  // with "port 11371 is in both --http-ports and --tcp-proxy-dports" until the default yielded to it.
  test('a command line that names 11371 elsewhere takes it from the --http-ports default', () => {
    const a = parseArgs(['--tcp-proxy-dports', '22,11371']);
    const cfg = buildConfig(a.values, env, a.given);
    assert.deepEqual([cfg.httpPorts, cfg.tcpPorts], [[80], [22, 11371]]);
    assert.deepEqual(buildConfig(parseArgs([]).values, env).httpPorts, [80, 11371]);
    const both = parseArgs(['--http-ports', '80,11371', '--tls-ports', '443,11371']);
    assert.equal(
      flagCode(() => buildConfig(both.values, env, both.given)),
      'TG_ERR_CONFIG',
      'named twice: still an error',
    );
  });

  test('--bypass splits families and makes host routes', () => {
    const cfg = buildConfig(parseArgs(['--bypass', '203.0.113.0/24,2001:db8::1']).values, env);
    assert.deepEqual(cfg.bypass4, ['203.0.113.0/24']);
    assert.deepEqual(cfg.bypass6, ['2001:db8::1/128']);
  });
});

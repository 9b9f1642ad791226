import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { _internal as doctor } from '../../src/cli/doctor';
import { buildConfig } from '../../src/config/config';
import { parseArgs, parsePorts } from '../../src/config/flags';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { GatewayError } from '../../src/core/errors';
import { parseAuthority } from '../../src/core/names';
import { interfaceMatches, isInterfaceName, isInterfacePattern, isPort, parsePort } from '../../src/core/validate';
import { planIptables } from '../../src/netfilter/iptables';
import { plan } from '../../src/netfilter/plan';
import { parseNoProxy } from '../../src/config/no-proxy';
import { rulesConfig } from '../support/rules-config';

function configMessage(argv: string[]): string | undefined {
  try {
    buildConfig(parseArgs(argv).values, { http_proxy: 'http://192.0.2.1:3128' });
  } catch (err) {
    assert.ok(err instanceof GatewayError);
    assert.equal(err.code, 'TG_ERR_CONFIG');
    return err.message;
  }
  return undefined;
}

describe('parsePort', () => {
  it('decimal 1..65535, at most 5 digits, nothing else', () => {
    for (const [text, port] of [
      ['1', 1],
      ['80', 80],
      ['08080', 8080],
      ['00001', 1],
      ['65535', 65535],
    ] as const) {
      assert.equal(parsePort(text), port, text);
    }
    for (const bad of [
      '',
      '0',
      '00000',
      '65536',
      '99999',
      '000080',
      '100000',
      '+80',
      '-80',
      ' 80',
      '80 ',
      '8 0',
      '0x50',
      '1e3',
      '80.0',
      '８０',
      '٨٠',
      '80\n',
    ]) {
      assert.equal(parsePort(bad), undefined, JSON.stringify(bad));
    }
  });

  it('isPort: integers in 1..65535 only', () => {
    for (const p of [1, 443, 65535]) assert.ok(isPort(p), String(p));
    for (const p of [0, -1, 65536, 80.5, NaN, Infinity, '80', null, undefined]) assert.ok(!isPort(p), String(p));
  });

  // Each caller had its own digit rule: --http-ports took '000080' and a
  // '+' never reached one, --private-dns took any number of digits. All
  // now go through parsePort; the messages are each caller's own.
  it('every port parser in the tree agrees on the edge cases', () => {
    const cases: Array<[string, number | undefined]> = [
      ['443', 443],
      ['08080', 8080],
      ['000080', undefined],
      ['65536', undefined],
      ['0', undefined],
    ];
    for (const [text, want] of cases) {
      const ports = ((): number[] | undefined => {
        try {
          return parsePorts(text, 'http-ports');
        } catch {
          return undefined;
        }
      })();
      assert.deepEqual(ports, want === undefined ? undefined : [want], `--http-ports ${text}`);
      assert.deepEqual(parseAuthority(`example.com:${text}`, 80)?.port, want, `authority :${text}`);
      const proxy = ((): number | undefined => {
        try {
          return parseProxyUrl(`http://proxy.example:${text}`).port;
        } catch {
          return undefined;
        }
      })();
      assert.equal(proxy, want, `proxy URL :${text}`);
      const dns = configMessage(['--dns', '--public-dns', `192.0.2.53:${text}`]);
      if (want === undefined) assert.equal(dns, `--public-dns: port in '192.0.2.53:${text}' must be between 1 and 65535`);
      else assert.equal(dns, undefined, `--public-dns :${text}`);
      assert.equal(parseNoProxy(`example.com:${text}`).invalid.length, want === undefined ? 1 : 0, `no_proxy :${text}`);
      assert.deepEqual(doctor.splitTarget(`example.com:${text}`), want === undefined ? undefined : { host: 'example.com', port: want });
    }
  });

  it('--http-ports keeps its messages: a range, a reversed range, a wide range', () => {
    assert.deepEqual(parsePorts('8000-8002', 'x'), [8000, 8001, 8002]);
    assert.throws(() => parsePorts('8002-8000', 'x'), /'8002-8000' is not a port or range between 1 and 65535/);
    assert.throws(() => parsePorts('1-2-3', 'x'), /'1-2-3' is not a port/);
    assert.throws(() => parsePorts('-5', 'x'), /'-5' is not a port/);
    assert.throws(() => parsePorts('1-65536', 'x'), /'1-65536' is not a port/);
    assert.throws(() => parsePorts('1-5000', 'x'), /too wide/);
  });
});

describe('interface names', () => {
  it('isInterfaceName: the kernel rule and the nft/iptables-safe set', () => {
    for (const ok of ['eth0', 'lo', 'eth0.100', 'br-lan', 'wlp2s0', 'veth_a@b', 'a', '...', '.x', 'abcdefghijklmno']) {
      assert.ok(isInterfaceName(ok), ok);
    }
    for (const bad of [
      '',
      '.',
      '..',
      'abcdefghijklmnop', // kernel: empty, dot names, 16 bytes
      'a/b',
      'a b',
      'a\tb',
      'eth0:1', // kernel: '/', whitespace, ':' (an alias label is no interface)
      'wan+0',
      'wan+', // iptables: '+' is its wildcard
      'lan"0',
      'a\\b',
      'br-*',
      '*',
      "a'b",
      'a;b',
      'a#b',
      'a$b', // nft quoting and wildcard, shell-ish bytes
      '-x', // reads as an option
      'ethé',
      'eth０', // non-ASCII: a 15-character name can be more than 15 bytes
    ]) {
      assert.ok(!isInterfaceName(bad), JSON.stringify(bad));
    }
    assert.ok(!isInterfaceName(undefined));
    assert.ok(!isInterfaceName(7));
  });

  it('isInterfacePattern: a name, or a 1..15-byte prefix with a trailing *', () => {
    for (const ok of ['eth0', 'br-*', 'veth*', '.*', 'abcdefghijklmno*']) assert.ok(isInterfacePattern(ok), ok);
    for (const bad of ['*', '**', 'a*b', 'a*b*', 'wan+*', 'abcdefghijklmnop*', '-*', 'a b*', 'eth0:*', '.', '..']) {
      assert.ok(!isInterfacePattern(bad), JSON.stringify(bad));
    }
  });

  it('interfaceMatches: exact names, prefixes with *', () => {
    assert.ok(interfaceMatches('eth0', 'eth0'));
    assert.ok(!interfaceMatches('eth0', 'eth01'));
    assert.ok(interfaceMatches('br-*', 'br-lan'));
    assert.ok(interfaceMatches('br-*', 'br-'));
    assert.ok(!interfaceMatches('br-*', 'br0'));
  });

  // `--masquerade wan+0` passed the flags (their regex took '+') and the
  // start failed when the rules were planned; --lan and --bridge took
  // 'eth0:1', which the kernel never names an interface. The flags now
  // refuse both, each with the one rule in its message.
  it('the flags refuse what the rules cannot take, with the rule in the message', () => {
    const rule = "1 to 15 of A-Z a-z 0-9 _ . @ - (not starting with '-')";
    assert.equal(
      configMessage(['--masquerade', 'wan+0']),
      `--masquerade: 'wan+0' is not an interface name (the uplink, e.g. eth0): ${rule}`,
    );
    assert.equal(configMessage(['--lan', 'eth0:1']), `--lan: 'eth0:1' is not an interface name (or a prefix with *, like br-*): ${rule}`);
    assert.equal(configMessage(['--lan', 'wan+*']), `--lan: 'wan+*' is not an interface name (or a prefix with *, like br-*): ${rule}`);
    assert.equal(configMessage(['--bridge', 'br0:x']), `--bridge: 'br0:x' is not an interface name: ${rule}`);
    assert.equal(configMessage(['--lan', 'lan0,br-*', '--masquerade', 'wan0', '--bridge', 'br0']), undefined);
    assert.equal(configMessage(['--masquerade', 'eth*']), `--masquerade: 'eth*' is not an interface name (the uplink, e.g. eth0): ${rule}`);
  });

  it('both planners agree with the flags on every name', () => {
    const takes = (fn: () => unknown): boolean => {
      try {
        fn();
        return true;
      } catch (err) {
        assert.ok(err instanceof GatewayError && err.code === 'TG_ERR_CONFIG', String(err));
        return false;
      }
    };
    for (const name of ['eth0', 'br-*', 'wan+0', 'eth0:1', '-x', '.', 'lan"0', 'abcdefghijklmno', 'abcdefghijklmnop']) {
      const lan = isInterfacePattern(name);
      assert.equal(
        takes(() => plan(rulesConfig({ lanInterfaces: [name] }))),
        lan,
        `nft lan ${name}`,
      );
      assert.equal(
        takes(() => planIptables(rulesConfig({ lanInterfaces: [name] }))),
        lan,
        `iptables lan ${name}`,
      );
      const masq = isInterfaceName(name);
      assert.equal(
        takes(() => plan(rulesConfig({ masquerade: [name] }))),
        masq,
        `nft masquerade ${name}`,
      );
      assert.equal(
        takes(() => planIptables(rulesConfig({ masquerade: [name] }))),
        masq,
        `iptables masquerade ${name}`,
      );
    }
  });
});

describe('--doctor-target goes through parseAuthority', () => {
  // It had its own host:port split: the host reached the CONNECT line as
  // typed (upper case, spaces, an unbracketed IPv6 part).
  it('a validated, canonical host and a written port', () => {
    assert.deepEqual(doctor.splitTarget('Example.COM:443'), { host: 'example.com', port: 443 });
    assert.deepEqual(doctor.splitTarget('[2001:DB8:0::1]:8443'), { host: '2001:db8::1', port: 8443 });
    assert.deepEqual(doctor.splitTarget('192.0.2.1:443'), { host: '192.0.2.1', port: 443 });
    for (const bad of ['example.com', 'example.com:', 'ex ample.com:443', 'a_b!:443', '[2001:db8::1]', '2001:db8::1:443', 'x:+443']) {
      assert.equal(doctor.splitTarget(bad), undefined, bad);
    }
  });
});

/**
 * Proxy authentication beyond Basic, end to end against the lab's squid:
 * NTLM (squid's ntlm_fake_auth: the real message flow, any credentials
 * accepted) and Digest (digest_file_auth with alice's password), each the
 * only scheme squid offers, so the gateway's Basic up front is refused and
 * the handshake must happen. TLS connections (CONNECT)
 * on both relays (the addon's upstream() legs, and openTunnel on Node
 * sockets) and in both modes; a wrong Digest password ends in the
 * gateway's 407 result that names the scheme.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADDR, type Gw, Lab, e2eSkipReason, parseKv } from './lab';

const skip = e2eSkipReason();
const WWW = ADDR.names.www;
const O4 = ADDR.origin.v4;
const MODES = ['tproxy', 'redirect'] as const;
const RELAYS = ['splice', 'js'] as const;
const pw = encodeURIComponent(ADDR.auth.password);
const URLS = {
  ntlm: `http://LAB%5C${ADDR.auth.user}:${pw}@${ADDR.proxy.v4}:${ADDR.proxy.port}`,
  digest: ADDR.proxyUrlAuth,
} as const;

describe('proxy authentication: NTLM and Digest with a real squid', { skip, timeout: 300_000 }, () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
  });
  after(async () => {
    await lab?.transgate(['clear']).catch(() => undefined);
    await lab?.destroy();
  });

  const curl = (path: string) =>
    lab.exec('cl', ['curl', '-sS', '--max-time', '8', '--cacert', lab.caFile, '--resolve', `${WWW}:443:${O4}`, `https://${WWW}${path}`], {
      timeoutMs: 10_000,
    });

  async function gateway(mode: string, relay: string, url: string): Promise<Gw> {
    return lab.startGateway(['--mode', mode, '--relay', relay, '--no-dns', '--tcp-proxy-dports', ''], {
      https_proxy: url,
      http_proxy: url,
    });
  }

  for (const scheme of ['ntlm', 'digest'] as const) {
    describe(scheme, () => {
      before(async () => {
        await lab.restartSquid({ auth: true, authScheme: scheme });
      });

      for (const relay of RELAYS) {
        for (const mode of MODES) {
          test(`--mode ${mode} --relay ${relay}: a TLS connection gets through after the ${scheme} handshake, squid logs the user`, async () => {
            const gw = await gateway(mode, relay, URLS[scheme]);
            try {
              const sq = await lab.squidMark();
              const tag = `/${scheme}-${mode}-${relay}`;
              const r = await curl(tag);
              assert.equal(r.code, 0, `${r.stderr}\n${gw.output()}`);
              const lines = await lab.squidLogSince(sq);
              const ok = lines.find((l) => / CONNECT www\.example\.test:443 200 /.test(l));
              assert.ok(ok, lines.join('\n'));
              assert.doesNotMatch(ok, / -$/, `squid knows the user: ${ok}`);
              if (scheme === 'digest') assert.match(ok, / alice$/);
              // The next connection starts with the scheme the proxy accepted (NTLM's first leg; for Digest, no
              // Basic up front): it gets through as well.
              const again = await curl(`${tag}-again`);
              assert.equal(again.code, 0, `${again.stderr}\n${gw.output()}`);
              // The handshake's 407s went to the gateway, never to the client.
              assert.ok(
                lines.some((l) => / CONNECT www\.example\.test:443 407 /.test(l)),
                lines.join('\n'),
              );
            } finally {
              await gw.stop('SIGTERM', 5000).catch(() => gw.kill9());
              await lab.transgate(['clear']).catch(() => undefined);
            }
          });
        }
      }

      test(`doctor says the ${scheme} credentials were accepted`, async () => {
        const r = await lab.transgate(['doctor', '--doctor-target', `${WWW}:443`, '--no-dns'], {
          https_proxy: URLS[scheme],
          http_proxy: URLS[scheme],
        });
        const name = scheme === 'ntlm' ? 'NTLM' : 'Digest';
        assert.match(
          r.stdout,
          new RegExp(`OK +proxy: http_proxy: CONNECT www\\.example\\.test:443 allowed \\(${name} credentials accepted\\)`),
          r.stdout,
        );
      });

      if (scheme === 'digest') {
        for (const relay of RELAYS) {
          test(`--relay ${relay}: a wrong Digest password is a 407 that says the Digest credentials were rejected`, async () => {
            const gw = await gateway('tproxy', relay, `http://${ADDR.auth.user}:wrong@${ADDR.proxy.v4}:${ADDR.proxy.port}`);
            try {
              const from = gw.mark();
              const r = await curl('/wrong');
              assert.notEqual(r.code, 0);
              const line = await gw.waitFor(/conn id=.*TG_ERR_UPSTREAM_407/, 8000, from);
              const f = parseKv(line);
              assert.match(f.error ?? line, /Digest credentials were rejected/, line);
              // Told once per upstream, however many clients meet it.
              const second = gw.mark();
              assert.notEqual((await curl('/wrong-again')).code, 0);
              await gw.waitFor(/conn id=.*TG_ERR_UPSTREAM_407/, 8000, second);
              const told = gw.linesSince(from).filter((l) => /rejects the gateway's credentials/.test(l));
              assert.equal(told.length, 1, gw.linesSince(from).join('\n'));
            } finally {
              await gw.stop('SIGTERM', 5000).catch(() => gw.kill9());
              await lab.transgate(['clear']).catch(() => undefined);
            }
          });
        }
      }
    });
  }
});

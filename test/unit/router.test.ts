import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseProxyUrl } from '../../src/config/proxy-url';
import { parseNoProxy } from '../../src/config/no-proxy';
import { Router } from '../../src/route/router';

const httpProxy = parseProxyUrl('http://proxy-http.example:3128');
const httpsProxy = parseProxyUrl('http://proxy-tls.example:8080');

test('HTTP ports use http_proxy, TLS and other TCP use https_proxy', () => {
  const r = new Router({ http: [httpProxy], https: [httpsProxy] }, parseNoProxy(''));
  assert.equal(r.select({ kind: 'http', name: 'a.example', address: '203.0.113.2', port: 80 }).proxy, httpProxy);
  assert.equal(r.select({ kind: 'tls', name: 'a.example', address: '203.0.113.2', port: 443 }).proxy, httpsProxy);
  assert.equal(r.select({ kind: 'tcp', name: undefined, address: '203.0.113.2', port: 22 }).proxy, httpsProxy);
});

test('no_proxy matches the sniffed name or the original destination', () => {
  const r = new Router({ http: [httpProxy], https: [httpsProxy] }, parseNoProxy('.corp.example,198.51.100.0/24,[2001:db8::5]'));
  assert.deepEqual(
    r.select({ kind: 'tls', name: 'git.corp.example', address: '203.0.113.2', port: 443, nameVerified: true }).kind,
    'direct',
  );
  assert.deepEqual(r.select({ kind: 'tcp', name: undefined, address: '198.51.100.3', port: 22 }).kind, 'direct');
  assert.deepEqual(r.select({ kind: 'http', name: 'www.example', address: '2001:db8::5', port: 80 }).kind, 'direct');
  assert.deepEqual(r.select({ kind: 'http', name: 'www.example', address: '203.0.113.2', port: 80 }).kind, 'proxy');
});

test('without a proxy everything goes direct', () => {
  const r = new Router({ http: [], https: [] }, parseNoProxy(''));
  const d = r.select({ kind: 'tls', name: 'a.example', address: '203.0.113.2', port: 443 });
  assert.equal(d.kind, 'direct');
  assert.equal(d.proxy, undefined);
});

// A forged Host/SNI naming a no_proxy domain sent any destination past the proxy (CVE-2009-0801 in squid's words).
test('a no_proxy name goes direct only once verified against the destination', () => {
  const r = new Router({ http: [httpProxy], https: [httpsProxy] }, parseNoProxy('.corp.example,198.51.100.0/24'));
  const input = { kind: 'tls', name: 'wiki.corp.example', address: '203.0.113.2', port: 443 } as const;
  assert.equal(r.needsVerification(input), true);
  assert.equal(r.select(input).kind, 'proxy');
  assert.equal(r.select({ ...input, nameVerified: false }).kind, 'proxy');
  assert.equal(r.select({ ...input, nameVerified: true }).kind, 'direct');
  // By address, or with no proxy to skip, there is nothing to verify.
  assert.equal(r.needsVerification({ ...input, address: '198.51.100.7' }), false);
  assert.equal(r.select({ ...input, address: '198.51.100.7' }).kind, 'direct');
  assert.equal(r.needsVerification({ ...input, name: 'www.example' }), false);
  assert.equal(new Router({ http: [], https: [] }, parseNoProxy('.corp.example')).needsVerification(input), false);
});

import assert from 'node:assert/strict';
import { isIPv4, isIPv6 } from 'node:net';
import {
  isLocalhostName,
  isValidHostname,
  normalizeHostname,
  parseAuthority,
  parseHost,
  parseIPv4,
  parseIPv6,
  type HostTarget,
} from '../../src/core/names';
import type { Rng, Target } from './harness';
import { authorityText, hostText } from './hosts';

/** ASCII-only lower case: what a host name's case folding may do, and nothing else. */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 0x20));
}

const DOTTED_QUAD = /^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$/;
const V4_CHARS = /^[0-9a-fx.]+$/i;

/**
 * The reference for parseIPv4: WHATWG URL's host parser, which Node
 * implements (ada). For strings of [0-9a-fx.] it either parses an IPv4
 * address (the last label ends in a number), returns the string as a
 * domain, or fails; only the first is an address.
 */
function urlIPv4(text: string): string | undefined {
  let host: string;
  try {
    host = new URL(`http://${text}/`).hostname;
  } catch {
    return undefined;
  }
  return DOTTED_QUAD.test(host) ? host : undefined;
}

function checkTarget(t: HostTarget, input: string): void {
  if (t.kind === 'name') {
    assert.ok(isValidHostname(t.host), `name ${JSON.stringify(t.host)} does not validate`);
    assert.match(t.host, /^[a-z0-9._-]+$/);
    // A name is the input itself, ASCII-lowercased, one trailing dot dropped: no other mapping.
    assert.equal(t.host, asciiLower(input).replace(/\.$/, ''), 'a name is the input lowercased (ASCII) without its trailing dot');
  } else if (t.family === 4) {
    assert.match(t.host, DOTTED_QUAD);
    assert.ok(isIPv4(t.host));
    assert.equal(parseIPv4(t.host), t.host);
  } else {
    assert.match(t.host, /^[0-9a-f:.]+$/);
    assert.ok(isIPv6(t.host));
    assert.equal(parseIPv6(t.host), t.host);
    assert.deepEqual(parseHost(`[${t.host}]`), t);
  }
  assert.deepEqual(parseHost(t.host), t, 'parseHost of its own result gives the same result');
}

const stats = { name: 0, ipv4: 0, ipv6: 0, authority: 0, urlCompared: 0 };

function checkString(s: string): void {
  const name = normalizeHostname(s);
  if (name !== undefined) {
    assert.ok(isValidHostname(name));
    assert.equal(name, asciiLower(s).replace(/\.$/, ''));
    assert.equal(normalizeHostname(name), name);
  }
  assert.equal(isValidHostname(s), name === s);

  const host = parseHost(s);
  if (host !== undefined) {
    stats[host.kind === 'name' ? 'name' : host.family === 4 ? 'ipv4' : 'ipv6']++;
    checkTarget(host, s);
  }

  const v4 = parseIPv4(s);
  if (v4 !== undefined) {
    assert.match(v4, DOTTED_QUAD);
    assert.equal(parseIPv4(v4), v4);
  }
  if (V4_CHARS.test(s) && s.length <= 80) {
    stats.urlCompared++;
    assert.equal(v4, urlIPv4(s), `parseIPv4 and WHATWG URL disagree on ${JSON.stringify(s)}`);
  }

  const v6 = parseIPv6(s);
  if (v6 !== undefined) {
    assert.match(v6, /^[0-9a-f:.]+$/);
    assert.equal(parseIPv6(v6), v6);
  }

  const a = parseAuthority(s, 80);
  if (a !== undefined) {
    stats.authority++;
    assert.ok(Number.isInteger(a.port) && a.port >= 1 && a.port <= 65535);
    checkTarget(a.target, a.target.host);
    // Written back as an authority, it parses to the same thing.
    const text = a.target.kind === 'ip' && a.target.family === 6 ? `[${a.target.host}]:${a.port}` : `${a.target.host}:${a.port}`;
    assert.deepEqual(parseAuthority(text, 80), a);
  }
  isLocalhostName(s);
}

export const namesTarget: Target = {
  name: 'names',
  stats,
  generate(r: Rng): Buffer {
    return Buffer.from(r.chance(0.5) ? hostText(r) : authorityText(r), 'utf8');
  },
  fixtures: [
    'example.test',
    'WwW.Example.TEST.',
    '127.1',
    '0x7f000001',
    '017700000001',
    '0177.0.0.1',
    '[2001:db8::1]:80',
    '::ffff:1.2.3.4',
    'a_b-c.test:8080',
  ].map((s) => Buffer.from(s, 'latin1')),
  check(input: Buffer): void {
    // As bytes off the wire (latin1, how the sniffers decode) and as UTF-8 text (config, URLs).
    checkString(input.toString('latin1'));
    checkString(input.toString('utf8'));
  },
  describe(input: Buffer): string {
    return `${input.toString('hex')} (${JSON.stringify(input.toString('latin1'))})`;
  },
};

/**
 * Regressions in src/core/names.ts found by the names fuzzer
 * (test/fuzz/names.fuzz.ts), each named after what broke.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { normalizeHostname, parseHost, parseIPv4 } from '../../src/core/names';

describe('core/names regressions', () => {
  it('IPv4 parts with many leading zeros are still IPv4 (0x0000000001 was refused though URL and inet_aton read 1)', () => {
    // The 12-digit precision guard counted the leading zeros, so these fell through as neither name nor address.
    assert.equal(parseIPv4('0x21.0x0000000006fe39f'), '33.111.227.159');
    assert.equal(parseIPv4('0000000000000000000001'), '0.0.0.1');
    assert.deepEqual(parseHost('0x00000000007f000001'), { kind: 'ip', host: '127.0.0.1', family: 4 });
    assert.equal(parseIPv4('0x0000000000100000000'), undefined, 'past 2^32 is still refused');
  });

  it('a non-ASCII letter that lowercases into ASCII is no name (the Kelvin sign U+212A made "\u212a.test" k.test)', () => {
    // String#toLowerCase maps U+212A KELVIN SIGN to 'k' and U+0130 to 'i' plus a combining dot.
    assert.equal(normalizeHostname('\u212aelvin.test'), undefined);
    assert.equal(parseHost('\u212a.test'), undefined);
    assert.equal(normalizeHostname('WWW.Example.TEST.'), 'www.example.test', 'ASCII upper case still folds');
  });
});

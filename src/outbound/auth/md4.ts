/**
 * MD4 (RFC 1320), for NTLM's NTOWF: Node 20's OpenSSL 3 has MD4 only in
 * its legacy provider, which a stock Node does not load
 * (crypto.createHash('md4') throws ERR_OSSL_EVP_UNSUPPORTED), and no
 * well-kept package is worth a dependency for forty lines that run once per
 * credential. Tested against RFC 1320's suite.
 */

const F = (x: number, y: number, z: number): number => (x & y) | (~x & z);
const G = (x: number, y: number, z: number): number => (x & y) | (x & z) | (y & z);
const H = (x: number, y: number, z: number): number => x ^ y ^ z;
const rotl = (v: number, s: number): number => (v << s) | (v >>> (32 - s));

const R1 = [3, 7, 11, 19];
const R2 = [3, 5, 9, 13];
const R3 = [3, 9, 11, 15];
const K2 = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
const K3 = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15];

export function md4(data: Buffer): Buffer {
  // Padding: 0x80, zeros to 56 mod 64, then the bit length as 64-bit little endian.
  const padded = Buffer.alloc((((data.length + 8) >> 6) + 1) << 6);
  data.copy(padded);
  padded[data.length] = 0x80;
  const bits = data.length * 8;
  padded.writeUInt32LE(bits >>> 0, padded.length - 8);
  padded.writeUInt32LE(Math.floor(bits / 0x100000000) >>> 0, padded.length - 4);

  let a = 0x67452301;
  let b = 0xefcdab89;
  let c = 0x98badcfe;
  let d = 0x10325476;
  const x = new Array<number>(16);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) x[i] = padded.readInt32LE(off + i * 4);
    const [aa, bb, cc, dd] = [a, b, c, d];
    for (let i = 0; i < 16; i++) {
      const t = rotl((a + F(b, c, d) + x[i]!) | 0, R1[i % 4]!);
      [a, b, c, d] = [d, t, b, c];
    }
    for (let i = 0; i < 16; i++) {
      const t = rotl((a + G(b, c, d) + x[K2[i]!]! + 0x5a827999) | 0, R2[i % 4]!);
      [a, b, c, d] = [d, t, b, c];
    }
    for (let i = 0; i < 16; i++) {
      const t = rotl((a + H(b, c, d) + x[K3[i]!]! + 0x6ed9eba1) | 0, R3[i % 4]!);
      [a, b, c, d] = [d, t, b, c];
    }
    a = (a + aa) | 0;
    b = (b + bb) | 0;
    c = (c + cc) | 0;
    d = (d + dd) | 0;
  }
  const out = Buffer.alloc(16);
  out.writeInt32LE(a, 0);
  out.writeInt32LE(b, 4);
  out.writeInt32LE(c, 8);
  out.writeInt32LE(d, 12);
  return out;
}

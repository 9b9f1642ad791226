/**
 * Digest access authentication (RFC 7616; RFC 2617's MD5 and no-qop forms
 * too) for a proxy's 407: the Proxy-Authorization for one request from the
 * proxy's challenge. Hand-written: it is a few hashes over fixed strings,
 * checked against the RFC's own examples.
 */
import crypto from 'node:crypto';
import type { Challenge } from './challenge';

export interface DigestCredentials {
  user: string;
  password: string;
}

const ALGORITHMS: Record<string, { hash: 'md5' | 'sha256' | 'sha512-256'; sess: boolean }> = {
  md5: { hash: 'md5', sess: false },
  'md5-sess': { hash: 'md5', sess: true },
  'sha-256': { hash: 'sha256', sess: false },
  'sha-256-sess': { hash: 'sha256', sess: true },
};

/** Whether we can answer this Digest challenge (a known algorithm, qop auth or none, a nonce). */
export function digestUsable(c: Challenge): boolean {
  if (c.scheme !== 'digest' || c.params['nonce'] === undefined || c.params['realm'] === undefined) return false;
  if (ALGORITHMS[(c.params['algorithm'] ?? 'MD5').toLowerCase()] === undefined) return false;
  const qop = c.params['qop'];
  return qop === undefined || qop.split(',').some((q) => q.trim().toLowerCase() === 'auth');
}

/** The challenge's `stale=true`: the nonce expired, the credentials were right (retry with the new nonce, not a loop). */
export function digestStale(c: Challenge): boolean {
  return (c.params['stale'] ?? '').toLowerCase() === 'true';
}

const quote = (s: string): string => `"${s.replace(/[\\"]/g, '\\$&')}"`;

/**
 * The Proxy-Authorization value for `method uri` (CONNECT: uri is
 * host:port). `nc` counts the uses of this nonce; `cnonce` is random by
 * default (fixed for the RFC's test vectors).
 */
export function digestAuthorization(
  c: Challenge,
  creds: DigestCredentials,
  method: string,
  uri: string,
  nc = 1,
  cnonce: string = crypto.randomBytes(16).toString('base64'),
): string {
  const algoName = c.params['algorithm'] ?? 'MD5';
  const algo = ALGORITHMS[algoName.toLowerCase()];
  if (!algo) throw new Error(`digest: unsupported algorithm ${algoName}`);
  const H = (s: string): string => crypto.createHash(algo.hash).update(s, 'utf8').digest('hex');
  const realm = c.params['realm'] ?? '';
  const nonce = c.params['nonce'] ?? '';
  const qop = c.params['qop'] === undefined ? undefined : 'auth';
  const ncText = nc.toString(16).padStart(8, '0');
  let ha1 = H(`${creds.user}:${realm}:${creds.password}`);
  if (algo.sess) ha1 = H(`${ha1}:${nonce}:${cnonce}`);
  const ha2 = H(`${method}:${uri}`);
  const response = qop ? H(`${ha1}:${nonce}:${ncText}:${cnonce}:${qop}:${ha2}`) : H(`${ha1}:${nonce}:${ha2}`);
  const parts = [
    `username=${quote(creds.user)}`,
    `realm=${quote(realm)}`,
    `nonce=${quote(nonce)}`,
    `uri=${quote(uri)}`,
    `algorithm=${algoName}`,
    `response=${quote(response)}`,
  ];
  if (c.params['opaque'] !== undefined) parts.push(`opaque=${quote(c.params['opaque'])}`);
  if (qop) parts.push(`qop=${qop}`, `nc=${ncText}`, `cnonce=${quote(cnonce)}`);
  return `Digest ${parts.join(', ')}`;
}

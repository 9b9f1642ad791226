/**
 * Proxy-Authenticate values (RFC 9110 11.6.1) as challenges: a scheme with
 * a token68 or auth-params. One header value may hold several challenges,
 * separated by the same commas as their params: a new challenge starts at
 * a token that is not followed by '='. The values come from the proxy,
 * off the network: the parser is bounded and gives up on what it cannot
 * read (that challenge is dropped, the others are kept).
 */

export interface Challenge {
  /** Lowercase: basic, digest, ntlm, negotiate, ... */
  scheme: string;
  token68?: string;
  /** auth-params, names lowercase, quoted values unescaped. */
  params: Record<string, string>;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/;
const TOKEN68 = /^[A-Za-z0-9._~+/-]+=*/;
const TOKEN68_END = /^[ \t]*(?:,|$)/;
/** More challenges or params than any proxy sends: the rest is ignored. */
const MAX_CHALLENGES = 16;
const MAX_PARAMS = 32;
const MAX_VALUE = 8192;

/** Every challenge of the values, in order. */
export function parseChallenges(values: readonly string[]): Challenge[] {
  const out: Challenge[] = [];
  for (const v of values) {
    if (v.length > MAX_VALUE) continue;
    readValue(v, out);
    if (out.length >= MAX_CHALLENGES) return out.slice(0, MAX_CHALLENGES);
  }
  return out;
}

function readValue(text: string, out: Challenge[]): void {
  let s = text;
  const skip = (): void => {
    s = s.replace(/^[ \t]*/, '');
  };
  for (;;) {
    s = s.replace(/^[ \t,]*/, '');
    if (s === '') return;
    const scheme = TOKEN.exec(s);
    if (!scheme) return; // nothing readable from here on
    s = s.slice(scheme[0].length);
    const c: Challenge = { scheme: scheme[0].toLowerCase(), params: {} };
    out.push(c);
    if (out.length >= MAX_CHALLENGES) return;
    skip();
    // token68: alone up to the next comma or the end ("realm=x" is a param: its '=' is followed by a value).
    const t68 = TOKEN68.exec(s);
    if (t68 && TOKEN68_END.test(s.slice(t68[0].length))) {
      c.token68 = t68[0];
      s = s.slice(t68[0].length);
      continue;
    }
    // auth-params until a token not followed by '=' (the next challenge).
    for (let n = 0; n < MAX_PARAMS; n++) {
      s = s.replace(/^[ \t,]*/, '');
      const name = TOKEN.exec(s);
      if (!name) return;
      const after = s.slice(name[0].length).replace(/^[ \t]*/, '');
      if (!after.startsWith('=')) break; // the next challenge's scheme
      s = after.slice(1).replace(/^[ \t]*/, '');
      let value: string;
      if (s.startsWith('"')) {
        const q = /^"((?:[^"\\]|\\.)*)"/.exec(s);
        if (!q) return;
        value = q[1]!.replace(/\\(.)/g, '$1');
        s = s.slice(q[0].length);
      } else {
        const t = TOKEN.exec(s);
        if (!t) return;
        value = t[0];
        s = s.slice(t[0].length);
      }
      c.params[name[0].toLowerCase()] = value;
      skip();
      if (s !== '' && !s.startsWith(',')) return;
    }
  }
}

import type { Address } from '../core/types';
import { formatAddress, hostPort } from '../core/types';
import { field, type Logger } from '../core/log';
import { normalizeHostname } from '../core/names';
import { DnsCache } from './cache';
import {
  Rcode,
  answerAddresses,
  buildError,
  cacheTtl,
  checkQuery,
  clientUdpLimit,
  parseMessage,
  personalize,
  rcodeName,
  sameName,
  truncate,
  typeName,
  type Message,
  type Question,
} from './message';
import type { NameMap } from './name-map';
import type { DnsTransport, Server } from './transports';

export type DnsRouteKind = 'private' | 'proxy' | 'doh' | 'direct';

export interface DnsRoute {
  kind: DnsRouteKind;
  transport: DnsTransport;
  /** Identifies the upstream in cache keys and logs. */
  upstream: string;
}

/** Chooses the upstream for a name; the caller builds transports (I/O lives there). */
export interface DnsRouter {
  route(name: string, asked: Server | undefined): DnsRoute | undefined;
}

export interface DnsQueryInfo {
  client: Address;
  /** Where the client sent it (undefined after UDP REDIRECT). */
  destination: Address | undefined;
  protocol: 'udp' | 'tcp';
}

export interface ResolverOptions {
  router: DnsRouter;
  timeoutMs: number;
  cacheSize: number;
  names: NameMap;
  log: Logger;
}

interface Upstream {
  answer: Buffer;
  parsed: Message;
}

/** Counters, declared in one place so that they document themselves. */
const DNS_STATS = [
  'queries',
  'cacheHits',
  'upstreamQueries',
  'shared',
  'servfail',
  'formerr',
  'dropped',
  'truncated',
  /** Answered (forwarded) but not a host name, so never remembered in the name map. */
  'notHostnames',
  /** Over the client's --dns-client-rate: dropped (UDP) or the connection closed (TCP). */
  'rateLimited',
  /** The client had too many queries in flight: dropped. */
  'clientBusy',
  /** The gateway had too many queries in flight: dropped. */
  'overloaded',
  /** From a source the gateway does not serve (--clients): no answer, TCP closed. */
  'refused',
] as const;
export type DnsStats = Record<(typeof DNS_STATS)[number], number>;

/** Private names are a suffix match on label boundaries, like no_proxy. */
export function isPrivateName(name: string, suffixes: readonly string[]): boolean {
  const n = name.toLowerCase().replace(/\.$/, '');
  return suffixes.some((s) => n === s || n.endsWith(`.${s}`));
}

/**
 * Answers clients' queries: checks them, serves from the cache, shares one
 * upstream query between identical concurrent ones, asks the upstream the
 * router picks, and fits the answer to the client (its ID, its question's
 * case, aged TTLs, TC when it does not fit its UDP size). Never throws:
 * every failure becomes SERVFAIL, FORMERR, NOTIMP or a dropped packet.
 */
export class DnsResolver {
  readonly cache: DnsCache;
  readonly stats: DnsStats = Object.fromEntries(DNS_STATS.map((k) => [k, 0])) as DnsStats;
  private readonly inflight = new Map<string, Promise<Upstream>>();
  private readonly controllers = new Set<AbortController>();

  constructor(private readonly opts: ResolverOptions) {
    this.cache = new DnsCache(opts.cacheSize);
  }

  /** The answer to send, or undefined to drop the packet. */
  async handle(query: Buffer, info: DnsQueryInfo): Promise<Buffer | undefined> {
    const started = performance.now();
    this.stats.queries++;
    const check = checkQuery(query);
    if (!check.ok) {
      if (check.rcode === undefined) {
        this.stats.dropped++;
        this.logLine(info, undefined, '-', 'dropped', false, started, check.reason);
        return undefined;
      }
      this.stats.formerr++;
      this.logLine(info, undefined, '-', rcodeName(check.rcode), false, started, check.reason);
      return buildError(query, check.rcode);
    }
    const { message, question } = check;
    // Validated here, where the name enters: a name that is not a host name
    // (CR LF, spaces, control bytes, an escaped dot: all legal in DNS) is
    // still forwarded as asked, because answering it is the upstream's
    // business, but it is never remembered, so it never becomes a CONNECT
    // request line, and it is logged escaped.
    const host = normalizeHostname(question.name);
    if (host === undefined) this.stats.notHostnames++;
    const asked = info.destination ? { host: info.destination.address, port: info.destination.port } : undefined;
    const route = this.opts.router.route(question.name, asked);
    if (!route) {
      this.stats.servfail++;
      this.logLine(
        info,
        question,
        '-',
        'SERVFAIL',
        false,
        started,
        'no DNS server to ask for this name (set --public-dns / --private-dns)',
      );
      return buildError(query, Rcode.SERVFAIL);
    }
    const key = cacheKey(route.upstream, question, message);

    let up: Upstream | undefined;
    let age = 0;
    let cached = false;
    const hit = this.cache.get(key);
    if (hit) {
      up = { answer: hit.entry.answer, parsed: hit.entry.parsed };
      age = hit.age;
      cached = true;
      this.stats.cacheHits++;
    } else {
      try {
        up = await this.ask(key, route, query, question);
      } catch (err) {
        this.stats.servfail++;
        this.logLine(info, question, route.kind, 'SERVFAIL', false, started, (err as Error).message, route.upstream);
        return buildError(query, Rcode.SERVFAIL);
      }
    }
    let out = personalize(up.answer, up.parsed, query, question, age);
    if (info.protocol === 'udp') {
      const limit = clientUdpLimit(message);
      if (out.length > limit) {
        this.stats.truncated++;
        out = truncate(out, up.parsed, limit);
      }
    }
    if (host !== undefined) {
      for (const a of answerAddresses(up.answer, up.parsed)) {
        this.opts.names.remember(info.client.address, a.address, host, Math.max(0, a.ttl - age));
      }
    }
    this.logLine(info, question, route.kind, rcodeName(up.parsed.header.rcode), cached, started, undefined, route.upstream);
    return out;
  }

  /** One upstream query per key at a time: later askers wait for the first one's answer. */
  private ask(key: string, route: DnsRoute, query: Buffer, question: Question): Promise<Upstream> {
    const running = this.inflight.get(key);
    if (running) {
      this.stats.shared++;
      return running;
    }
    const p = this.fetch(route, query, question).finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p.then((up) => {
      const ttl = cacheTtl(up.answer, up.parsed);
      if (ttl !== undefined) this.cache.set(key, up.answer, up.parsed, ttl);
      return up;
    });
  }

  private async fetch(route: DnsRoute, query: Buffer, question: Question): Promise<Upstream> {
    this.stats.upstreamQueries++;
    const ac = new AbortController();
    this.controllers.add(ac);
    const timer = setTimeout(() => ac.abort(new Error(`no answer within ${this.opts.timeoutMs} ms`)), this.opts.timeoutMs);
    try {
      const answer = await route.transport.query(query, ac.signal);
      const parsed = parseMessage(answer);
      const q = parsed.question;
      // An answer to some other question must never reach the client (or the cache).
      if (!parsed.header.qr || !q || !sameName(q.name, question.name) || q.type !== question.type || q.class !== question.class) {
        throw new Error(`${route.transport.description} answered a different question`);
      }
      return { answer, parsed };
    } finally {
      clearTimeout(timer);
      this.controllers.delete(ac);
    }
  }

  close(): void {
    for (const ac of this.controllers) ac.abort(new Error('gateway closing'));
    this.controllers.clear();
    this.cache.clear();
  }

  private logLine(
    info: DnsQueryInfo,
    q: Question | undefined,
    route: string,
    rcode: string,
    cached: boolean,
    started: number,
    error?: string,
    upstream?: string,
  ): void {
    if (!this.opts.log.enabled('debug')) return;
    this.opts.log.debug(
      `dns client=${formatAddress(info.client)} proto=${info.protocol} ` +
        `server=${info.destination ? hostPort(info.destination.address, info.destination.port) : '-'} ` +
        `name=${q ? presentName(q.name) : '-'} type=${q ? typeName(q.type) : '-'} route=${route} via=${field(upstream)} rcode=${rcode} ` +
        `cached=${cached ? 1 : 0} ms=${Math.round(performance.now() - started)}${error ? ` error=${field(error)}` : ''}`,
    );
  }
}

/**
 * A question name fit for a log line: a host name as asked, anything else
 * with each byte outside letters, digits, '-', '_' and '.' as `\DDD` (the
 * master-file escapes dig prints, RFC 1035 5.1); '.' for the root.
 */
export function presentName(name: string): string {
  if (name === '') return '.';
  if (normalizeHostname(name) !== undefined) return name;
  // readName already gives master-file text (\DDD, \. and \\); what is left that a log reader could trip on becomes \DDD too.
  let out = '';
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const plain =
      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2d || c === 0x5f || c === 0x2e;
    if (plain) out += name[i];
    else if (c === 0x5c && /^[0-9]{3}$/.test(name.slice(i + 1, i + 4))) {
      out += name.slice(i, i + 4);
      i += 3;
    } else if (c === 0x5c && i + 1 < name.length) out += `\\${String(name.charCodeAt(++i)).padStart(3, '0')}`;
    else out += `\\${String(c).padStart(3, '0')}`;
  }
  return out;
}

/** Same upstream, name (any case), type, class, and the EDNS and DO bits that change what the upstream sends. */
function cacheKey(upstream: string, q: Question, m: Message): string {
  return `${upstream}|${q.name.toLowerCase()}|${q.type}|${q.class}|${m.edns ? 'e' : ''}${m.edns?.dnssecOk ? 'd' : ''}`;
}

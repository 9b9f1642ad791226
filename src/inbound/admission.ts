import { ErrorCodes, type ErrorCode } from '../core/errors';

/**
 * Descriptors kept for everything but client connections: DNS sockets and
 * tunnels, reply sockets, the splice relay's pipe pool, logs, Node itself
 * (about 40): a quarter of the limit, at most 256.
 */
const FD_RESERVE = 256;
/** Descriptors an open connection holds: the client's and the upstream's (a spliced one takes a pooled pipe only while bytes are in it). */
const FDS_PER_CONNECTION = 2;

/** --max-conns when not given: what the open-files limit leaves room for, so that refusals (and their log line) come before EMFILE. */
export function connectionBudget(softNofile: number): number {
  if (!Number.isFinite(softNofile)) return 0;
  const reserve = Math.min(FD_RESERVE, Math.ceil(softNofile / 4));
  return Math.max(16, Math.floor((softNofile - reserve) / FDS_PER_CONNECTION));
}

export interface AdmissionOptions {
  /** Open connections per client address; 0: no limit. */
  perClient: number;
  /** Open connections in all; 0: no limit. */
  total: number;
  /** The source may use the gateway (--clients); absent: any. */
  allow?: (address: string) => boolean;
}

/**
 * Who may open how many connections. One client holding thousands of idle
 * or trickling connections would otherwise take every descriptor, and
 * accept would then refuse everybody (DNS too). Counted at accept, on the
 * native and the Node path alike; released when the connection ends.
 */
export class Admission {
  private readonly perClient = new Map<string, number>();
  private count = 0;

  constructor(private readonly opts: AdmissionOptions) {}

  /** Whether the source may use the gateway at all (--clients); for the DNS service. */
  readonly allows = (client: string): boolean => this.opts.allow === undefined || this.opts.allow(client);

  get open(): number {
    return this.count;
  }

  /** Counts the connection and returns undefined, or says why it is refused (then nothing is counted). */
  admit(client: string): ErrorCode | undefined {
    if (this.opts.allow && !this.opts.allow(client)) return ErrorCodes.CLIENT_REFUSED;
    if (this.opts.total > 0 && this.count >= this.opts.total) return ErrorCodes.LIMIT;
    const n = this.perClient.get(client) ?? 0;
    if (this.opts.perClient > 0 && n >= this.opts.perClient) return ErrorCodes.CLIENT_LIMIT;
    this.perClient.set(client, n + 1);
    this.count++;
    return undefined;
  }

  /** Counts a connection whatever the limits (one handed from the native path to the Node path keeps its place). */
  adopt(client: string): void {
    this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
    this.count++;
  }

  release(client: string): void {
    const n = this.perClient.get(client);
    if (n === undefined) return;
    if (n <= 1) this.perClient.delete(client);
    else this.perClient.set(client, n - 1);
    this.count--;
  }

  /** Open connections of one client. */
  of(client: string): number {
    return this.perClient.get(client) ?? 0;
  }
}

/** A refusal logged at most once per interval per code, with how many there were meanwhile. */
export class RefusalLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly intervalMs: number,
    private readonly write: (line: string) => void,
    private readonly now: () => number = Date.now,
  ) {}

  note(code: string, line: string): void {
    const t = this.now();
    const e = this.last.get(code);
    if (e && t - e.at < this.intervalMs) {
      e.suppressed++;
      return;
    }
    const more = e && e.suppressed > 0 ? ` (and ${e.suppressed} more since the last such line)` : '';
    this.last.set(code, { at: t, suppressed: 0 });
    this.write(line + more);
  }
}

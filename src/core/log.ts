export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/**
 * At most one write(2) per this many milliseconds: a quiet gateway writes
 * each line at the end of its event-loop turn, a busy one the lines of many
 * connections at once (stderr on a pipe is a synchronous write in Node).
 * Timestamps are taken when a line is made, so the delay does not show in them.
 */
const FLUSH_INTERVAL_MS = 20;

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/** Levels padded to one width, so that messages line up. */
const LABEL: Record<LogLevel, string> = { debug: 'debug', info: 'info ', warn: 'warn ', error: 'error' };

let stampSecond = NaN;
let stampPrefix = '';

/**
 * `new Date(now).toISOString()`, with the part up to the second made once a
 * second: a busy gateway logs a line per connection, thousands a second.
 */
export function isoTimestamp(now: number = Date.now()): string {
  const second = Math.floor(now / 1000);
  if (second !== stampSecond) {
    stampSecond = second;
    stampPrefix = new Date(second * 1000).toISOString().slice(0, 20); // 2026-11-23T17:26:48.
  }
  const ms = now - second * 1000;
  return `${stampPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z`;
}

/**
 * Line-oriented logger on stderr: one event per line, key=value fields, so
 * that grep and log shippers read it without a parser.
 */
export class Logger {
  private threshold: number;
  /** Lines not yet written (see FLUSH_INTERVAL_MS). */
  private pending: string[] = [];
  private scheduled: { timer?: NodeJS.Timeout; immediate?: NodeJS.Immediate } | undefined;
  private lastWrite = -Infinity;
  private readonly flushNow = (): void => this.flush();

  constructor(
    level: LogLevel = 'info',
    private readonly write: (chunk: string) => void = (chunk) => process.stderr.write(chunk),
  ) {
    this.threshold = ORDER[level];
  }

  setLevel(level: LogLevel): void {
    this.threshold = ORDER[level];
  }

  enabled(level: LogLevel): boolean {
    return ORDER[level] >= this.threshold;
  }

  debug(msg: string): void {
    if (this.threshold <= ORDER.debug) this.emit('debug', msg);
  }

  info(msg: string): void {
    if (this.threshold <= ORDER.info) this.emit('info', msg);
  }

  warn(msg: string): void {
    if (this.threshold <= ORDER.warn) this.emit('warn', msg);
  }

  /** Errors are written at once, with everything before them: the process may be about to end. */
  error(msg: string): void {
    this.emit('error', msg);
    this.flush();
  }

  /** Writes what is pending; called at the end of a loop turn (see FLUSH_INTERVAL_MS) and before exit. */
  flush(): void {
    if (this.scheduled) {
      clearTimeout(this.scheduled.timer);
      clearImmediate(this.scheduled.immediate);
    }
    this.scheduled = undefined;
    if (this.pending.length === 0) return;
    const chunk = this.pending.join('\n') + '\n';
    this.pending = [];
    this.lastWrite = performance.now();
    this.write(chunk);
  }

  private emit(level: LogLevel, msg: string): void {
    this.pending.push(`${isoTimestamp()} ${LABEL[level]} ${msg}`);
    if (this.scheduled) return;
    const wait = this.lastWrite + FLUSH_INTERVAL_MS - performance.now();
    this.scheduled = wait > 0 ? { timer: setTimeout(this.flushNow, wait) } : { immediate: setImmediate(this.flushNow) };
  }
}

/** Anything but printable ASCII, and the bytes that end or quote a field. */
const NEEDS_QUOTING = /[^\x21-\x7e]|["=\\]/;
const ESCAPE = /[^\x20-\x7e]|["\\]/g;

function escapeChar(ch: string): string {
  if (ch === '"' || ch === '\\') return `\\${ch}`;
  const c = ch.charCodeAt(0);
  return c < 0x100 ? `\\x${c.toString(16).padStart(2, '0')}` : `\\u${c.toString(16).padStart(4, '0')}`;
}

/**
 * Quotes a value for a key=value log field when it needs it. Values may
 * come from clients (names, errors quoting them): every control and
 * non-ASCII byte is escaped (\\xNN), so that no client can end a line,
 * forge a field or send escape sequences to the terminal that shows the log.
 */
export function field(value: string | number | undefined): string {
  if (value === undefined || value === '') return '-';
  const s = String(value);
  if (!NEEDS_QUOTING.test(s)) return s;
  return `"${s.replace(ESCAPE, escapeChar)}"`;
}

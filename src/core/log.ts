export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/**
 * Line-oriented logger on stderr: one event per line, key=value fields, so
 * that grep and log shippers read it without a parser.
 */
export class Logger {
  private threshold: number;
  /** Lines of this event-loop turn, written together (one write(2) instead of one per connection). */
  private pending: string[] = [];
  private scheduled = false;
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

  /** Writes what is pending; called at the end of each loop turn and before exit. */
  flush(): void {
    this.scheduled = false;
    if (this.pending.length === 0) return;
    const chunk = this.pending.join('\n') + '\n';
    this.pending = [];
    this.write(chunk);
  }

  private emit(level: LogLevel, msg: string): void {
    this.pending.push(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}`);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushNow);
    }
  }
}

/** Quotes a value for a key=value log field when it needs it. */
export function field(value: string | number | undefined): string {
  if (value === undefined || value === '') return '-';
  const s = String(value);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/**
 * Line-oriented logger on stderr: one event per line, key=value fields, so
 * that grep and log shippers read it without a parser.
 */
export class Logger {
  private threshold: number;

  constructor(
    level: LogLevel = 'info',
    private readonly write: (line: string) => void = (line) => process.stderr.write(line + '\n'),
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

  error(msg: string): void {
    this.emit('error', msg);
  }

  private emit(level: LogLevel, msg: string): void {
    this.write(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}`);
  }
}

/** Quotes a value for a key=value log field when it needs it. */
export function field(value: string | number | undefined): string {
  if (value === undefined || value === '') return '-';
  const s = String(value);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

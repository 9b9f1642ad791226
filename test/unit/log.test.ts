import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { Logger, field, isoTimestamp } from '../../src/core/log';

/**
 * The Logger's clock and timers, mocked: its 20 ms interval is then waited
 * for with tick(), not a sleep that a loaded machine can stretch past the
 * next interval. performance.now (the Logger's clock) follows the mocked
 * Date, which node:test does not mock by itself.
 */
function mockClock(t: { after: (fn: () => void) => void }): void {
  mock.timers.enable({ apis: ['setTimeout', 'setImmediate', 'Date'] });
  mock.method(performance, 'now', () => Date.now());
  t.after(() => {
    mock.timers.reset();
    mock.restoreAll();
  });
}

function capture(level: 'debug' | 'info' | 'warn' | 'error' = 'info'): { log: Logger; writes: string[] } {
  const writes: string[] = [];
  return { log: new Logger(level, (chunk) => writes.push(chunk)), writes };
}

test('a quiet logger writes a line at the end of its loop turn, not later', async () => {
  const { log, writes } = capture();
  log.info('conn id=1 result=ok');
  assert.equal(writes.length, 0, 'not inside the same turn');
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(writes.length, 1);
  assert.match(writes[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  conn id=1 result=ok\n$/);
});

test('a busy logger writes at most once per interval, every line kept and in order', (t) => {
  mockClock(t);
  const { log, writes } = capture();
  log.info('first');
  mock.timers.tick(0);
  assert.equal(writes.length, 1, 'the first line at the end of its turn');
  // A line every millisecond for 50 ms: one write per 20 ms interval.
  for (let i = 0; i < 50; i++) {
    log.info(`line ${i}`);
    mock.timers.tick(1);
  }
  assert.equal(writes.length, 3, 'writes at 0, 20 and 40 ms');
  mock.timers.tick(9); // 59 ms: lines 40 to 49 wait for the interval that began at 40
  assert.equal(writes.length, 3, 'not before the interval is over');
  mock.timers.tick(1);
  assert.equal(writes.length, 4);
  const lines = writes
    .join('')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^\S+ \S+\s+/, ''));
  assert.deepEqual(lines, ['first', ...Array.from({ length: 50 }, (_, i) => `line ${i}`)]);
  mock.timers.tick(1_000);
  assert.equal(writes.length, 4, 'nothing more once all is written');
});

test('error() writes at once, with what was pending before it', () => {
  const { log, writes } = capture();
  log.warn('before');
  log.error('fatal');
  assert.equal(writes.length, 1);
  assert.match(writes[0]!, /warn  before\n.*error fatal\n$/s);
});

test('levels below the threshold are dropped; flush() with nothing pending writes nothing', (t) => {
  mockClock(t);
  const { log, writes } = capture('warn');
  log.debug('d');
  log.info('i');
  log.flush();
  mock.timers.tick(1_000);
  assert.deepEqual(writes, []);
  log.warn('w');
  log.flush();
  assert.equal(writes.length, 1);
});

test('field() quotes values with spaces, quotes or =, and shows absent ones as -', () => {
  assert.equal(field(undefined), '-');
  assert.equal(field(''), '-');
  assert.equal(field('www.example.test'), 'www.example.test');
  assert.equal(field('client ECONNRESET'), '"client ECONNRESET"');
  assert.equal(field('a=b'), '"a=b"');
  assert.equal(field(42), '42');
});

// A name from a client (DNS question, Host) reached the log raw: CR/LF forged lines, ESC drove the terminal.
test('field() escapes control and non-ASCII bytes, quotes and backslashes', () => {
  assert.equal(field('a\r\nconn id=1 result=ok'), '"a\\x0d\\x0aconn id=1 result=ok"');
  assert.equal(field('\x1b[2Jx\bq'), '"\\x1b[2Jx\\x08q"');
  assert.equal(field('caf\u00e9'), '"caf\\xe9"');
  assert.equal(field('\u2028'), '"\\u2028"');
  assert.equal(field('say "hi"\\'), '"say \\"hi\\"\\\\"');
  assert.equal(field('\x7f'), '"\\x7f"');
  for (let c = 0; c < 0x100; c++) {
    const out = field(`x${String.fromCharCode(c)}`);
    assert.match(out, /^[\x21-\x7e]+$|^"[\x20-\x7e]*"$/, `byte ${c}: ${JSON.stringify(out)}`);
  }
});

test('isoTimestamp is Date#toISOString, across milliseconds, seconds, days and years', () => {
  const base = Date.UTC(2026, 10, 23, 17, 26, 48);
  const instants = [0, 1, 9, 10, 99, 100, 999, 1000, 1001, 59_999, 60_000].map((d) => base + d);
  instants.push(Date.UTC(2026, 11, 31, 23, 59, 59, 999), Date.UTC(2027, 0, 1, 0, 0, 0, 0), Date.UTC(1999, 0, 1, 0, 0, 0, 5), 0);
  for (const t of [...instants, ...instants.reverse()]) assert.equal(isoTimestamp(t), new Date(t).toISOString(), String(t));
});

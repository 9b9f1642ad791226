import assert from 'node:assert/strict';
import type { FrameStep, RequestFramer } from '../../src/pipeline/http-framer';

/**
 * Drives a RequestFramer the way native/splice.c's framed relay does: at a
 * boundary it asks next() with the client bytes it holds; a forward drops
 * `consumed` of them, writes `out` upstream and then passes `budget` bytes
 * verbatim before it asks again. Bytes arrive in the chunks given; after the
 * last, next() is asked once more with eof. Checks the step invariants the
 * executor relies on (consumed within the bytes given, budget a
 * non-negative integer) as it goes.
 */

/** How the run ended. */
export type DriveEnd =
  /** All bytes framed, the last request complete: next() said need-more at eof. */
  | { kind: 'eof' }
  /** The client's bytes ended inside a body (`budget` bytes still owed). */
  | { kind: 'eof-in-body'; budget: number }
  | Exclude<FrameStep, { kind: 'forward' } | { kind: 'need-more' }>;

export interface DriveResult {
  /** Every byte written upstream, in order. */
  upstream: Buffer;
  /** The forward steps, in order. */
  forwards: Array<Extract<FrameStep, { kind: 'forward' }>>;
  end: DriveEnd;
}

export function drive(framer: RequestFramer, chunks: readonly Buffer[]): DriveResult {
  const upstream: Buffer[] = [];
  const forwards: DriveResult['forwards'] = [];
  let pending: Buffer = Buffer.alloc(0);
  let budget = 0;
  let end: DriveEnd | undefined;

  /** Runs steps over `pending` until the framer waits for bytes (false) or the run ends (true). */
  const pump = (eof: boolean): boolean => {
    for (;;) {
      if (budget > 0) {
        const n = Math.min(budget, pending.length);
        upstream.push(pending.subarray(0, n));
        pending = pending.subarray(n);
        budget -= n;
        if (budget > 0) {
          if (eof) end = { kind: 'eof-in-body', budget };
          return eof;
        }
      }
      // The relay asks at a boundary only once it holds bytes there (or the client has closed).
      if (pending.length === 0 && !eof) return false;
      const given = pending.length;
      const step = framer.next(pending, eof);
      if (step.kind === 'need-more') {
        if (eof) end = { kind: 'eof' };
        return eof;
      }
      if (step.kind !== 'forward') {
        end = step;
        return true;
      }
      assert.ok(Number.isInteger(step.consumed) && step.consumed >= 0, `consumed ${step.consumed}`);
      assert.ok(step.consumed <= given, `consumed ${step.consumed} of the ${given} bytes given`);
      assert.ok(Number.isSafeInteger(step.budget) && step.budget >= 0, `budget ${step.budget}`);
      // A forward that takes nothing and writes nothing would ask again forever.
      assert.ok(step.consumed > 0 || step.budget > 0, 'a forward step that makes no progress');
      forwards.push(step);
      upstream.push(Buffer.from(step.out, 'latin1'));
      pending = pending.subarray(step.consumed);
      budget = step.budget;
    }
  };

  for (const chunk of chunks) {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    if (pump(false)) break;
  }
  if (end === undefined) pump(true);
  return { upstream: Buffer.concat(upstream), forwards, end: end ?? { kind: 'eof' } };
}

/** `bytes` cut at the given offsets (sorted, within the buffer). */
export function cutAt(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of cuts) {
    if (c <= at || c >= bytes.length) continue;
    out.push(bytes.subarray(at, c));
    at = c;
  }
  out.push(bytes.subarray(at));
  return out;
}

/** What a run says, comparable across ways of cutting the same bytes. */
export function summary(r: DriveResult): { upstream: string; heads: string[]; end: DriveEnd } {
  return { upstream: r.upstream.toString('latin1'), heads: r.forwards.map((f) => f.out), end: r.end };
}

import type net from 'node:net';

export type SniffStatus = 'need-more' | 'no-match' | 'match' | 'invalid';

export interface FirstBytes<R> {
  /** Everything read so far; to be written upstream before relaying. */
  head: Buffer;
  /** The sniffer's last verdict, or why reading stopped. */
  outcome: 'match' | 'no-match' | 'invalid' | 'timeout' | 'closed' | 'too-big';
  result?: R;
}

/**
 * Reads a client's first bytes until the sniffer decides, without consuming
 * anything that the relay must carry: the bytes are returned and the socket
 * is left paused. Clients that wait for the server to speak first (SMTP,
 * SSH servers greet first) hit the timeout and are relayed without a name.
 */
export function readFirstBytes<R extends { status: SniffStatus }>(
  sock: net.Socket,
  sniff: (buf: Buffer) => R,
  maxBytes: number,
  timeoutMs: number,
): Promise<FirstBytes<R>> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let head: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => done('timeout'), timeoutMs);

    function done(outcome: FirstBytes<R>['outcome'], result?: R): void {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onEnd);
      sock.pause();
      resolve({ head, outcome, result });
    }
    function onData(chunk: Buffer): void {
      // Most clients send the whole ClientHello or request head in one segment; join only when they do not.
      chunks.push(chunk);
      head = chunks.length === 1 ? chunk : Buffer.concat(chunks);
      const r = sniff(head);
      if (r.status === 'match') done('match', r);
      else if (r.status === 'no-match') done('no-match', r);
      else if (r.status === 'invalid') done('invalid', r);
      else if (head.length >= maxBytes) done('too-big');
    }
    function onEnd(): void {
      done('closed');
    }
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onEnd);
    // Accepted with pauseOnConnect: a data listener alone does not start the flow.
    sock.resume();
  });
}

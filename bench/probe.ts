/**
 * Client programs the bench runs inside the client namespace (node probe.js MODE ...).
 * Each prints one JSON line on stdout.
 *
 *   latency HOST PORT N [PROXY_HOST PROXY_PORT]
 *     N sequential new connections; each sends one byte to the echo server and
 *     waits for it (with a proxy: CONNECT first). Prints {samplesMs, failed}.
 *   idle HOST PORT N [PROXY_HOST PROXY_PORT]
 *     opens N connections, each proven through by one echoed byte, prints
 *     {open, failed}, holds them until stdin closes, then exits.
 */
import net from 'node:net';

interface Target {
  host: string;
  port: number;
  proxy?: { host: string; port: number };
}

/** One connection through to the echo server; resolves with the socket once a byte came back. */
function through(t: Target, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: t.proxy?.host ?? t.host, port: t.proxy?.port ?? t.port });
    let buf = '';
    let tunnelled = !t.proxy;
    const timer = setTimeout(() => fail(new Error('timeout')), timeoutMs);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      s.destroy();
      reject(err);
    };
    s.on('error', fail);
    // A gateway out of resources may accept and drop at once: count it as failed now, not at the timeout.
    s.on('close', () => fail(new Error('closed before the echo')));
    s.on('connect', () => {
      if (t.proxy) s.write(`CONNECT ${t.host}:${t.port} HTTP/1.1\r\nHost: ${t.host}:${t.port}\r\n\r\n`);
      else s.write('x');
    });
    s.on('data', (d: Buffer) => {
      if (!tunnelled) {
        buf += d.toString('latin1');
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!/^HTTP\/1\.[01] 200/.test(buf)) return fail(new Error(`proxy said ${buf.split('\r\n')[0]}`));
        tunnelled = true;
        s.write('x');
        return;
      }
      clearTimeout(timer);
      s.removeAllListeners('data');
      s.removeListener('error', fail);
      s.removeAllListeners('close');
      s.on('error', () => undefined);
      resolve(s);
    });
  });
}

function parseTarget(args: string[]): Target {
  const [host, port, , ph, pp] = args;
  if (!host || !port) throw new Error('HOST PORT required');
  return { host, port: Number(port), proxy: ph && pp ? { host: ph, port: Number(pp) } : undefined };
}

async function latency(args: string[]): Promise<void> {
  const t = parseTarget(args);
  const n = Number(args[2]);
  const samplesMs: number[] = [];
  let failed = 0;
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    try {
      const s = await through(t, 5000);
      samplesMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      s.destroy();
    } catch {
      failed++;
    }
  }
  console.log(JSON.stringify({ samplesMs, failed }));
}

async function idle(args: string[]): Promise<void> {
  const t = parseTarget(args);
  const n = Number(args[2]);
  const socks: net.Socket[] = [];
  let failed = 0;
  let next = 0;
  // A bounded number in flight: a burst of thousands of SYNs would only measure the backlog.
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      try {
        socks.push(await through(t, 5_000));
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: 200 }, worker));
  console.log(JSON.stringify({ open: socks.length, failed }));
  process.stdin.resume();
  process.stdin.on('end', () => {
    for (const s of socks) s.destroy();
    process.exit(0);
  });
}

const [mode, ...rest] = process.argv.slice(2);
const run = mode === 'latency' ? latency : mode === 'idle' ? idle : undefined;
if (!run) {
  console.error('usage: probe.js latency|idle HOST PORT N [PROXY_HOST PROXY_PORT]');
  process.exit(2);
}
run(rest).catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(1);
});

/**
 * Starts a Gateway the way `transgate` does (src/cli/main.ts: parseArgs ->
 * buildConfig -> createBackend -> new Gateway -> start), says "ready" on
 * stdout, and on SIGTERM runs `await gw.close()` and prints one line
 *
 *   closed {"resources":[...],"sockets":[...],"native":{...},"handles":[...]}
 *
 * with what is still open: Node's active resources, the socket fds opened
 * since before start (unref'd Node sockets and the addon's own fds, which
 * Node does not list), the addon's counts of live relays and pending
 * tunnel connections, and Node's sockets described (for the failure
 * message). It never calls process.exit(): the CLI does, right
 * after close(), and so hides whatever close() forgot; here the process
 * must end by itself, with an empty event loop (test/e2e/close.test.ts).
 */
import fs from 'node:fs';
import net from 'node:net';
import { buildConfig } from '../../../src/config/config';
import { parseArgs } from '../../../src/config/flags';
import { Logger } from '../../../src/core/log';
import { Gateway } from '../../../src/gateway';
import { createBackend } from '../../../src/netfilter/backend';
import { spliceActive, tunnelPending } from '../../../src/native';

/** Open socket fds of this process ("19 socket:[6718426]"). */
function socketFds(): string[] {
  const out: string[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith('socket:')) out.push(`${fd} ${target}`);
    } catch {
      // The fd readdir itself used is gone by now.
    }
  }
  return out;
}

/** Node's sockets and servers still held, described, for a failure message (timers are not listed). */
function handles(): string[] {
  const list = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  return list.flatMap((h) => {
    if (h instanceof net.Socket) {
      if (h === process.stdout || h === process.stderr) return [];
      return [
        `socket ${h.localAddress}:${h.localPort} -> ${h.remoteAddress}:${h.remotePort} connecting=${h.connecting} destroyed=${h.destroyed}`,
      ];
    }
    if (h instanceof net.Server) return [`server ${JSON.stringify(h.address())}`];
    return [(h as object).constructor.name];
  });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const cfg = buildConfig(args.values, process.env, args.given);
  const log = new Logger(cfg.logLevel);
  for (const w of cfg.warnings) log.warn(w);
  const gw = new Gateway(cfg, log, createBackend(cfg));
  const before = new Set(socketFds());
  const report = (): object => ({
    resources: process.getActiveResourcesInfo(),
    sockets: socketFds().filter((s) => !before.has(s)),
    native: { spliceActive: spliceActive(), tunnelPending: tunnelPending() },
    handles: handles(),
  });
  try {
    await gw.start();
  } catch (err) {
    await gw.close();
    log.flush();
    throw err;
  }
  const stop = (): void => {
    // Removing the last listener stops Node's signal watcher: nothing of the driver's own is left when close() runs.
    process.off('SIGTERM', stop);
    void (async () => {
      await gw.close();
      log.flush();
      // Handles closed during close() (net.Server.close() calls back before its handle is gone) finish in libuv's
      // close phase; a check-phase callback of the next loop turn runs after that.
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      process.stdout.write(`closed ${JSON.stringify(report())}\n`);
      // Whatever keeps the process alive, once a second (an unref'd timer is not listed and keeps nothing alive).
      setInterval(() => process.stdout.write(`still ${JSON.stringify(report())}\n`), 1000).unref();
    })();
  };
  process.on('SIGTERM', stop);
  log.flush();
  process.stdout.write('close-driver ready\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`close-driver: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});

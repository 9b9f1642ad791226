import fs from 'node:fs';
import path from 'node:path';
import { buildConfig, type Config } from '../config/config';
import { helpText, parseArgs, type ParsedArgs } from '../config/flags';
import { GatewayError } from '../core/errors';
import { Logger } from '../core/log';
import { Gateway } from '../gateway';
import { clearAll, createBackend, describeRules } from '../netfilter/backend';
import { doctorCommand } from './doctor';

function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../package.json'), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return 'unknown';
  }
}

/** Prints a failure the way a user can act on it: the message, and the error code for searching. */
function report(err: unknown): void {
  if (err instanceof GatewayError) {
    process.stderr.write(`transgate: ${err.message} [${err.code}]\n`);
  } else {
    process.stderr.write(`transgate: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
}

/** A stop, even after a fatal error, ends the process within this long. */
const STOP_DEADLINE_MS = 4_000;

async function run(cfg: Config, log: Logger): Promise<number> {
  for (const w of cfg.warnings) log.warn(w);
  const backend = createBackend(cfg);
  const gw = new Gateway(cfg, log, backend);
  let exitCode = 0;
  let stopping = false;
  const stop = (why: string, code: number): void => {
    if (stopping) {
      log.warn(`${why} again: exiting now`);
      process.exit(code || 1);
    }
    stopping = true;
    exitCode = code;
    log.info(`${why}: stopping`);
    // Whatever close() waits for (a connection that will not end, a broken state after a bug), the process
    // exits within STOP_DEADLINE_MS, so that a supervisor (systemd's Restart=on-failure) can start it again.
    setTimeout(() => {
      log.error(`stopping took longer than ${STOP_DEADLINE_MS} ms: exiting now`);
      process.exit(exitCode || 1);
    }, STOP_DEADLINE_MS);
    void gw.close().then(
      () => {
        log.info('stopped');
        process.exit(exitCode);
      },
      (err: unknown) => {
        log.error(`stopping failed: ${err instanceof Error ? err.message : String(err)}`);
        process.exit(exitCode || 1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGHUP', () => stop('SIGHUP', 0));
  // Errors on a connection's path are caught there and end that connection; one that reaches here is a bug
  // outside any connection, and the process's state is unknown: remove the rules (kept with --fail-closed, see
  // Gateway.close), then exit non-zero.
  process.on('uncaughtException', (err) => {
    log.error(`internal error: ${err.stack ?? err.message}`);
    stop('fatal error', 70);
  });
  process.on('unhandledRejection', (err) => {
    log.error(`internal error (promise): ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    stop('fatal error', 70);
  });

  try {
    await gw.start();
  } catch (err) {
    await gw.close();
    report(err);
    return 1;
  }
  const up = (list: typeof cfg.upstream.http): string =>
    list.length === 0
      ? 'direct'
      : list.map((p) => (p.auth ? `http://${encodeURIComponent(p.auth.user)}@${p.display.slice(7)}` : p.display)).join(',');
  log.info(
    `ready mode=${cfg.mode} http_proxy=${up(cfg.upstream.http)} https_proxy=${up(cfg.upstream.https)} ` +
      `http=${cfg.httpPorts.join(',') || '-'}:${cfg.listen.http} tls=${cfg.tlsPorts.join(',') || '-'}:${cfg.listen.tls} ` +
      `tcp=${cfg.tcpPorts.join(',') || '-'}:${cfg.listen.tcp} dns=${cfg.dns ? `53:${cfg.dns.listenPort}` : 'off'} ` +
      `rules=${cfg.installRules ? 'installed' : 'not installed (--no-rules)'}`,
  );
  return new Promise<number>(() => {
    // Runs until a signal.
  });
}

export async function main(argv: string[]): Promise<void> {
  let args: ParsedArgs;
  let cfg: Config;
  try {
    args = parseArgs(argv);
    if (args.values['help']) {
      process.stdout.write(helpText(version()) + '\n');
      return;
    }
    if (args.values['version']) {
      process.stdout.write(version() + '\n');
      return;
    }
    cfg = buildConfig(args.values, process.env, args.given);
  } catch (err) {
    report(err);
    process.exitCode = 2;
    return;
  }
  const log = new Logger(cfg.logLevel);
  // Lines are written once per loop turn; whatever is pending goes out before the process ends.
  process.on('exit', () => log.flush());
  // A log reader that went away (EPIPE) must not take the gateway and the clients' traffic with it.
  process.stderr.on('error', () => {});
  try {
    switch (args.command) {
      case 'rules': {
        process.stdout.write((await describeRules(cfg)) + '\n');
        return;
      }
      case 'doctor': {
        process.exitCode = await doctorCommand(cfg);
        return;
      }
      case 'clear': {
        // Both backends: a crashed run may have used either.
        const removed = await clearAll(cfg);
        process.stdout.write(
          removed.length > 0 ? `transgate: removed rules and routes (${removed.join(', ')})\n` : 'transgate: nothing installed\n',
        );
        return;
      }
      default: {
        const code = await run(cfg, log);
        process.exitCode = code;
      }
    }
  } catch (err) {
    report(err);
    process.exitCode = 1;
  }
}

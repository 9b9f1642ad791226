/**
 * Runs one external command (nft, ip) with an argv — never through a shell —
 * with optional stdin and a timeout. A non-zero exit is not an error here: the
 * caller reads {code, stdout, stderr} and decides. Only "could not run at all"
 * (binary missing, spawn failure, timeout) rejects, with a GatewayError.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { ErrorCodes, GatewayError, errnoOf } from '../core/errors';

export interface ExecResult {
  /** Exit code; 128+N when the process was killed by signal N (or -1 if unknown). */
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Written to the child's stdin, which is then closed. Without it stdin is /dev/null. */
  input?: string;
  /** Kill the child (SIGKILL) and reject after this many ms. Default 15000. */
  timeoutMs?: number;
}

/** Runs a command; `argv[0]` is the binary. */
export type Runner = (argv: readonly string[], options?: ExecOptions) => Promise<ExecResult>;

const DEFAULT_TIMEOUT_MS = 15_000;

/** Debian package that ships each binary we use. */
const PACKAGES: Record<string, string> = {
  nft: 'nftables',
  ip: 'iproute2',
  iptables: 'iptables',
  ip6tables: 'iptables',
};

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

function baseName(bin: string): string {
  const i = bin.lastIndexOf('/');
  return i >= 0 ? bin.slice(i + 1) : bin;
}

/** The error for a missing binary: "nft not found: install nftables (apt-get install nftables)". */
export function notFoundError(bin: string, cause?: unknown): GatewayError {
  const name = baseName(bin);
  const pkg = PACKAGES[name];
  const hint = pkg ? `install ${pkg} (apt-get install ${pkg})` : `install the package that provides ${name}`;
  const err = new GatewayError(ErrorCodes.RULES, `${name} not found: ${hint}`, { cause });
  (err as GatewayError & { notFound?: string }).notFound = name;
  return err;
}

/** True for the error `run` throws when the binary does not exist. */
export function isNotFound(err: unknown): boolean {
  return err instanceof GatewayError && typeof (err as GatewayError & { notFound?: string }).notFound === 'string';
}

export function formatCommand(argv: readonly string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./{}\-[\]]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export const run: Runner = (argv, options = {}) => {
  if (argv.length === 0) return Promise.reject(new GatewayError(ErrorCodes.RULES, 'run: empty argv'));
  const [bin, ...args] = argv as [string, ...string[]];
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise<ExecResult>((resolve, reject) => {
    let settled = false;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let child: ChildProcess;
    try {
      child = spawn(bin, args, {
        // English messages: callers match on "No such file or directory" etc.
        env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
        stdio: [options.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      });
    } catch (e) {
      reject(errnoOf(e) === 'ENOENT' ? notFoundError(bin, e) : new GatewayError(ErrorCodes.RULES, `${bin}: ${String(e)}`, { cause: e }));
      return;
    }
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      child.kill('SIGKILL');
      reject(new GatewayError(ErrorCodes.RULES, `${formatCommand(argv)} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (errnoOf(e) === 'ENOENT') reject(notFoundError(bin, e));
      else if (errnoOf(e) === 'EACCES')
        reject(new GatewayError(ErrorCodes.PERMISSION, `${bin}: permission denied executing it`, { cause: e }));
      else reject(new GatewayError(ErrorCodes.RULES, `${bin}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 + (SIGNALS[signal] ?? 0) : -1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
    if (options.input !== undefined && child.stdin) {
      child.stdin.on('error', () => {
        /* EPIPE when the child exits early; its exit code tells the story */
      });
      child.stdin.end(options.input);
    }
  });
};

/**
 * A Runner that executes every command inside network namespace `name`
 * (`ip netns exec NAME ...`). Used by tests and by anyone who wants the rules
 * somewhere other than the current namespace. A missing binary inside the
 * namespace is mapped to the same "not found" error as `run`.
 */
export function netnsRunner(name: string, inner: Runner = run): Runner {
  return async (argv, options) => {
    const res = await inner(['ip', 'netns', 'exec', name, ...argv], options);
    if (res.code !== 0 && argv[0] !== undefined && /exec of "[^"]*" failed: No such file or directory/.test(res.stderr)) {
      throw notFoundError(argv[0]);
    }
    return res;
  };
}

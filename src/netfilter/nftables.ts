/**
 * The nftables half of apply/revert: runs `nft`, and turns its failures into
 * errors a user can act on (permission, missing binary, missing kernel
 * feature).
 */
import { ErrorCodes, GatewayError } from '../core/errors';
import { isNotFound, type Runner } from './exec';
import { TABLE } from './plan';

const PERMISSION_HINT = 'run as root or with CAP_NET_ADMIN (sudo -E npx transgate)';

/** Kernel features our scripts use: how to recognise each in a failing line, and what provides it. */
const FEATURES: ReadonlyArray<{ match: RegExp; name: string }> = [
  { match: /\btproxy\b/, name: 'TPROXY (kernel module nft_tproxy, CONFIG_NFT_TPROXY)' },
  { match: /\bsocket transparent\b/, name: 'socket matching (kernel module nft_socket, CONFIG_NFT_SOCKET)' },
  { match: /\bfib\b/, name: 'fib lookups (kernel module nft_fib_inet, CONFIG_NFT_FIB_INET)' },
  { match: /\bredirect\b/, name: 'REDIRECT (kernel module nft_redir, CONFIG_NFT_REDIR)' },
  { match: /\btype nat\b/, name: 'NAT chains (kernel module nft_chain_nat, CONFIG_NFT_NAT)' },
  { match: /\bflags interval\b|\bset bypass|\belements\b|@bypass/, name: 'interval sets (CONFIG_NFT_SET_RBTREE / pipapo)' },
  { match: /\bhook prerouting\b/, name: 'prerouting base chains of the inet family (CONFIG_NF_TABLES_INET)' },
  { match: /\btable inet\b/, name: 'inet family tables (CONFIG_NF_TABLES_INET)' },
];

function firstLines(text: string, n = 6): string {
  return text.trim().split('\n').slice(0, n).join('\n');
}

function isPermission(stderr: string): boolean {
  return /Operation not permitted|Permission denied|you must be root/i.test(stderr);
}

/**
 * Maps a failed `nft -f -` to a GatewayError. `script` is what was fed on
 * stdin, used to find the failing line from nft's "/dev/stdin:LINE:COL" prefix.
 */
export function nftError(stderr: string, script: string, what = 'nft -f -'): GatewayError {
  if (isPermission(stderr)) {
    return new GatewayError(ErrorCodes.PERMISSION, `${what}: Operation not permitted: ${PERMISSION_HINT}`);
  }
  const kernel = /Could not process rule: (No such file or directory|Operation not supported|Protocol not supported)/.exec(stderr);
  if (kernel) {
    const loc = /(?:\/dev\/stdin|-):(\d+):\d+(?:-\d+)?: Error: Could not process rule/.exec(stderr);
    const lineNo = loc ? Number(loc[1]) : 0;
    const line = lineNo > 0 ? (script.split('\n')[lineNo - 1] ?? '').trim() : '';
    const feature = FEATURES.find((f) => line && f.match.test(line)) ?? FEATURES.find((f) => f.match.test(stderr));
    const where = line ? ` (failing line ${lineNo}: ${line})` : '';
    return new GatewayError(
      ErrorCodes.RULES,
      feature
        ? `${what}: the kernel lacks nftables support for ${feature.name}: ${kernel[1]}${where}`
        : `${what}: the kernel rejected the ruleset: ${kernel[1]}${where}`,
    );
  }
  if (/cache initialization failed: Protocol not supported|Protocol not supported/.test(stderr)) {
    return new GatewayError(ErrorCodes.RULES, `${what}: the kernel has no nf_tables support (CONFIG_NF_TABLES): ${firstLines(stderr, 2)}`);
  }
  return new GatewayError(ErrorCodes.RULES, `${what} failed: ${firstLines(stderr) || 'no error output'}`);
}

/**
 * Checks that `nft` exists and that we may use netlink: `nft list tables`
 * needs CAP_NET_ADMIN just like changing rules does.
 */
export async function nftPreflight(runner: Runner): Promise<void> {
  const res = await runner(['nft', 'list', 'tables']);
  if (res.code === 0) return;
  if (isPermission(res.stderr)) {
    throw new GatewayError(ErrorCodes.PERMISSION, `nft: Operation not permitted: ${PERMISSION_HINT}`);
  }
  throw nftError(res.stderr, '', 'nft list tables');
}

/** Runs a whole script as one transaction (`nft -f -`, stdin). */
export async function nftApplyScript(runner: Runner, script: string, opts: { check?: boolean } = {}): Promise<void> {
  const argv = opts.check ? ['nft', '-c', '-f', '-'] : ['nft', '-f', '-'];
  const res = await runner(argv, { input: script, timeoutMs: 30_000 });
  if (res.code !== 0) throw nftError(res.stderr, script, argv.join(' '));
}

function noSuchTable(stderr: string): boolean {
  return /No such file or directory/.test(stderr);
}

/**
 * `nft delete table inet transgate`. Idempotent: an absent table is not an
 * error, and neither is a missing `nft` binary (`transgate clear` on a host
 * without nftables has nothing of ours to remove there). Returns whether a
 * table was deleted.
 */
export async function nftDeleteTable(runner: Runner, table: string = TABLE): Promise<boolean> {
  let res;
  try {
    res = await runner(['nft', 'delete', 'table', ...table.split(' ')]);
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
  if (res.code === 0) return true;
  if (noSuchTable(res.stderr)) return false;
  throw nftError(res.stderr, '', `nft delete table ${table}`);
}

/** The current table as `nft list table inet transgate` prints it, or undefined when absent. */
export async function nftListTable(runner: Runner): Promise<string | undefined> {
  let res;
  try {
    res = await runner(['nft', 'list', 'table', ...TABLE.split(' ')]);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  if (res.code === 0) return res.stdout;
  if (noSuchTable(res.stderr)) return undefined;
  throw nftError(res.stderr, '', `nft list table ${TABLE}`);
}

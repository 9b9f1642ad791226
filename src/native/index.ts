/**
 * The one loader of the native addon (native/transgate.c, built by
 * `npm install` into build/Release/transgate.node) and typed, argument-checked
 * wrappers around it. The addon is loaded on first use, so modules that only
 * import types from here work without a compiler. TRANSGATE_ADDON=/path/to/
 * transgate.node loads that file instead, and only it (the sanitizer build of
 * scripts/native-sanitize.sh: a silent fallback to the normal build would let
 * that run test nothing).
 *
 * Errors from the kernel are Errors whose `code` is the errno name
 * ('EADDRINUSE'), `errno` the negative errno (Node's convention),
 * `syscall` the call that failed, and message `bind: Address already in use`.
 * Bad arguments throw TypeError (code ERR_INVALID_ARG_TYPE / _VALUE), checked
 * before the addon is loaded.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Address, Family } from '../core/types';
import { ErrorCodes, GatewayError } from '../core/errors';

export interface ListenTcpOptions {
  /** IPv4 or IPv6 literal; the socket's family follows it. */
  host: string;
  /** 0 lets the kernel pick; read it back with localPort() or server.address(). */
  port: number;
  /** Default 511, like Node. */
  backlog?: number;
  /** IP_TRANSPARENT (and IPV6_TRANSPARENT on v6), set before bind; needs CAP_NET_ADMIN. */
  transparent?: boolean;
  /** IPv6 only. Default false: '::' also accepts IPv4 (as ::ffff:a.b.c.d). */
  v6only?: boolean;
  /** SO_REUSEADDR, default true. On Linux it never lets two listeners share a port. */
  reuseAddr?: boolean;
}

export interface CreateTcpSocketOptions {
  family: Family;
  /** SO_MARK (0..2^32-1); needs CAP_NET_ADMIN. Left unset when omitted. */
  mark?: number;
  /** IP_TRANSPARENT (v4) or IPV6_TRANSPARENT + IP_TRANSPARENT (v6), to bind non-local addresses. */
  transparent?: boolean;
}

export interface ConnectMarkedOptions {
  /** IP literal only: a name would need an asynchronous lookup, see connectMarkedSocket. */
  host: string;
  port: number;
  mark?: number;
  transparent?: boolean;
  localAddress?: string;
  localPort?: number;
}

/** RLIMIT_NOFILE after raiseNofileLimit(); Infinity for an unlimited hard limit. */
export interface NofileLimit {
  soft: number;
  hard: number;
}

/** What the addon's syscall errors look like. */
export interface NativeSystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** The raw addon, as native/transgate.c exports it. Arguments are positional and all required. */
/** native/protocol.h's TG_ABI_VERSION: an addon built from other sources is refused at load. */
export const ABI_VERSION = 5;

/** native/protocol.h's enum tg_action: the first element of decide()'s answer (READ_ON is a null answer, never sent). */
export const TunnelActions = { CLOSE: 0, CONNECT: 1, TAKEN: 2, SPECULATE: 3, RESET: 5, HTTP: 6, EXCHANGE: 7, PENDING: 8 } as const;

/** native/protocol.h's enum tg_up: upstream()'s answer while the upstream connection is set up (READ_ON is null). */
export const UpActions = { CONTINUE: 0, ESTABLISHED: 1, REDIAL: 2, FAIL: 3, PENDING: 4 } as const;

/** native/protocol.h's enum tg_next: next()'s answer at a request boundary (READ_ON is a null answer, never sent). */
export const NextActions = { FORWARD: 0, HANDOVER: 1, CLOSE: 2 } as const;

/**
 * native/protocol.h's enum tg_outcome: how a connection carried by the addon
 * ended (done(), the splice relay's callback). The JS executors (openTunnel,
 * the Node relays) report theirs with the same numbers, so that one table
 * (outbound/failures.ts) turns a failure into the same error wherever it ran.
 */
export const Outcomes = {
  OK: 0,
  HANDED_OVER: 1,
  ABORTED: 2,
  IDLE_TIMEOUT: 3,
  REFUSED: 4,
  REJECTED: 5,
  UNUSABLE: 6,
  INTERNAL_ERROR: 7,
  /** detail: the errno name (connect to the proxy or the destination failed). */
  CONNECT: 8,
  /** detail: the errno name (the upstream socket could not be made). */
  SOCKET: 9,
  CONNECT_TIMEOUT: 10,
  /** detail: the errno name (reading the proxy's answer to CONNECT). */
  ANSWER: 11,
  ANSWER_TIMEOUT: 12,
  ANSWER_CLOSED: 13,
  ANSWER_PROTOCOL: 14,
  ANSWER_OVERSIZED: 15,
  /** status and reason set: a refused CONNECT, or (framed) the first response was the proxy's own error. */
  ANSWER_STATUS: 16,
  /** detail: the errno name of the client side's failure (the upstream was reset). */
  CLIENT_ERROR: 17,
  /** detail: the errno name of the upstream side's failure (the client was reset). */
  UPSTREAM_ERROR: 18,
  /** detail: the errno name of a local failure (out of fds for the pipes). */
  RELAY_ERROR: 19,
  /** Framed: a later request's head did not come whole within headTimeoutMs (the client's fd comes with it). */
  HEAD_TIMEOUT: 20,
  /** JS answered "pending" (decide() or upstream()) and did not resume within connectTimeoutMs. */
  PENDING_TIMEOUT: 21,
  /** The upstream handshake (exchanges, redials, failovers) took more rounds than the addon allows (16). */
  HANDSHAKE: 22,
} as const;

export type Outcome = (typeof Outcomes)[keyof typeof Outcomes];

/** The log's word for each outcome: the strings the addon sent before outcomes were numbers, so log lines stay as they were. */
const OUTCOME_WORDS: Record<Outcome, string> = {
  [Outcomes.OK]: 'ok',
  [Outcomes.HANDED_OVER]: 'handed-over',
  [Outcomes.ABORTED]: 'aborted',
  [Outcomes.IDLE_TIMEOUT]: 'idle-timeout',
  [Outcomes.REFUSED]: 'refused',
  [Outcomes.REJECTED]: 'rejected',
  [Outcomes.UNUSABLE]: 'unusable',
  [Outcomes.INTERNAL_ERROR]: 'internal-error',
  [Outcomes.CONNECT]: 'connect',
  [Outcomes.SOCKET]: 'socket',
  [Outcomes.CONNECT_TIMEOUT]: 'connect-timeout',
  [Outcomes.ANSWER]: 'answer',
  [Outcomes.ANSWER_TIMEOUT]: 'answer-timeout',
  [Outcomes.ANSWER_CLOSED]: 'answer-closed',
  [Outcomes.ANSWER_PROTOCOL]: 'answer-protocol',
  [Outcomes.ANSWER_OVERSIZED]: 'answer-oversized',
  [Outcomes.ANSWER_STATUS]: 'answer-status',
  [Outcomes.CLIENT_ERROR]: 'client',
  [Outcomes.UPSTREAM_ERROR]: 'upstream',
  [Outcomes.RELAY_ERROR]: 'relay',
  [Outcomes.HEAD_TIMEOUT]: 'head-timeout',
  [Outcomes.PENDING_TIMEOUT]: 'pending-timeout',
  [Outcomes.HANDSHAKE]: 'handshake',
};

/** An outcome as the access log's result shows it: `idle-timeout`, `client ECONNRESET`, `connect ECONNREFUSED`. */
export function outcomeText(outcome: Outcome, detail = ''): string {
  const word = OUTCOME_WORDS[outcome] ?? `outcome-${String(outcome)}`;
  return detail === '' ? word : `${word} ${detail}`;
}

export interface NativeBinding {
  abiVersion(): number;
  listenTcp(host: string, port: number, backlog: number, transparent: boolean, v6only: boolean, reuseAddr: boolean): number;
  createTcpSocket(family: Family, mark: number | undefined, transparent: boolean): number;
  localPort(fd: number): number;
  socketFamily(fd: number): Family;
  originalDst(fd: number): Address;
  setMark(fd: number, mark: number): void;
  getMark(fd: number): number;
  setTransparent(fd: number, family: Family): void;
  raiseNofileLimit(): NofileLimit;
  // native/udp.c
  udpListen(host: string, port: number, transparent: boolean, onPacket: UdpPacketCallback): UdpHandle;
  udpClose(handle: UdpHandle): void;
  udpListenerPort(handle: UdpHandle): number;
  udpReplySocket(host: string, port: number): number;
  udpSend(fd: number, data: Buffer, host: string, port: number): number;
  // native/splice.c
  spliceRelay(
    clientFd: number,
    upstreamFd: number,
    idleTimeoutMs: number,
    clientEof: boolean,
    upstreamEof: boolean,
    onDone: SpliceDoneCallback,
  ): void;
  spliceAbortAll(): number;
  spliceActive(): number;
  // native/tunnel.c
  tunnelListen(
    fd: number,
    sniff: boolean,
    redirect: boolean,
    mark: number | undefined,
    sniffMaxBytes: number,
    sniffMs: number,
    connectMs: number,
    idleMs: number,
    decide: TunnelDecide,
    done: TunnelDone,
    unusable: TunnelUnusable,
    speculate: boolean,
    next: TunnelNext | undefined,
    directFromClient: boolean,
    headMs: number,
    upstream: TunnelUpstream | undefined,
  ): TunnelHandle;
  tunnelResume(id: number, answer: TunnelAction | UpAction | null): boolean;
  tunnelClose(handle: TunnelHandle): void;
  tunnelAbortAll(): number;
  tunnelPending(): number;
}

/**
 * What native/tunnel.c asks of TypeScript for each accepted connection (see
 * the comment at the top of that file). `head` is a copy of the client's
 * first bytes on a sniffing listener, else undefined.
 */
export type TunnelDecide = (
  id: number,
  fd: number,
  clientIp: string,
  clientPort: number,
  dstIp: string,
  dstPort: number,
  head: Buffer | undefined,
  final: boolean,
  eof: boolean,
) => TunnelAction | null;

/**
 * [0]: close (JS logged it); [1, ip, port, request?]: connect and relay; [2]: JS took the fd;
 * [3, ip, port] (only before the first bytes, on a speculating listener): connect meanwhile, then ask again;
 * [5]: reset the client (JS logged it): a refusal the client must see at once, whatever it still sends.
 */
export type TunnelAction =
  | readonly [typeof TunnelActions.CLOSE]
  | readonly [typeof TunnelActions.CONNECT, string, number, string | undefined]
  | readonly [typeof TunnelActions.TAKEN]
  | readonly [typeof TunnelActions.SPECULATE, string, number]
  | readonly [typeof TunnelActions.RESET]
  /**
   * Plain HTTP (a listener with next()): connect to ip:port, write `out` (the
   * first request head as rewritten), drop the first `consumed` bytes of the
   * head, pass the next `budget` client bytes verbatim, then ask next().
   */
  | readonly [typeof TunnelActions.HTTP, string, number, string, number, number, boolean?, boolean?]
  /** Connect to ip:port, send `out`, then upstream() reads the answer (a handshake: auth legs, SOCKS5). */
  | readonly [typeof TunnelActions.EXCHANGE, string, number, string]
  /** (final calls only) JS answers later with tunnelResume(id, action), within connectTimeoutMs. */
  | readonly [typeof TunnelActions.PENDING];

/**
 * While the upstream connection of `id` is set up: `outcome` OK with the
 * bytes an exchange received so far (`eof`: the upstream closed), or a
 * failure (CONNECT, CONNECT_TIMEOUT, ANSWER*, with the errno name as
 * detail; ANSWER_STATUS with the refusing answer's head as `bytes`).
 * null: read more (bytes), or end with the failure.
 */
export type TunnelUpstream = (id: number, outcome: Outcome, detail: string, bytes: Buffer, eof: boolean) => UpAction | null;

export type UpAction =
  /** Drop `consumed` of the bytes shown (at least all that were shown before), send `out`, read on: the next leg. */
  | readonly [typeof UpActions.CONTINUE, string, number]
  /** The handshake is done: drop `consumed`, the rest is the destination's; framed connections give the request head to relay. */
  | readonly [typeof UpActions.ESTABLISHED, number, string?]
  /** Close this upstream connection and open another: the next proxy, or a fresh connection for the next leg. */
  | readonly [typeof UpActions.REDIAL, string, number, string, boolean]
  /** End the connection with this outcome (as done() reports it). */
  | readonly [typeof UpActions.FAIL, Outcome, string, number, string]
  /** JS answers later with tunnelResume(id, answer), within connectTimeoutMs. */
  | readonly [typeof UpActions.PENDING];

/**
 * At each request boundary of a plain HTTP connection: `bytes` is what the
 * client sent after the last frame. null: read more; [0, out, consumed,
 * budget]: as TunnelActions.HTTP, on the same upstream connection; [1]:
 * hand the connection over (done() gets the client fd and the bytes once
 * upstream is quiet); [2]: reset the client (JS logged it).
 */
export type TunnelNext = (id: number, bytes: Buffer, eof: boolean) => NextAction | null;

export type NextAction =
  /** head: `out` is a request head; the next one is not read until its answer has begun. */
  | readonly [typeof NextActions.FORWARD, string, number, number, boolean?]
  | readonly [typeof NextActions.HANDOVER]
  | readonly [typeof NextActions.CLOSE];

/**
 * The end of a connection decide() sent on: bytes each way, outcome with its
 * detail (the errno name, or ''), and the proxy's status and reason for
 * ANSWER_STATUS (for plain HTTP, `status` is the first response's). `fd` >= 0
 * is a client socket TypeScript now owns: a plain HTTP connection ended
 * before any response reached the client (it gets the gateway's own answer)
 * or handed over (HANDED_OVER), with `rest` the client bytes read and not
 * passed on; else -1.
 */
export type TunnelDone = (
  id: number,
  up: number,
  down: number,
  outcome: Outcome,
  detail: string,
  status: number,
  reason: string,
  fd: number,
  rest: Buffer | undefined,
) => void;

/** A connection without an original destination, or (clientIp null) an accept error such as EMFILE. */
export type TunnelUnusable = (clientIp: string | null, clientPort: number, errnoName: string) => void;

/** A native stream listener (opaque). */
export type TunnelHandle = { readonly __tunnelHandle: unique symbol };

export interface TunnelListenOptions {
  /** The listening fd (listenTcp); the addon closes it on tunnelClose. */
  fd: number;
  /** Read the client's first bytes (TLS) before deciding. */
  sniff: boolean;
  /** REDIRECT mode: the destination is SO_ORIGINAL_DST, not the local address. */
  redirect: boolean;
  /** SO_MARK for upstream sockets (0..2^32-1, all 32 bits); none when omitted. */
  mark?: number;
  sniffMaxBytes: number;
  /**
   * On a sniffing listener, ask decide() once before the first bytes (head
   * empty, final false) when they are not there at accept, so that it can
   * have the proxy connection opened while they travel.
   */
  speculate?: boolean;
  /** Plain HTTP: decide() may answer TunnelActions.HTTP, and next() frames the rest of the connection. */
  next?: TunnelNext;
  sniffTimeoutMs: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Direct connections (no request) leave from the client's address: IP_TRANSPARENT, bind(client ip, 0). */
  directFromClient?: boolean;
  /**
   * Plain HTTP: a request head after the first (or a chunk line) must come whole within this, from its first bytes;
   * else done(HEAD_TIMEOUT) with the client's fd. 0 or absent: no limit.
   */
  headTimeoutMs?: number;
  /** Exchanges (TunnelActions.EXCHANGE) and failures before the relay go to this (failover, handshakes); none: they end the connection. */
  upstream?: TunnelUpstream;
}

/**
 * The end of a splice relay: bytes written to the upstream (up) and to the
 * client (down), and OK, IDLE_TIMEOUT, ABORTED, CLIENT_ERROR or
 * UPSTREAM_ERROR with the errno name as detail (the other side was reset), or
 * RELAY_ERROR with the errno name (a local failure, e.g. EMFILE).
 */
export type SpliceDoneCallback = (up: number, down: number, outcome: Outcome, detail: string) => void;

export interface SpliceRelayOptions {
  /** 0 turns the idle timeout off. */
  idleTimeoutMs: number;
  /** The client already sent EOF (Node read it): half-close the upstream at once. */
  clientEof?: boolean;
  upstreamEof?: boolean;
}

/** One datagram: its bytes, who sent it, and where it was going (IP_ORIGDSTADDR). IPv4 arrives unmapped. */
export type UdpPacketCallback = (data: Buffer, clientHost: string, clientPort: number, dstHost: string, dstPort: number) => void;

/** An open native UDP listener (opaque). */
export type UdpHandle = { readonly __udpHandle: unique symbol };

export interface UdpListenOptions {
  /** IPv4 or IPv6 literal; one socket per family (IPv6 sockets are v6-only). */
  host: string;
  port: number;
  /** IP_TRANSPARENT / IPV6_TRANSPARENT before bind, for TPROXY; needs CAP_NET_ADMIN. */
  transparent?: boolean;
}

const ADDON_NAME = 'transgate.node';
// From dist/src/native/ up to the package root.
const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

/** Where the addon may be: TRANSGATE_ADDON alone when set, else the node-gyp builds. */
function candidates(): string[] {
  const override = process.env.TRANSGATE_ADDON;
  if (override !== undefined && override !== '') return [path.resolve(override)];
  return [path.join(PACKAGE_ROOT, 'build', 'Release', ADDON_NAME), path.join(PACKAGE_ROOT, 'build', 'Debug', ADDON_NAME)];
}

let binding: NativeBinding | undefined;
let loadError: GatewayError | undefined;

/**
 * Loads the addon once; later calls return the same binding or rethrow the
 * same error (a rebuild needs a restart anyway).
 */
export function loadNative(): NativeBinding {
  if (binding) return binding;
  if (loadError) throw loadError;
  const reasons: string[] = [];
  let cause: unknown;
  for (const file of candidates()) {
    if (!fs.existsSync(file)) {
      reasons.push(`${file}: not found`);
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- a .node addon loads only through require()
      const loaded = require(file) as NativeBinding;
      const abi = typeof loaded.abiVersion === 'function' ? loaded.abiVersion() : 1;
      if (abi !== ABI_VERSION) {
        // A build left from other sources (a pull without `npm install`) would misread every answer.
        reasons.push(`${file}: built from other sources (protocol ${abi}, this transgate speaks ${ABI_VERSION}): rebuild it`);
        continue;
      }
      binding = loaded;
      return binding;
    } catch (err) {
      cause = err;
      reasons.push(`${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  loadError = new GatewayError(
    ErrorCodes.NATIVE,
    `transgate's native addon could not be loaded (${reasons.join('; ')}). ` +
      `Run \`npm install\` in ${PACKAGE_ROOT} to build it; that needs g++, make and python3 ` +
      `(Debian/Ubuntu: apt-get install g++ make python3).`,
    { cause },
  );
  throw loadError;
}

/** True when the addon loads; never throws. */
export function isNativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}

// ---- argument checks -------------------------------------------------------

function invalid(name: string, expected: string, value: unknown, code = 'ERR_INVALID_ARG_VALUE'): TypeError {
  let shown: string;
  try {
    shown = typeof value === 'string' ? JSON.stringify(value) : String(value);
  } catch {
    shown = typeof value;
  }
  const err = new TypeError(`${name} must be ${expected}, got ${shown}`) as TypeError & { code: string };
  err.code = code;
  return err;
}

function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number') throw invalid(name, `an integer in [${min}, ${max}]`, value, 'ERR_INVALID_ARG_TYPE');
  if (!Number.isInteger(value) || value < min || value > max) throw invalid(name, `an integer in [${min}, ${max}]`, value);
  return value;
}

const checkFd = (fd: unknown): number => checkInt('fd', fd, 0, 0x7fffffff);
const checkMark = (mark: unknown): number => checkInt('mark', mark, 0, 0xffffffff);

function checkPort(name: string, port: unknown): number {
  return checkInt(name, port, 0, 65535);
}

function checkFamily(family: unknown): Family {
  if (family !== 4 && family !== 6)
    throw invalid('family', '4 or 6', family, typeof family === 'number' ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE');
  return family;
}

function checkBool(name: string, value: unknown, dflt: boolean): boolean {
  if (value === undefined) return dflt;
  if (typeof value !== 'boolean') throw invalid(name, 'a boolean', value, 'ERR_INVALID_ARG_TYPE');
  return value;
}

function checkFunction<F>(name: string, value: F): F {
  if (typeof value !== 'function') throw invalid(name, 'a function', value, 'ERR_INVALID_ARG_TYPE');
  return value;
}

function checkIp(name: string, host: unknown): Family {
  if (typeof host !== 'string') throw invalid(name, 'an IPv4 or IPv6 literal', host, 'ERR_INVALID_ARG_TYPE');
  const family = net.isIP(host);
  // Zone ids (fe80::1%eth0) would need scope handling the addon does not do.
  if (family === 0 || host.includes('%')) throw invalid(name, 'an IPv4 or IPv6 literal', host);
  return family as Family;
}

function checkOptions(name: string, opts: unknown): Record<string, unknown> {
  if (typeof opts !== 'object' || opts === null) throw invalid(name, 'an object', opts, 'ERR_INVALID_ARG_TYPE');
  return opts as Record<string, unknown>;
}

// ---- the API ----------------------------------------------------------------

/**
 * A listening, non-blocking, close-on-exec TCP socket for
 * `net.createServer().listen({ fd })`. The caller owns the fd until Node
 * takes it: close it (fs.closeSync) if listen({ fd }) is never reached.
 */
export function listenTcp(opts: ListenTcpOptions): number {
  const o = checkOptions('options', opts);
  const host = o.host as string;
  checkIp('options.host', host);
  const port = checkPort('options.port', o.port);
  const backlog = o.backlog === undefined ? 511 : checkInt('options.backlog', o.backlog, 1, 0x7fffffff);
  const transparent = checkBool('options.transparent', o.transparent, false);
  const v6only = checkBool('options.v6only', o.v6only, false);
  const reuseAddr = checkBool('options.reuseAddr', o.reuseAddr, true);
  return loadNative().listenTcp(host, port, backlog, transparent, v6only, reuseAddr);
}

/** The local port of a socket (getsockname). */
export function localPort(fd: number): number {
  const f = checkFd(fd);
  return loadNative().localPort(f);
}

/** 4 or 6: the socket's own family (a dual-stack socket is 6 even with a v4 peer). */
export function socketFamily(fd: number): Family {
  const f = checkFd(fd);
  return loadNative().socketFamily(f);
}

/**
 * The destination a client dialled before netfilter REDIRECTed / DNATed it
 * here (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for IPv6 peers). IPv4 is
 * returned unmapped. Throws code 'ENOENT' when conntrack has no entry for
 * the connection, i.e. it was not redirected (and conntrack is not tracking
 * in this network namespace).
 */
export function originalDst(fd: number): Address {
  const f = checkFd(fd);
  return loadNative().originalDst(f);
}

/** SO_MARK, so netfilter rules can tell transgate's own traffic apart. Needs CAP_NET_ADMIN. */
export function setMark(fd: number, mark: number): void {
  const f = checkFd(fd);
  const m = checkMark(mark);
  loadNative().setMark(f, m);
}

/** SO_MARK as the kernel has it (0 when never set). */
export function getMark(fd: number): number {
  const f = checkFd(fd);
  return loadNative().getMark(f);
}

/** IP_TRANSPARENT (4) or IPV6_TRANSPARENT + IP_TRANSPARENT (6) on an existing socket. */
export function setTransparent(fd: number, family: Family): void {
  const f = checkFd(fd);
  const fam = checkFamily(family);
  loadNative().setTransparent(f, fam);
}

/**
 * Raises the soft open-files limit (RLIMIT_NOFILE) to the hard one and
 * returns both as they are after; for sizing --max-conns. A soft limit
 * already at the hard one is left alone.
 */
export function raiseNofileLimit(): NofileLimit {
  return loadNative().raiseNofileLimit();
}

/**
 * An unconnected, non-blocking, close-on-exec TCP socket with SO_MARK set.
 * Node 20 can connect it, but only if `new net.Socket({ fd })` and
 * `socket.connect(port, ip)` run in the same tick: Node starts reading at
 * construction, and once the event loop polls the unconnected socket the
 * kernel reports a hangup, read() fails with ENOTCONN and Node destroys the
 * socket. Prefer connectMarkedSocket(), which keeps to that.
 */
export function createTcpSocket(opts: CreateTcpSocketOptions): number {
  const o = checkOptions('options', opts);
  const family = checkFamily(o.family);
  const mark = o.mark === undefined ? undefined : checkMark(o.mark);
  const transparent = checkBool('options.transparent', o.transparent, false);
  return loadNative().createTcpSocket(family, mark, transparent);
}

/**
 * A net.Socket connecting to an IP literal from a socket that carries the
 * mark from its first packet. Behaves as net.connect(): 'connect' on
 * success, 'error' (syscall 'connect') on failure. A host name is refused:
 * the asynchronous DNS lookup would let the event loop poll the unconnected
 * socket (see createTcpSocket).
 */
export function connectMarkedSocket(opts: ConnectMarkedOptions): net.Socket {
  const o = checkOptions('options', opts);
  const host = o.host as string;
  const family = checkIp('options.host', host);
  const port = checkPort('options.port', o.port);
  const mark = o.mark === undefined ? undefined : checkMark(o.mark);
  const transparent = checkBool('options.transparent', o.transparent, false);
  const localAddress = o.localAddress === undefined ? undefined : (o.localAddress as string);
  if (localAddress !== undefined && checkIp('options.localAddress', localAddress) !== family) {
    throw invalid('options.localAddress', `an IPv${family} literal like options.host`, localAddress);
  }
  const lport = o.localPort === undefined ? undefined : checkPort('options.localPort', o.localPort);

  const fd = loadNative().createTcpSocket(family, mark, transparent);
  let sock: net.Socket;
  try {
    sock = new net.Socket({ fd, readable: true, writable: true });
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  try {
    sock.connect({ host, port, family, localAddress, localPort: lport });
  } catch (err) {
    sock.destroy(); // closes fd
    throw err;
  }
  return sock;
}

/** The fd of a connected or listening-accepted Node socket. */
export function socketFd(sock: net.Socket): number {
  if (!(sock instanceof net.Socket)) throw invalid('sock', 'a net.Socket', sock, 'ERR_INVALID_ARG_TYPE');
  const handle = (sock as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) {
    const err = new Error(
      'socketFd: socket has no open file descriptor (destroyed, not yet connected, or not a TCP socket)',
    ) as NativeSystemError;
    err.code = 'EBADF';
    err.syscall = 'socketFd';
    err.errno = -os.constants.errno.EBADF;
    throw err;
  }
  return fd;
}

/**
 * A UDP socket watched on Node's event loop (uv_poll): every datagram that
 * carries its original destination (IP_RECVORIGDSTADDR) is passed to
 * onPacket. Close it with udpClose; until then it keeps the process alive.
 */
export function udpListen(opts: UdpListenOptions, onPacket: UdpPacketCallback): UdpHandle {
  const o = checkOptions('options', opts);
  checkIp('options.host', o.host);
  const port = checkPort('options.port', o.port);
  const transparent = checkBool('options.transparent', o.transparent, false);
  if (typeof onPacket !== 'function') throw invalid('onPacket', 'a function', onPacket, 'ERR_INVALID_ARG_TYPE');
  return loadNative().udpListen(o.host as string, port, transparent, onPacket);
}

/** Stops a udpListen socket; idempotent. The fd closes once libuv has released it. */
export function udpClose(handle: UdpHandle): void {
  loadNative().udpClose(handle);
}

/** The port a udpListen socket is bound to. */
export function udpListenerPort(handle: UdpHandle): number {
  return loadNative().udpListenerPort(handle);
}

/**
 * A transparent UDP socket bound to host:port, which need not be local:
 * answers sent from it carry the address the client asked. Close with
 * fs.closeSync. Needs CAP_NET_ADMIN.
 */
export function udpReplySocket(host: string, port: number): number {
  checkIp('host', host);
  return loadNative().udpReplySocket(host, checkPort('port', port));
}

/** sendto without blocking; throws EAGAIN (and any other errno) for the caller to drop the datagram. */
export function udpSend(fd: number, data: Buffer, host: string, port: number): number {
  const f = checkFd(fd);
  if (!Buffer.isBuffer(data)) throw invalid('data', 'a Buffer', data, 'ERR_INVALID_ARG_TYPE');
  checkIp('host', host);
  return loadNative().udpSend(f, data, host, checkPort('port', port));
}

/** True when the addon loads and has `name` (an addon built before that part was added has not). */
function hasExport(name: keyof NativeBinding): boolean {
  try {
    return typeof loadNative()[name] === 'function';
  } catch {
    return false;
  }
}

/** True when the loaded addon has the splice relay. */
export function hasSplice(): boolean {
  return hasExport('spliceRelay');
}

/**
 * Relays two connected TCP sockets with splice(2) on Node's event loop until
 * both directions are closed, then calls onDone once (never synchronously).
 * The addon dup()s both fds: the caller must stop Node reading them and then
 * close its own (destroy the net.Socket), see src/relay/splice-relay.ts.
 */
export function spliceRelay(clientFd: number, upstreamFd: number, opts: SpliceRelayOptions, onDone: SpliceDoneCallback): void {
  const c = checkInt('clientFd', clientFd, 0, 0x7fffffff);
  const u = checkInt('upstreamFd', upstreamFd, 0, 0x7fffffff);
  if (c === u) throw invalid('upstreamFd', 'a different fd than clientFd', upstreamFd);
  const o = checkOptions('options', opts);
  const idle = checkInt('options.idleTimeoutMs', o.idleTimeoutMs, 0, 0x7fffffff);
  const clientEof = checkBool('options.clientEof', o.clientEof, false);
  const upstreamEof = checkBool('options.upstreamEof', o.upstreamEof, false);
  if (typeof onDone !== 'function') throw invalid('onDone', 'a function', onDone, 'ERR_INVALID_ARG_TYPE');
  loadNative().spliceRelay(c, u, idle, clientEof, upstreamEof, onDone);
}

/** Ends every running splice relay (Outcomes.ABORTED); for shutdown. Returns how many. */
export function spliceAbortAll(): number {
  return hasSplice() ? loadNative().spliceAbortAll() : 0;
}

/** How many splice relays are running. */
export function spliceActive(): number {
  return hasSplice() ? loadNative().spliceActive() : 0;
}

/** True when the addon has the native stream front end (native/tunnel.c). */
export function hasTunnel(): boolean {
  return hasExport('tunnelListen');
}

/**
 * Accepts on a listening fd in the addon and carries each connection from
 * accept to the splice relay; TypeScript decides the route (decide) and
 * hears the end (done). See native/tunnel.c.
 */
export function tunnelListen(opts: TunnelListenOptions, decide: TunnelDecide, done: TunnelDone, unusable: TunnelUnusable): TunnelHandle {
  const o = checkOptions('options', opts);
  const fd = checkInt('options.fd', o.fd, 0, 0x7fffffff);
  const mark = o.mark === undefined ? undefined : checkMark(o.mark);
  for (const [name, fn] of [
    ['decide', decide],
    ['done', done],
    ['unusable', unusable],
  ] as const) {
    if (typeof fn !== 'function') throw invalid(name, 'a function', fn, 'ERR_INVALID_ARG_TYPE');
  }
  return loadNative().tunnelListen(
    fd,
    checkBool('options.sniff', o.sniff, false),
    checkBool('options.redirect', o.redirect, false),
    mark,
    checkInt('options.sniffMaxBytes', o.sniffMaxBytes, 1, 1 << 20),
    checkInt('options.sniffTimeoutMs', o.sniffTimeoutMs, 1, 0x7fffffff),
    checkInt('options.connectTimeoutMs', o.connectTimeoutMs, 1, 0x7fffffff),
    checkInt('options.idleTimeoutMs', o.idleTimeoutMs, 0, 0x7fffffff),
    decide,
    done,
    unusable,
    checkBool('options.speculate', o.speculate, false),
    o.next === undefined ? undefined : checkFunction('options.next', o.next as TunnelNext),
    checkBool('options.directFromClient', o.directFromClient, false),
    o.headTimeoutMs === undefined ? 0 : checkInt('options.headTimeoutMs', o.headTimeoutMs, 0, 0x7fffffff),
    o.upstream === undefined ? undefined : checkFunction('options.upstream', o.upstream as TunnelUpstream),
  );
}

/**
 * The answer a connection waits for (TunnelActions.PENDING from decide(), or
 * UpActions.PENDING from upstream()). False when it no longer waits (it
 * timed out, or was aborted): the answer is dropped.
 */
export function tunnelResume(id: number, answer: TunnelAction | UpAction | null): boolean {
  checkInt('id', id, 0, 0xffffffff);
  return loadNative().tunnelResume(id, answer);
}

/** Stops accepting and closes the listening fd; connections already accepted go on. */
export function tunnelClose(handle: TunnelHandle): void {
  loadNative().tunnelClose(handle);
}

/** Ends every connection that is not relaying yet (shutdown); each gets done(Outcomes.ABORTED). */
export function tunnelAbortAll(): number {
  return hasTunnel() ? loadNative().tunnelAbortAll() : 0;
}

/** Connections accepted by the addon and not relaying yet. */
export function tunnelPending(): number {
  return hasTunnel() ? loadNative().tunnelPending() : 0;
}

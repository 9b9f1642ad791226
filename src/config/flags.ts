import { ErrorCodes, GatewayError } from '../core/errors';
import { LOG_LEVELS } from '../core/log';
import { parsePort } from '../core/validate';

/**
 * The command line, declared as one table so that parsing, --help and the
 * README cannot drift apart. go-transproxy's single-dash spellings are
 * accepted for every flag (`-tcp-proxy-dports 22,5000`).
 */
export type FlagType = 'string' | 'int' | 'ports' | 'list' | 'bool' | 'duration';

export interface FlagSpec {
  name: string;
  type: FlagType;
  default: string | number | boolean | number[] | string[] | undefined;
  help: string;
  /** Other accepted names (without dashes), e.g. go-transproxy's. */
  aliases?: string[];
  choices?: readonly string[];
  /** Placeholder shown in --help. */
  arg?: string;
}

export const FLAGS: readonly FlagSpec[] = [
  {
    name: 'mode',
    type: 'string',
    default: 'tproxy',
    choices: ['tproxy', 'redirect'],
    arg: 'MODE',
    help: 'interception: tproxy (mangle TPROXY + policy routing, no NAT) or redirect (nat REDIRECT)',
  },
  {
    name: 'http-ports',
    type: 'ports',
    default: [80, 11371],
    arg: 'PORTS',
    help: 'TCP ports carried as HTTP: each request is sent to the proxy as an absolute-URI request (11371: HKP, the GPG key servers of gpg --recv-keys)',
  },
  {
    name: 'tls-ports',
    type: 'ports',
    default: [443],
    arg: 'PORTS',
    aliases: ['https-ports'],
    help: "TCP ports carried as TLS: CONNECT to the ClientHello's server name",
  },
  {
    name: 'tcp-proxy-dports',
    type: 'ports',
    default: [22],
    arg: 'PORTS',
    aliases: ['tcp-ports'],
    help: 'other TCP ports: CONNECT to the original destination address',
  },
  { name: 'http-proxy-listen', type: 'int', default: 3180, arg: 'PORT', aliases: ['http-listen'], help: 'local port of the HTTP listener' },
  { name: 'https-proxy-listen', type: 'int', default: 3143, arg: 'PORT', aliases: ['tls-listen'], help: 'local port of the TLS listener' },
  {
    name: 'tcp-proxy-listen',
    type: 'int',
    default: 3122,
    arg: 'PORT',
    aliases: ['tcp-listen'],
    help: 'local port of the listener for other TCP ports',
  },
  {
    name: 'bypass',
    type: 'list',
    default: [],
    arg: 'CIDRS',
    help: "more destinations never intercepted (private, loopback, link-local, CGNAT, multicast, ULA and the gateway's own addresses always are)",
  },
  {
    name: 'lan',
    type: 'list',
    default: [],
    arg: 'IFACES',
    help: 'intercept only what arrives on these interfaces (default: every interface but lo)',
  },
  { name: 'ipv4', type: 'bool', default: true, help: 'intercept IPv4 (--no-ipv4 to turn off)' },
  { name: 'ipv6', type: 'bool', default: true, help: 'intercept IPv6 (--no-ipv6 to turn off)' },
  {
    name: 'rules',
    type: 'bool',
    default: true,
    aliases: [],
    help: 'install netfilter rules and policy routes (--no-rules, or -disable-iptables, when you install them yourself)',
  },
  { name: 'fwmark', type: 'int', default: 0x7467, arg: 'MARK', help: 'packet mark used for TPROXY policy routing' },
  { name: 'route-table', type: 'int', default: 7467, arg: 'TABLE', help: 'routing table (and ip rule priority) for TPROXY' },
  {
    name: 'upstream',
    type: 'list',
    default: [],
    arg: 'URL,...',
    help: 'upstream proxies in order of preference, for every port (repeatable; overrides http_proxy/https_proxy): a connection whose proxy is down or fails to connect goes to the next',
  },
  {
    name: 'proxy-credentials',
    type: 'string',
    default: '',
    arg: 'FILE',
    help: 'user:password (first line; DOMAIN\\user for NTLM) for every upstream whose URL has none, from a file only root can read (mode 0600): not in the environment or the process list',
  },
  {
    name: 'upstream-check-interval',
    type: 'duration',
    default: 30_000,
    arg: 'DUR',
    help: 'how often each upstream is probed with a CONNECT to --doctor-target (0: only real connections tell); a down one is retried after 1s, 2s, 4s, ... up to 60s',
  },
  { name: 'connect-timeout', type: 'duration', default: 10_000, arg: 'DUR', help: 'timeout to reach the proxy or a direct destination' },
  { name: 'idle-timeout', type: 'duration', default: 300_000, arg: 'DUR', help: 'close a connection idle in both directions this long' },
  {
    name: 'relay',
    type: 'string',
    default: 'splice',
    choices: ['splice', 'js'],
    arg: 'RELAY',
    help: 'splice: the addon carries every port from accept to a zero-copy relay; js: Node sockets and streams (both need the addon)',
  },
  {
    name: 'direct-source',
    type: 'string',
    default: 'gateway',
    choices: ['gateway', 'client'],
    arg: 'FROM',
    help: "source address of direct (no_proxy, no proxy) connections: gateway (this host's own) or client (the client's address, as a transparent proxy: internal servers see and log the real client; their answers must route back through this host)",
  },
  {
    name: 'sniff-timeout',
    type: 'duration',
    default: 2_000,
    arg: 'DUR',
    help: "how long to wait for a client's first bytes (Host/SNI) before relaying without a name",
  },
  {
    name: 'clients',
    type: 'list',
    default: [],
    arg: 'CIDRS',
    help: 'only these source addresses are intercepted and answered (default: any source on the LAN interfaces)',
  },
  {
    name: 'max-conns-per-client',
    type: 'int',
    default: 512,
    arg: 'N',
    help: 'connections one client address may have open at once; more are reset (0: no limit)',
  },
  {
    name: 'max-conns',
    type: 'int',
    default: 0,
    arg: 'N',
    help: 'connections open at once in all (0: from the file descriptor limit, which is raised to its hard limit at start)',
  },
  {
    name: 'fail-closed',
    type: 'bool',
    default: false,
    help: 'leave the rules in place when transgate stops or crashes: clients get resets, not unproxied access, until it is back (transgate clear removes them)',
  },
  {
    name: 'dns',
    type: 'bool',
    default: true,
    help: "answer clients' DNS on port 53 (UDP and TCP): private names to --private-dns, public names through the proxy (--no-dns to turn off)",
  },
  { name: 'dns-proxy-listen', type: 'int', default: 3153, arg: 'PORT', help: 'local port of the DNS listeners (UDP and TCP)' },
  {
    name: 'private-domains',
    type: 'list',
    default: [],
    arg: 'DOMAINS',
    help: 'names under these domains go to --private-dns (default: the domain entries of no_proxy)',
  },
  {
    name: 'private-dns',
    type: 'string',
    default: '',
    arg: 'ADDR[:PORT]',
    help: 'internal DNS server for private names, asked directly (default: the server the client asked)',
  },
  {
    name: 'public-dns',
    type: 'string',
    default: '',
    arg: 'ADDR[:PORT]',
    help: 'DNS server for public names, asked over TCP through the proxy (default: the server the client asked)',
  },
  {
    name: 'dns-over-tcp-disabled',
    type: 'bool',
    default: false,
    help: 'send public names directly (UDP, TCP when truncated) instead of through the proxy',
  },
  {
    name: 'dns-over-https-enabled',
    type: 'bool',
    default: false,
    help: 'send public names to --doh-url (DNS over HTTPS through the proxy), for proxies that allow only port 443',
  },
  {
    name: 'doh-url',
    type: 'string',
    default: 'https://cloudflare-dns.com/dns-query',
    arg: 'URL',
    help: 'DNS-over-HTTPS endpoint (RFC 8484)',
  },
  { name: 'doh-ca', type: 'string', default: '', arg: 'FILE', help: 'extra CA certificates (PEM) to trust for the DoH server' },
  {
    name: 'dns-timeout',
    type: 'duration',
    default: 2_000,
    arg: 'DUR',
    help: 'answer SERVFAIL when the upstream DNS has not answered by then',
  },
  { name: 'dns-cache-size', type: 'int', default: 10_000, arg: 'N', help: 'DNS answers kept in the cache (0: no cache)' },
  {
    name: 'dns-client-rate',
    type: 'int',
    default: 1000,
    arg: 'N',
    help: 'DNS queries per second one client may send (bursts of twice that); more are dropped (0: no limit)',
  },
  {
    name: 'log-level',
    type: 'string',
    default: 'info',
    choices: LOG_LEVELS,
    arg: 'LEVEL',
    aliases: ['loglevel'],
    help: 'debug, info, warn or error',
  },
  {
    name: 'sysctl',
    type: 'bool',
    default: true,
    help: 'set ip_forward/forwarding on and send_redirects off while running, restore them at stop (--no-sysctl to leave them alone)',
  },
  {
    name: 'allow-quic',
    type: 'bool',
    default: false,
    help: "let clients' UDP/443 (QUIC) through; by default it is rejected so browsers fall back to TCP at once",
  },
  {
    name: 'masquerade',
    type: 'list',
    default: [],
    arg: 'IFACES',
    help: 'masquerade forwarded traffic (IPv4 and IPv6) leaving these uplink interfaces; removed at stop',
  },
  {
    name: 'local',
    type: 'bool',
    default: false,
    help: "also intercept this host's own outgoing connections (transgate's own sockets carry --socket-mark)",
  },
  {
    name: 'socket-mark',
    type: 'int',
    default: 0x7468,
    arg: 'MARK',
    help: "SO_MARK on transgate's own outgoing sockets, skipped by the --local rules",
  },
  {
    name: 'bridge',
    type: 'string',
    default: '',
    arg: 'BRIDGE',
    help: 'bridge mode: take frames to the intercepted ports on this bridge up to IP (nft bridge family); with --lan naming its client-side ports',
  },
  {
    name: 'firewall',
    type: 'string',
    default: 'auto',
    choices: ['auto', 'nftables', 'iptables', 'iptables-legacy'],
    arg: 'BACKEND',
    help: 'rule backend: nftables, iptables (nft-based), iptables-legacy; auto = nftables, iptables when nft is missing',
  },
  {
    name: 'doctor-target',
    type: 'string',
    default: 'example.com:443',
    arg: 'HOST:PORT',
    help: 'doctor: where to test CONNECT through the upstream proxy',
  },
  { name: 'json', type: 'bool', default: false, help: 'doctor: print the checks as JSON' },
  { name: 'help', type: 'bool', default: false, aliases: ['h'], help: 'show this help' },
  { name: 'version', type: 'bool', default: false, help: 'print the version' },
];

/** Names accepted for --no-<flag> style negation. */
const NEGATIONS: Record<string, { flag: string; value: boolean }> = {
  'disable-iptables': { flag: 'rules', value: false },
};

export type FlagValues = Record<string, string | number | boolean | number[] | string[]>;

export interface ParsedArgs {
  command: string;
  values: FlagValues;
  /** Flags the user set explicitly. */
  given: Set<string>;
}

const COMMANDS = ['run', 'rules', 'clear', 'doctor'] as const;

function flagError(message: string): GatewayError {
  return new GatewayError(ErrorCodes.FLAG, `${message} (see transgate --help)`);
}

export function parsePorts(raw: string, flag: string): number[] {
  const out = new Set<number>();
  for (const part of raw.split(/[,\s]+/).filter(Boolean)) {
    const dash = part.indexOf('-');
    const lo = parsePort(dash === -1 ? part : part.slice(0, dash));
    const hi = dash === -1 ? lo : parsePort(part.slice(dash + 1));
    if (lo === undefined || hi === undefined || lo > hi) {
      throw flagError(`--${flag}: '${part}' is not a port or range between 1 and 65535`);
    }
    if (hi - lo > 1024) throw flagError(`--${flag}: range '${part}' is too wide (at most 1024 ports)`);
    for (let p = lo; p <= hi; p++) out.add(p);
  }
  return [...out].sort((a, b) => a - b);
}

export function parseDuration(raw: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) throw flagError(`--${flag}: '${raw}' is not a duration (e.g. 500ms, 10s, 5m)`);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(Number(m[1]) * factor);
}

function parseInt0(raw: string, flag: string): number {
  const n = /^0x[0-9a-f]+$/i.test(raw) ? parseInt(raw, 16) : /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffffffff) throw flagError(`--${flag}: '${raw}' is not a number`);
  return n;
}

function convert(spec: FlagSpec, raw: string): FlagValues[string] {
  switch (spec.type) {
    case 'string':
      if (spec.choices && !spec.choices.includes(raw)) {
        throw flagError(`--${spec.name}: '${raw}' is not one of ${spec.choices.join(', ')}`);
      }
      return raw;
    case 'int':
      return parseInt0(raw, spec.name);
    case 'ports':
      return raw.trim() === '' ? [] : parsePorts(raw, spec.name);
    case 'list':
      return raw.split(/[,\s]+/).filter(Boolean);
    case 'duration':
      return parseDuration(raw, spec.name);
    case 'bool':
      if (/^(1|true|yes|on)$/i.test(raw)) return true;
      if (/^(0|false|no|off)$/i.test(raw)) return false;
      throw flagError(`--${spec.name}: '${raw}' is not true or false`);
  }
}

const byName = new Map<string, FlagSpec>();
for (const f of FLAGS) {
  byName.set(f.name, f);
  for (const a of f.aliases ?? []) byName.set(a, f);
}

export function parseArgs(argv: readonly string[]): ParsedArgs {
  const values: FlagValues = {};
  for (const f of FLAGS) values[f.name] = f.default as FlagValues[string];
  const given = new Set<string>();
  let command: string | undefined;

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-') || arg === '-') {
      if (command === undefined && (COMMANDS as readonly string[]).includes(arg)) {
        command = arg;
        continue;
      }
      throw flagError(`unexpected argument '${arg}'`);
    }
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    let inline = eq >= 0 ? body.slice(eq + 1) : undefined;

    let spec = byName.get(name);
    let negated = false;
    if (!spec && NEGATIONS[name]) {
      const neg = NEGATIONS[name];
      values[neg.flag] = neg.value;
      given.add(neg.flag);
      continue;
    }
    if (!spec && name.startsWith('no-')) {
      spec = byName.get(name.slice(3));
      if (spec?.type !== 'bool') spec = undefined;
      negated = true;
    }
    if (!spec) throw flagError(`unknown flag '${arg}'`);

    if (spec.type === 'bool') {
      const v = inline === undefined ? true : (convert(spec, inline) as boolean);
      values[spec.name] = negated ? !v : v;
    } else {
      if (inline === undefined) {
        inline = argv[++i];
        if (inline === undefined) throw flagError(`--${spec.name} needs a value (${spec.arg ?? 'VALUE'})`);
      }
      const v = convert(spec, inline);
      // A list flag given again adds to it (`--upstream a --upstream b`), as a repeated option does in most tools.
      values[spec.name] = spec.type === 'list' && given.has(spec.name) ? [...(values[spec.name] as string[]), ...(v as string[])] : v;
    }
    given.add(spec.name);
  }
  return { command: command ?? 'run', values, given };
}

function formatDefault(spec: FlagSpec): string {
  const d = spec.default;
  if (d === undefined || d === '' || (Array.isArray(d) && d.length === 0)) return '';
  if (spec.type === 'bool') return d ? ' (default: on)' : '';
  if (spec.type === 'duration') return ` (default: ${Number(d) >= 1000 ? `${Number(d) / 1000}s` : `${String(d)}ms`})`;
  if (spec.name === 'fwmark' || spec.name === 'socket-mark') return ` (default: 0x${Number(d).toString(16)})`;
  return ` (default: ${Array.isArray(d) ? d.join(',') : String(d)})`;
}

export function helpText(version: string): string {
  const lines = [
    `transgate ${version}: transparent proxy gateway for Linux`,
    '',
    'Usage:',
    "  sudo -E transgate [run] [flags]   intercept clients' TCP and carry it through the upstream proxy",
    '  transgate rules [flags]           print the netfilter rules and routes that run would install',
    "  sudo transgate clear [flags]      remove transgate's rules and routes (also after a crash)",
    '  sudo -E transgate doctor [flags]  check this host, its kernel and the upstream proxy; exit 1 on any FAIL',
    '',
    'Upstream proxy (from the environment, like curl and go-transproxy):',
    '  http_proxy    proxy for HTTP ports, e.g. http://user:password@proxy.example:3128',
    '  https_proxy   proxy for TLS and other TCP ports (default: http_proxy)',
    '  no_proxy      names, domains (.corp.example), addresses and CIDRs sent directly, e.g. .corp.example,10.0.0.0/8',
    '  With no proxy set, connections go directly. --upstream URL (repeatable) replaces http_proxy/https_proxy.',
    '',
    "Flags (--flag VALUE, --flag=VALUE or go-transproxy's -flag VALUE):",
  ];
  for (const f of FLAGS) {
    const names = [`--${f.name}`, ...(f.aliases ?? []).map((a) => (a.length === 1 ? `-${a}` : `--${a}`))];
    const left = `  ${names.join(', ')}${f.arg ? ` ${f.arg}` : ''}`;
    lines.push(left.length < 34 ? left.padEnd(34) + f.help + formatDefault(f) : `${left}\n${' '.repeat(34)}${f.help}${formatDefault(f)}`);
  }
  lines.push(`  ${'--disable-iptables'.padEnd(32)}same as --no-rules`);
  lines.push('', 'PORTS: comma-separated ports or ranges (22,5000-5010). DUR: 500ms, 10s, 5m.');
  return lines.join('\n');
}

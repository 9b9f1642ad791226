/** The rules configuration as normalizeRules (plan.ts) leaves it: what render-nft.ts and plan-summary.ts read. */
export interface NormGroup {
  ports: number[];
  listenPort: number;
  allDestinations: boolean;
}

/**
 * A RulesConfig checked and in canonical form: CIDRs with host bits cleared
 * and deduplicated, ports deduplicated, interface names checked. What
 * renderNft() and summarize() read; neither checks anything again.
 */
export interface NormalizedRules {
  mode: 'tproxy' | 'redirect';
  tproxy: boolean;
  ipv4: boolean;
  ipv6: boolean;
  /** The enabled families, IPv4 first. */
  families: Array<4 | 6>;
  tcp: Array<{ ports: number[]; listenPort: number; allDestinations: boolean }>;
  udp: Array<{ ports: number[]; listenPort: number; allDestinations: boolean }>;
  /** Every intercepted TCP port, sorted (the OUTPUT hook's set). */
  allTcpPorts: number[];
  /** Every listener port, sorted, once. */
  listenPorts: number[];
  /** Empty when the family is off. */
  bypass4: string[];
  bypass6: string[];
  lan: string[];
  /** Without lo and the bridge. */
  uplinks: string[];
  /** --clients given (for either family): sources not listed are not intercepted. */
  clientsOn: boolean;
  clients4: string[];
  clients6: string[];
  /** tproxy mode: the listeners' addresses, canonical; undefined: `tproxy to :PORT`. */
  addr4?: string;
  addr6?: string;
  fwmark: number;
  /** fwmark as nft writes it (0x7467). */
  mark: string;
  routeTable: number;
  rulePriority: number;
  local: boolean;
  /** local: transgate's own SO_MARK, formatted. */
  ownMark?: string;
  masquerade: string[];
  rejectQuic: boolean;
  failClosed: boolean;
  bridge?: { name: string; mac: string };
  transparentDirect: boolean;
}

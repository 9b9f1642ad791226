import type { DnsSettings } from '../../src/config/types';

/** DNS gateway settings as the flags' defaults make them, with `over` on top (for DnsService in unit tests). */
export function dnsSettings(over: Partial<DnsSettings> = {}): DnsSettings {
  return {
    listenPort: 3153,
    privateDomains: [],
    privateDns: undefined,
    publicDns: undefined,
    overTcpDisabled: false,
    dohEnabled: false,
    dohUrl: undefined,
    dohCaFile: undefined,
    timeoutMs: 2000,
    cacheSize: 10,
    ...over,
  };
}

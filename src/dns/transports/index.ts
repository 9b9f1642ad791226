/** The DNS transports, one file each (tcp, udp, doh), and what they share. */
export { frame, unframe, type DnsTransport, type Server, type StreamOpener } from './shared';
export { TcpTransport } from './tcp';
export { UdpTransport } from './udp';
export { DohTransport } from './doh';

#!/usr/bin/env bash
# Installs the Debian packages that the end-to-end tests and the benchmark
# run (squid, nginx, dnsmasq, redsocks, clients ...), only those missing.
# Used by .ci/run and `npm run bench`; needs root when something is missing.
set -euo pipefail

need=()
for pair in nft:nftables iptables:iptables squid:squid nginx:nginx-light dnsmasq:dnsmasq-base \
            curl:curl dig:dnsutils socat:socat ip:iproute2 htpasswd:apache2-utils openssl:openssl \
            redsocks:redsocks hey:hey unbound:unbound dnsperf:dnsperf python3:python3 sysctl:procps \
            clang-format:clang-format; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian starts packaged daemons on install; the lab runs its own instances.
for svc in squid nginx redsocks unbound; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

#!/usr/bin/env bash
# `sudo npm run bench` from a fresh clone: the Debian packages and npm
# dependencies it needs, a build, then bench/bench.ts (network namespaces: root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench: needs root for network namespaces: sudo npm run bench" >&2
  exit 1
fi
bash scripts/debian-deps.sh
[ -d node_modules ] || npm ci
npm run build
exec node dist/bench/bench.js

#!/usr/bin/env bash
# Makes sure both HAProxy versions the tests run against exist, and prints their paths (one per
# line): Debian 12's packaged 2.6 (apt-get) and 3.0 built by scripts/build-haproxy-3.0.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/sbin/haproxy ]; then
  [ "$(id -u)" = 0 ] || { echo "HAProxy 2.6 is missing: run 'apt-get install haproxy' as root, or set HAPROXY_BIN" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq haproxy >&2
fi
echo /usr/sbin/haproxy
scripts/build-haproxy-3.0.sh

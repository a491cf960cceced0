#!/usr/bin/env bash
# Makes sure both HAProxy versions the tests run against exist, and prints their paths (one per
# line): Debian 12's packaged 2.6 (apt-get) and 3.0 built by scripts/build-haproxy-3.0.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# PCRE2's development files: the connector checks regex domains with the PCRE2 library HAProxy
# links (without them pcre2-sys builds a newer bundled copy).
if ! [ -x /usr/sbin/haproxy ] || ! [ -e /usr/include/pcre2.h ]; then
  [ "$(id -u)" = 0 ] || { echo "HAProxy 2.6 or PCRE2's headers are missing: run 'apt-get install haproxy libpcre2-dev pkg-config' as root, or set HAPROXY_BIN" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq haproxy libpcre2-dev pkg-config >&2
fi
echo /usr/sbin/haproxy
scripts/build-haproxy-3.0.sh

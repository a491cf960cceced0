#!/usr/bin/env bash
# Builds HAProxy 3.0 from the upstream source tarball carried by Debian's package archive (the
# 'trixie' release), with Debian's build packages only, and prints the binary's path on stdout.
#   scripts/build-haproxy-3.0.sh [CACHE_DIR]     (default: ~/.cache/haproxy-nomad-connector/haproxy-3.0)
# An earlier build in CACHE_DIR is reused. Needs root for apt-get. About a minute on 2 cores.
# The machine's own apt configuration is not changed: a private apt state directory is used.
set -euo pipefail
cache=${1:-$HOME/.cache/haproxy-nomad-connector/haproxy-3.0}
mkdir -p "$cache"
if [ -x "$cache/haproxy" ] && "$cache/haproxy" -v 2>/dev/null | grep 'version 3\.0\.' >/dev/null; then
  echo "$cache/haproxy"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "building HAProxy 3.0 needs root (apt-get); or set HAPROXY_BIN to an existing binary" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq build-essential libssl-dev libpcre2-dev zlib1g-dev >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The archive address the machine already uses for bookworm, with trixie's source index.
uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n1 || true)
[ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$uri" ] || { echo "cannot find the Debian archive address in the apt configuration" >&2; exit 1; }
mkdir -p "$work/lists/partial" "$work/sources.list.d"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$uri" >"$work/sources.list"
opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=$work/sources.list.d"
  -o "Dir::State::Lists=$work/lists" -o "APT::Get::List-Cleanup=0")
apt-get "${opts[@]}" update -qq >&2
(cd "$work" && apt-get "${opts[@]}" source --download-only -qq haproxy >&2) || true
tarball=$(ls "$work"/haproxy_3.0.*.orig.tar.gz 2>/dev/null | head -n1 || true)
[ -n "$tarball" ] || { echo "no HAProxy 3.0 source tarball could be fetched from the Debian archive" >&2; exit 1; }
tar -xzf "$tarball" -C "$work"
src=$(ls -d "$work"/haproxy-3.0.* | head -n1)
make -C "$src" -j"$(nproc)" TARGET=linux-glibc USE_OPENSSL=1 USE_PCRE2=1 USE_PROMEX=1 >&2
install -m 0755 "$src/haproxy" "$cache/haproxy"
echo "$cache/haproxy"

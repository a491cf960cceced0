#!/usr/bin/env bash
# Checks that the image's runtime stage provides every shared library the connector binary needs:
#   scripts/check-image-libs.sh BINARY [DOCKERFILE]
# BINARY must be built as the Dockerfile's builder stage builds it (against Debian 12's
# libpcre2-8, dynamically); scripts/check-deploy.sh does that. Each library `ldd BINARY` lists must be
# provided by the runtime base image (list below) or copied into the runtime stage by a
# `COPY --from=builder …/<library>` line of the Dockerfile. Exit 1 naming each missing library.
set -euo pipefail
binary=${1:?usage: check-image-libs.sh BINARY [DOCKERFILE]}
dockerfile=${2:-$(dirname "$0")/../Dockerfile}

# gcr.io/distroless/cc-debian12 (and its :nonroot tag): Debian 12's libc6 (the loader, libc,
# libm, libpthread, libdl, librt, libresolv, libutil, libnss_*), libgcc-s1, libgomp1, libstdc++6,
# libssl3 (libssl, libcrypto), plus ca-certificates and tzdata.
base_image="gcr.io/distroless/cc-debian12"
base_provides=(
  linux-vdso.so.1
  ld-linux-x86-64.so.2 ld-linux-aarch64.so.1
  libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 libutil.so.1
  libnss_dns.so.2 libnss_files.so.2
  libgcc_s.so.1 libgomp.so.1 libstdc++.so.6
  libssl.so.3 libcrypto.so.3
)

runtime_from=$(awk 'toupper($1)=="FROM" {last=$2} END {print last}' "$dockerfile")
case "$runtime_from" in
  "$base_image" | "$base_image":*) ;;
  *) echo "FAIL the Dockerfile's runtime stage is FROM $runtime_from; this script knows the libraries of $base_image only" >&2; exit 1 ;;
esac
# Libraries the runtime stage copies in.
copied=$(awk 'toupper($1)=="FROM" {stage++} toupper($1)=="COPY" && stage>=2' "$dockerfile" \
  | grep -oE 'lib[^/ ]+\.so[.0-9]*' || true)

if ! out=$(ldd "$binary" 2>&1); then
  case "$out" in
    *"not a dynamic executable"*) echo "ok   $binary is static: nothing needed from $runtime_from"; exit 0 ;;
    *) echo "FAIL ldd $binary: $out" >&2; exit 1 ;;
  esac
fi
if [[ "$out" == *"statically linked"* ]]; then
  echo "ok   $binary is static: nothing needed from $runtime_from"
  exit 0
fi
missing=0
needed=0
while read -r line; do
  [ -n "$line" ] || continue
  lib=${line%% *}
  lib=${lib##*/}
  needed=$((needed + 1))
  if [[ "$line" == *"not found"* ]]; then
    echo "FAIL $lib: not found on this machine either" >&2
    missing=$((missing + 1))
    continue
  fi
  found=no
  for p in "${base_provides[@]}" $copied; do
    [ "$p" = "$lib" ] && found=yes && break
  done
  if [ "$found" = no ]; then
    echo "FAIL $lib: needed by $binary, neither in $runtime_from nor copied into the runtime stage" >&2
    missing=$((missing + 1))
  fi
done <<<"$out"
if [ "$missing" -gt 0 ]; then
  exit 1
fi
echo "ok   all $needed shared libraries of $binary are in $runtime_from (FROM $runtime_from)"

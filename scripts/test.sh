#!/usr/bin/env bash
# The test command (README "The two commands").
#   HAPROXY_BIN=/path/to/haproxy scripts/test.sh   runs `cargo test` once, against that binary.
#   scripts/test.sh                                 installs HAProxy 2.6 and builds 3.0 if missing,
#                                                   then runs `cargo test` against each.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {
  echo "==> cargo test against $("$1" -v | sed -n 1p) ($1)"
  HAPROXY_BIN="$1" cargo test --locked --workspace --all-targets
}
if [ -n "${HAPROXY_BIN:-}" ]; then
  run "$HAPROXY_BIN"
  exit 0
fi
mapfile -t bins < <(scripts/install-haproxy.sh)
for bin in "${bins[@]}"; do
  run "$bin"
done

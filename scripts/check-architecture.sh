#!/usr/bin/env bash
# The pure core (crates/hnc-core) must not depend, even indirectly, on an async runtime or an
# HTTP crate: the compiler then keeps it free of I/O. (The import-cycle and file-size checks are
# tests: tests/architecture.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p hnc-core
tree=$(cargo tree --locked -p hnc-core -e normal --prefix none)
bad=$(printf '%s\n' "$tree" | awk '{print $1}' | sort -u \
  | grep -E '^(tokio|tokio-.*|reqwest|hyper|hyper-.*|h2|axum|axum-.*|tower|tower-.*|futures|futures-.*|mio|async-.*)$' || true)
if [ -n "$bad" ]; then
  echo "the core crate depends on async or HTTP crates:" >&2
  printf '  %s\n' $bad >&2
  exit 1
fi
echo "core crate dependency tree: $(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | grep -vc '^hnc-core$') crates, no async or HTTP crate"

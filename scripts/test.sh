#!/usr/bin/env bash
# Runs banger's test suite on a fresh Debian 12 machine: installs what the
# tests drive (apt), then `cargo test`. Needs root: the tests create network
# namespaces, bridges and taps (all inside namespaces they delete afterwards).
#
# Expensive things are cached under $BANGER_CI_CACHE (default
# /var/cache/banger-ci: world-traversable, so tests can run the binaries as
# another uid), keyed by their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the tests need root (network namespaces, bridges, taps); run: sudo $0" >&2
  exit 1
fi

CACHE=${BANGER_CI_CACHE:-/var/cache/banger-ci}
mkdir -p "$CACHE" && chmod 755 "$CACHE"

# Debian packages the tests drive. Installed only when missing.
APT_PACKAGES=(iproute2 util-linux e2fsprogs git openssh-client zstd qemu-system-x86 mmdebstrap dpkg)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# `banger kernel pull` uses apt-get download: the package lists must exist.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  echo "== apt-get update (no package lists yet)"
  apt-get update -qq
fi

# vhost-device-vsock (QEMU's vsock backend, not packaged by Debian), built
# once per version into the cache.
VDV_VERSION=0.3.0
VDV_ROOT="$CACHE/tools/vhost-device-vsock-$VDV_VERSION"
if [ ! -x "$VDV_ROOT/bin/vhost-device-vsock" ]; then
  echo "== cargo install vhost-device-vsock $VDV_VERSION"
  cargo install --locked --quiet --root "$VDV_ROOT" vhost-device-vsock@"$VDV_VERSION"
fi
export PATH="$VDV_ROOT/bin:$PATH"

# Built images and downloaded packages shared by the tests, kept across runs.
export BANGER_TEST_CACHE=${BANGER_TEST_CACHE:-$CACHE/test-cache}

# One target dir across runs: a fresh clone does not rebuild every dependency.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo test"
cargo test --locked --workspace -- --test-threads="${BANGER_TEST_THREADS:-4}"

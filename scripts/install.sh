#!/usr/bin/env bash
# Installs banger from this checkout on Debian 12: the tools it drives (apt),
# then release builds of banger, bangerd and bangerd-root in /usr/local/bin.
# Needs root.
#
#   sudo ./scripts/install.sh && sudo banger vm run --rm -- uname -a
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install.sh installs system packages and binaries; run: sudo $0" >&2
  exit 1
fi
CACHE=${BANGER_CACHE:-/var/cache/banger-install}
mkdir -p "$CACHE"
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
banger_install_deps
echo "== cargo build --release"
cargo build --release --locked --quiet
for b in banger bangerd bangerd-root; do
  install -m 0755 "${CARGO_TARGET_DIR:-target}/release/$b" /usr/local/bin/$b
done
echo "installed: $(/usr/local/bin/banger --version)"
echo "next: banger vm run --rm -- uname -a   (the first run builds the default image, about a minute)"

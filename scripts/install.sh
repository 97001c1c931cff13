#!/usr/bin/env bash
# Installs banger from this checkout on Debian 12: the tools it drives (apt,
# verified by running each afterwards), release builds of banger, bangerd
# and bangerd-root in /usr/local/bin, and — where systemd runs — the two
# services (`banger system install`), so daily use needs no sudo.
#
#   ./scripts/install.sh && banger vm run --rm -- uname -a
#
# Runs as you and elevates itself (sudo) only for the steps that need root;
# as root it needs no sudo. Prints what it will change and asks first
# (--yes or BANGER_INSTALL_NONINTERACTIVE=1 skip the question). A second run
# changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

YES=${BANGER_INSTALL_NONINTERACTIVE:-0}
OWNER=${SUDO_USER:-$(id -un)}
while [ $# -gt 0 ]; do
  case "$1" in
    --yes|-y) YES=1 ;;
    --owner) OWNER=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "scripts/install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -eq 0 ]; then
  AS_ROOT=()
elif command -v sudo >/dev/null 2>&1; then
  AS_ROOT=(sudo)
else
  echo "scripts/install.sh: installing packages and services needs root, and sudo is not installed; run it as root" >&2
  exit 1
fi

# shellcheck source=scripts/deps.sh
. scripts/deps.sh

missing=()
for p in "${BANGER_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A package that is missing is not also listed as one whose tool does not run.
broken=$(banger_broken_tools | grep -vxF -f <(printf '%s\n' "${missing[@]}" "") | tr '\n' ' ' || true)
broken=${broken% }
TARGET=${CARGO_TARGET_DIR:-target}
changes=()
[ ${#missing[@]} -gt 0 ] && changes+=("apt-get install ${missing[*]}")
[ -n "$broken" ] && changes+=("apt-get install $broken (tools that do not run)")
changes+=("cargo build --release (as $(id -un), in $TARGET)")
changes+=("install banger, bangerd, bangerd-root into /usr/local/bin (where they differ)")
SYSTEMD=0
if [ -d /run/systemd/system ] && [ "$OWNER" != root ]; then
  SYSTEMD=1
  changes+=("banger system install --owner $OWNER: /etc/banger/install.toml, bangerd-root.service (root) and bangerd.service (User=$OWNER)")
fi

echo "scripts/install.sh will:"
for c in "${changes[@]}"; do echo "  - $c"; done
if [ "$YES" != 1 ]; then
  if [ ! -t 0 ]; then
    echo "scripts/install.sh: no terminal to ask on; re-run with --yes (or BANGER_INSTALL_NONINTERACTIVE=1)" >&2
    exit 1
  fi
  read -r -p "continue? [y/N] " answer
  case "$answer" in y|Y|yes) ;; *) echo "nothing changed"; exit 1 ;; esac
fi

# Packages, then every tool verified by running it (deps.sh fails naming
# the tool that is still missing).
"${AS_ROOT[@]}" bash -c '. scripts/deps.sh && banger_install_deps'

echo "== cargo build --release"
# The commit's time as the build time: the same checkout builds the same
# binaries, so a second run installs nothing.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
cargo build --release --locked --quiet
for b in banger bangerd bangerd-root; do
  if ! cmp -s "$TARGET/release/$b" "/usr/local/bin/$b"; then
    "${AS_ROOT[@]}" install -m 0755 -o root -g root "$TARGET/release/$b" "/usr/local/bin/$b"
    echo "installed /usr/local/bin/$b"
  fi
done
echo "banger: $(/usr/local/bin/banger --version)"

if [ "$SYSTEMD" = 1 ]; then
  "${AS_ROOT[@]}" /usr/local/bin/banger system install --owner "$OWNER"
else
  echo "no systemd services installed (systemd is not PID 1 here, or you are root):"
  echo "  the daemon starts on demand; as root it starts bangerd-root itself."
  echo "  banger doctor says what else this host needs."
fi
echo "next: banger vm run --rm -- uname -a   (the first run builds the default image, about a minute)"

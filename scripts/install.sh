#!/usr/bin/env bash
# Installs banger on Debian 12: the tools it drives (apt, verified by
# running each afterwards), banger, bangerd and bangerd-root in
# <prefix>/bin (/usr/local/bin), and — where systemd runs — the two
# services (`banger system install`), so daily use needs no sudo.
#
#   ./scripts/install.sh && banger vm run --rm -- uname -a      (from this checkout: cargo build)
#   ./scripts/install.sh --release https://…/banger              (a signed release: no Rust needed)
#   ./scripts/install.sh --release dist/ | dist/v0.2.0/banger-v0.2.0-x86_64-linux.tar.zst
#
# A release (a URL or directory as scripts/release.sh writes it, newest or
# --version vX.Y.Z; or one tarball with SHA256SUMS and SHA256SUMS.sig
# beside it) is installed only when its SHA256SUMS verifies (openssl) with
# banger's release key, embedded below (--key PUB.pem: trust another key,
# e.g. for your own builds), and the tarball matches its line.
# --no-packages: leave packages alone (the tools are installed already).
#
# Runs as you and elevates itself (sudo) only for the steps that need root;
# as root it needs no sudo. Prints what it will change and asks first
# (--yes or BANGER_INSTALL_NONINTERACTIVE=1 skip the question). A second run
# changes nothing.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$SCRIPT_DIR/.."

YES=${BANGER_INSTALL_NONINTERACTIVE:-0}
OWNER=${SUDO_USER:-$(id -un)}
RELEASE= VERSION= KEY= PREFIX=/usr/local PACKAGES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --yes|-y) YES=1 ;;
    --owner) OWNER=$2; shift ;;
    --release) RELEASE=$2; shift ;;
    --version) VERSION=$2; shift ;;
    --key) KEY=$2; shift ;;
    --prefix) PREFIX=$2; shift ;;
    --no-packages) PACKAGES=0 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "scripts/install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
BIN="$PREFIX/bin"

# banger's release key (release/banger-release.pub.pem; a test checks they match).
RELEASE_KEY='-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsm/lO3qIyumOa1VXRw7vxUdmV+gs
YzQhpZjTPt9w/yotrZUPqK6U7gH+6Nv9VdNyrmIzriYhJ/Dme+bMcr7jxA==
-----END PUBLIC KEY-----'

die() { echo "scripts/install.sh: $*" >&2; exit 1; }

# Puts a verified release's three binaries in $WORK/bin: SHA256SUMS checked
# with the release key, the tarball with SHA256SUMS, each binary run.
release_fetch() {
  local base="" dir tarball name v expected actual
  command -v openssl >/dev/null || die "openssl is needed to verify a release (apt-get install openssl)"
  if [ -f "$RELEASE" ]; then
    tarball=$RELEASE; dir=$(dirname "$RELEASE"); name=$(basename "$RELEASE")
    v=${name#banger-}; v=${v%-x86_64-linux.tar.zst}
    cp "$dir/SHA256SUMS" "$dir/SHA256SUMS.sig" "$WORK/" || die "$dir has no SHA256SUMS and SHA256SUMS.sig beside $name"
  else
    get() { # get <path under the release> <destination>
      case "$RELEASE" in
        http://*|https://*) curl -fsSL --max-filesize $((512 << 20)) -o "$2" "${RELEASE%/}/$1" ;;
        *) cp "$RELEASE/$1" "$2" ;;
      esac || die "cannot fetch $1 from $RELEASE"
    }
    if [ -n "$VERSION" ]; then v=$VERSION; else get latest "$WORK/latest"; v=$(head -c 64 "$WORK/latest" | tr -d '[:space:]'); fi
    [[ "$v" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "'$v' is not a release version"
    name="banger-$v-x86_64-linux.tar.zst"
    get "$v/SHA256SUMS" "$WORK/SHA256SUMS"
    get "$v/SHA256SUMS.sig" "$WORK/SHA256SUMS.sig"
    get "$v/$name" "$WORK/$name"
    tarball="$WORK/$name"
  fi
  [[ "$v" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "'$v' is not a release version"
  if [ -n "$KEY" ]; then cp "$KEY" "$WORK/key.pem"; else printf '%s\n' "$RELEASE_KEY" > "$WORK/key.pem"; fi
  base64 -d "$WORK/SHA256SUMS.sig" > "$WORK/sig.der" 2>/dev/null || die "SHA256SUMS.sig is not base64: the release is damaged"
  openssl dgst -sha256 -verify "$WORK/key.pem" -signature "$WORK/sig.der" "$WORK/SHA256SUMS" >/dev/null 2>&1 \
    || die "SHA256SUMS of $v is not signed by banger's release key (a tampered or foreign release); nothing was installed"
  expected=$(awk -v n="$name" '$2 == n || $2 == "*" n {print $1}' "$WORK/SHA256SUMS")
  actual=$(sha256sum "$tarball" | awk '{print $1}')
  [ -n "$expected" ] || die "the signed SHA256SUMS names no $name"
  [ "$expected" = "$actual" ] || die "$name has sha256 $actual, not the signed $expected; nothing was installed"
  mkdir -p "$WORK/x" "$WORK/bin"
  base="banger-$v-x86_64-linux/bin"
  zstd -dc "$tarball" | tar -x -C "$WORK/x" --no-same-owner "$base/banger" "$base/bangerd" "$base/bangerd-root" \
    || die "$name does not hold $base/{banger,bangerd,bangerd-root}"
  for b in banger bangerd bangerd-root; do
    [ -f "$WORK/x/$base/$b" ] && [ ! -L "$WORK/x/$base/$b" ] || die "$base/$b is not a regular file"
    mv "$WORK/x/$base/$b" "$WORK/bin/$b"
    [ "$("$WORK/bin/$b" --version | awk '{print $2}')" = "$v" ] || die "the release's $b does not run here or is not $v"
  done
  echo "verified $v (signature, sha256; its binaries run here)"
}

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

missing=() broken="" APT=0
TARGET=${CARGO_TARGET_DIR:-target}
changes=()
if [ "$PACKAGES" = 0 ]; then
  : # the tools are the host's business (--no-packages)
elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  APT=1
  for p in "${BANGER_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # A package that is missing is not also listed as one whose tool does not run.
  broken=$(banger_broken_tools | grep -vxF -f <(printf '%s\n' "${missing[@]}" "") | tr '\n' ' ' || true)
  broken=${broken% }
  [ ${#missing[@]} -gt 0 ] && changes+=("apt-get install ${missing[*]}")
  [ -n "$broken" ] && changes+=("apt-get install $broken (tools that do not run)")
else
  echo "scripts/install.sh: this host has no apt-get; install QEMU, e2fsprogs, iptables, iproute2, git, openssh and zstd with its package manager (banger doctor prints the line afterwards)" >&2
fi
if [ -n "$RELEASE" ]; then
  changes+=("fetch and verify the release $RELEASE${VERSION:+ ($VERSION)} (signature, sha256)")
else
  changes+=("cargo build --release (as $(id -un), in $TARGET)")
fi
changes+=("install banger, bangerd, bangerd-root into $BIN (where they differ)")
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

# A release is verified before anything on the host changes.
if [ -n "$RELEASE" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  release_fetch
fi

# Packages, then every tool verified by running it (deps.sh fails naming
# the tool that is still missing).
if [ "$APT" = 1 ]; then
  "${AS_ROOT[@]}" bash -c '. scripts/deps.sh && banger_install_deps'
fi

if [ -n "$RELEASE" ]; then
  FROM="$WORK/bin"
else
  echo "== cargo build --release"
  # The commit's time as the build time: the same checkout builds the same
  # binaries, so a second run installs nothing.
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
  cargo build --release --locked --quiet
  FROM="$TARGET/release"
fi
"${AS_ROOT[@]}" mkdir -p "$BIN"
for b in banger bangerd bangerd-root; do
  if ! cmp -s "$FROM/$b" "$BIN/$b"; then
    "${AS_ROOT[@]}" install -m 0755 -o root -g root "$FROM/$b" "$BIN/$b"
    echo "installed $BIN/$b"
  fi
done
echo "banger: $("$BIN/banger" --version)"

if [ "$SYSTEMD" = 1 ]; then
  "${AS_ROOT[@]}" "$BIN/banger" system install --owner "$OWNER"
else
  echo "no systemd services installed (systemd is not PID 1 here, or you are root):"
  echo "  the daemon starts on demand; as root it starts bangerd-root itself."
  echo "  banger doctor says what else this host needs."
fi
echo "next: banger vm run --rm -- uname -a   (the first run builds the default image, about a minute)"

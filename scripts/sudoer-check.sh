#!/usr/bin/env bash
# The sudoer path, end to end, on a host with systemd as PID 1: a Debian
# tree booted with systemd-nspawn (systemd PID 1, its own network
# namespace with no route out), in which a non-root sudoer `dev`
#
#   1. runs  scripts/install.sh --release /srv/release --no-packages --yes
#      (a release made here by scripts/release.sh from the test build, with
#      the default kernel and image as bundles; sudo only inside install.sh)
#   2. then, as dev with no sudo:  banger vm run --rm -- uname -a
#
# The tree has the tools banger drives but no mmdebstrap (and no network),
# so the default kernel and image come from the release's bundles, served
# on the container's loopback. Needs root on the host (it elevates itself),
# the test build (`cargo build --features banger/test-hooks`; its binaries
# trust tests/fixtures/release/test-key.pem), and the Debian archive once to
# make the tree (cached under $BANGER_CI_CACHE, default /var/cache/banger-ci).
#
#   ./scripts/sudoer-check.sh            prints each step; exit 0 when all pass
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
REPO=$(pwd)
CACHE=${BANGER_CI_CACHE:-/var/cache/banger-ci}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
say() { printf '\n== %s\n' "$*"; }
die() { echo "scripts/sudoer-check.sh: $*" >&2; exit 1; }

say "host tools: systemd-nspawn"
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
command -v systemd-nspawn >/dev/null || banger_apt_install systemd-container
systemd-nspawn --version | head -1 || die "systemd-nspawn does not run"

say "the test build"
cargo build --locked --features banger/test-hooks --bins --quiet
BIN="$TARGET/debug"

# The tree: systemd, sudo and the tools banger drives; no mmdebstrap.
PKGS=(systemd systemd-sysv dbus sudo qemu-system-x86 qemu-utils e2fsprogs iptables iproute2
  git openssh-client zstd ca-certificates curl openssl python3 procps kmod)
KEY=$(printf '%s\n' "${PKGS[@]}" | sha256sum | cut -c1-12)
BASE="$CACHE/nspawn/tree-$KEY"
if [ ! -f "$BASE/.complete" ]; then
  say "making the tree (mmdebstrap, once): $BASE"
  rm -rf "$BASE.part"
  mkdir -p "$CACHE/nspawn"
  mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${PKGS[*]}")" bookworm "$BASE.part"
  touch "$BASE.part/.complete"
  mv "$BASE.part" "$BASE"
fi

WORK=$(mktemp -d /var/tmp/banger-sudoer-XXXXXX)
NSPID= LEADER=
cleanup() {
  if [ -n "${BANGER_SUDOER_KEEP:-}" ] && [ -n "$NSPID" ]; then
    echo "kept (BANGER_SUDOER_KEEP): nsenter -t ${LEADER:-?} -a; kill $NSPID; rm -rf $WORK"
    return
  fi
  if [ -n "$NSPID" ] && kill -0 "$NSPID" 2>/dev/null; then
    kill -TERM "$NSPID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

say "the default kernel and image of the test build"
ART="$CACHE/nspawn/artifacts"
mkdir -p "$ART"
art() {
  env HOME="$ART/home" XDG_CONFIG_HOME="$ART/config" XDG_STATE_HOME="$ART/state" \
    XDG_CACHE_HOME="$CACHE/test-cache" XDG_RUNTIME_DIR="$ART/run" BANGER_SYSTEM=0 NO_COLOR=1 \
    "$BIN/banger" "$@"
}
art kernel pull debian-cloud >/dev/null
art image build debian-bookworm >/dev/null
rm -f "$WORK/image.tar.zst"
art image export debian-bookworm -o "$WORK/image.tar.zst" >/dev/null
art daemon stop >/dev/null

say "a release: scripts/release.sh --version v0.9.0 (test key, with bundles)"
ZSTD_LEVEL=3 scripts/release.sh --version v0.9.0 --key tests/fixtures/release/test-key.pem \
  --bin-dir "$BIN" --out "$WORK/release" \
  --kernel-dir "$ART/state/banger/kernels/debian-cloud" --image-bundle "$WORK/image.tar.zst" 2>/dev/null

say "the container's tree"
TREE="$WORK/tree"
cp -a --reflink=auto "$BASE" "$TREE"
mkdir -p "$TREE/srv/banger/tests/fixtures/release"
cp -a scripts "$TREE/srv/banger/"
cp tests/fixtures/release/test-key.pub.pem "$TREE/srv/banger/tests/fixtures/release/"
cp -a "$WORK/release" "$TREE/srv/release"
chroot "$TREE" useradd -m -s /bin/bash -G sudo dev
echo 'dev ALL=(ALL) NOPASSWD: ALL' > "$TREE/etc/sudoers.d/dev"
echo banger-sudoer > "$TREE/etc/hostname"
echo "127.0.1.1 banger-sudoer" >> "$TREE/etc/hosts"
chmod 0440 "$TREE/etc/sudoers.d/dev"
cat > "$TREE/etc/systemd/system/release-server.service" <<'EOF'
[Unit]
Description=the release, served on the container's loopback
[Service]
ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 8080 --directory /srv/release
[Install]
WantedBy=multi-user.target
EOF
ln -s ../release-server.service "$TREE/etc/systemd/system/multi-user.target.wants/release-server.service"
# System mode (install.sh installs the services) reads /etc/banger/config.toml.
mkdir -p "$TREE/etc/banger"
cat > "$TREE/etc/banger/config.toml" <<'EOF'
warm_start = false
[vm_defaults]
vcpu = 2
memory_mib = 1024
disk_size = "2G"
[update]
url = "http://127.0.0.1:8080"
EOF

say "boot: systemd-nspawn -b --private-network --bind=/dev/net/tun"
systemd-nspawn -q -D "$TREE" --register=no --keep-unit -b --private-network \
  --bind=/dev/net/tun --machine=banger-sudoer --hostname=banger-sudoer >"$WORK/console.log" 2>&1 </dev/null &
NSPID=$!
# The container's PID 1: the descendant of nspawn that runs systemd.
LEADER=
for _ in $(seq 600); do
  for c in $(pgrep -P "$NSPID" || true) $(for p in $(pgrep -P "$NSPID" || true); do pgrep -P "$p" || true; done); do
    if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then LEADER=$c; break 2; fi
  done
  sleep 0.1
done
[ -n "$LEADER" ] || { cat "$WORK/console.log"; die "the container did not start systemd"; }
in_ct() { nsenter -t "$LEADER" -a -- "$@"; }
# Booted: systemd says so (degraded is fine: a unit nspawn cannot run).
state=
for _ in $(seq 180); do
  state=$(in_ct systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 1
done
case "$state" in running|degraded) ;; *) cat "$WORK/console.log"; die "the container's systemd is $state";; esac
echo "container: systemd is $state (PID 1: $(in_ct cat /proc/1/comm))"
in_ct systemctl --failed --no-legend --plain || true
as_dev() { in_ct runuser -l dev -c "$1"; }
journal() { in_ct journalctl -u bangerd -u bangerd-root --no-pager -n 80 || true; }

say "as dev: scripts/install.sh --release /srv/release --no-packages --yes"
as_dev "cd /srv/banger && ./scripts/install.sh --release /srv/release --key tests/fixtures/release/test-key.pub.pem --no-packages --yes" \
  || { journal; die "install.sh failed as the sudoer"; }

say "as dev, no sudo: banger system status"
as_dev "banger system status" || true

say "as dev, no sudo: banger vm run --rm -- uname -a"
if ! as_dev "banger vm run --rm -- uname -a"; then
  as_dev "banger doctor" || true
  journal
  die "vm run failed as the sudoer"
fi
say "as dev: banger vm list (nothing left)"
as_dev "banger vm list"
echo
echo "sudoer check passed"

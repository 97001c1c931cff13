# Sourced by scripts/install.sh and scripts/test.sh: installs what banger
# drives on Debian 12 (apt packages, vhost-device-vsock). Needs root.
# Expects $CACHE (a directory for built tools).

BANGER_APT_PACKAGES=(iproute2 util-linux e2fsprogs git openssh-client zstd ca-certificates
  qemu-system-x86 qemu-utils mmdebstrap dpkg iptables)

banger_install_deps() {
  local missing=() p
  for p in "${BANGER_APT_PACKAGES[@]}" "$@"; do
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
  local vdv_version=0.3.0
  VDV_ROOT="$CACHE/tools/vhost-device-vsock-$vdv_version"
  if [ ! -x "$VDV_ROOT/bin/vhost-device-vsock" ]; then
    echo "== cargo install vhost-device-vsock $vdv_version"
    cargo install --locked --quiet --root "$VDV_ROOT" vhost-device-vsock@"$vdv_version"
  fi
  export PATH="$VDV_ROOT/bin:$PATH"
}

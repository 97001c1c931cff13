# Sourced by scripts/install.sh and scripts/test.sh: installs what banger
# drives on Debian 12 (apt packages) and verifies every tool by running it
# afterwards. Needs root.

BANGER_APT_PACKAGES=(iproute2 util-linux e2fsprogs git openssh-client zstd ca-certificates curl
  qemu-system-x86 qemu-utils mmdebstrap dpkg iptables
  # building banger: OpenSSL for HTTPS to registries (image pull)
  libssl-dev pkg-config)

# tool, the package that provides it, and an argument that makes it print
# its version. Checked after installing: one package's install can remove
# another's (qemu-system-x86 from bookworm removes a backported qemu-utils).
BANGER_TOOLS=(
  "qemu-system-x86_64 qemu-system-x86 --version"
  "qemu-img qemu-utils --version"
  "mkfs.ext4 e2fsprogs -V"
  "mmdebstrap mmdebstrap --version"
  "iptables iptables --version"
  "ip iproute2 -V"
  "git git --version"
  "ssh openssh-client -V"
  "ssh-keygen openssh-client -?"
  "zstd zstd --version"
  "curl curl --version"
  "dpkg-deb dpkg --version"
  "debugfs e2fsprogs -V"
  "pkg-config pkg-config --version"
)

# Prints the packages whose tool does not run.
banger_broken_tools() {
  local entry tool pkg arg
  for entry in "${BANGER_TOOLS[@]}"; do
    read -r tool pkg arg <<<"$entry"
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "$pkg"
      continue
    fi
    # ssh-keygen -? exits 1 after printing its usage: running is what counts.
    "$tool" "$arg" >/dev/null 2>&1 || [ "$tool" = ssh-keygen ] || echo "$pkg"
  done | sort -u
}

banger_apt_install() {
  echo "== installing: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

banger_install_deps() {
  local missing=() p
  for p in "${BANGER_APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    banger_apt_install "${missing[@]}"
  fi
  local broken
  broken=$(banger_broken_tools)
  if [ -n "$broken" ]; then
    # shellcheck disable=SC2086
    banger_apt_install $broken
    broken=$(banger_broken_tools)
    if [ -n "$broken" ]; then
      local entry tool pkg arg
      for entry in "${BANGER_TOOLS[@]}"; do
        read -r tool pkg arg <<<"$entry"
        if grep -qx "$pkg" <<<"$broken"; then
          echo "deps: $tool (package $pkg) is still missing or does not run after installing it" >&2
        fi
      done
      return 1
    fi
  fi
  # `banger kernel pull` uses apt-get download: the package lists must exist.
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    echo "== apt-get update (no package lists yet)"
    apt-get update -qq
  fi
}

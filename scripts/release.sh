#!/usr/bin/env bash
# Builds a signed banger release:
#
#   scripts/release.sh --version v0.2.0 --key ~/.config/banger-release/release-key.pem --out dist/
#
# writes, under <out>/<version>/:
#   banger-<version>-x86_64-linux.tar.zst   bin/{banger,bangerd,bangerd-root},
#                                           share/ (completions, docs, long help)
#   SHA256SUMS                              sha256 of every file beside it
#   SHA256SUMS.sig                          ECDSA P-256 (SHA-256) signature of
#                                           SHA256SUMS, DER, base64
#   kernel-debian-cloud.tar.zst, image-debian-bookworm.tar.zst, catalog.toml
#                                           with --kernel-dir (a kernel directory
#                                           of banger's state, e.g.
#                                           ~/.local/state/banger/kernels/debian-cloud)
#                                           and --image-bundle (`banger image export
#                                           debian-bookworm -o F`): what a host that
#                                           cannot build them (no apt-get, dpkg-deb,
#                                           mmdebstrap) boots; made by the same build
# and <out>/latest (the version), unless --not-latest. Publish <out> as the
# `[update] url` of `banger update` and `scripts/install.sh --release`.
#
# The binaries are `cargo build --release` (glibc, linked dynamically: they
# need glibc ≥ the build host's — 2.36 when built on Debian 12; the guest
# agent inside bangerd is static) unless --bin-dir gives built ones. Each is
# stamped with the version (objcopy writes it into the `.banger_release`
# section; one that already says the version is left as is) and checked to
# say it. --key is the release key's private half (PEM, P-256); its public
# half must be the one built into banger (release/banger-release.pub.pem),
# or banger update refuses the release. ZSTD_LEVEL (default 19) sets the
# compression.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION= KEY= OUT=dist BIN_DIR= LATEST=1 KERNEL_DIR= IMAGE_BUNDLE=
while [ $# -gt 0 ]; do
  case "$1" in
    --version) VERSION=$2; shift ;;
    --key) KEY=$2; shift ;;
    --out) OUT=$2; shift ;;
    --bin-dir) BIN_DIR=$2; shift ;;
    --not-latest) LATEST=0 ;;
    --kernel-dir) KERNEL_DIR=$2; shift ;;
    --image-bundle) IMAGE_BUNDLE=$2; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "scripts/release.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "scripts/release.sh: $*" >&2; exit 1; }
[[ "$VERSION" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "--version vMAJOR.MINOR.PATCH is required (got '${VERSION}')"
[ -n "$KEY" ] && [ -r "$KEY" ] || die "--key <private key PEM> is required and must be readable"
if [ -n "$KERNEL_DIR$IMAGE_BUNDLE" ]; then
  [ -f "$KERNEL_DIR/vmlinux" ] || die "--kernel-dir needs a kernel directory with vmlinux (and --image-bundle with it)"
  [ -f "$IMAGE_BUNDLE" ] || die "--image-bundle needs a file from banger image export (and --kernel-dir with it)"
fi
for t in objcopy zstd sha256sum openssl tar; do
  command -v "$t" >/dev/null || die "$t is needed (apt-get install binutils zstd coreutils openssl tar)"
done

if [ -z "$BIN_DIR" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
  cargo build --release --locked --quiet
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}

NAME="banger-$VERSION-x86_64-linux"
DEST="$OUT/$VERSION"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TREE="$WORK/$NAME"
mkdir -p "$TREE/bin" "$TREE/share/doc/banger" "$TREE/share/bash-completion/completions" \
  "$TREE/share/zsh/site-functions" "$TREE/share/fish/vendor_completions.d"

printf '%s' "$VERSION" > "$WORK/stamp"
truncate -s 64 "$WORK/stamp"
for b in banger bangerd bangerd-root; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing"
  if [ "$("$BIN_DIR/$b" --version | awk '{print $2}')" = "$VERSION" ]; then
    install -m 0755 "$BIN_DIR/$b" "$TREE/bin/$b"
  else
    objcopy --update-section .banger_release="$WORK/stamp" "$BIN_DIR/$b" "$TREE/bin/$b"
    chmod 0755 "$TREE/bin/$b"
  fi
  said=$("$TREE/bin/$b" --version | awk '{print $2}')
  [ "$said" = "$VERSION" ] || die "$b says '$said' after stamping, not $VERSION"
done

B="$TREE/bin/banger"
"$B" completion bash > "$TREE/share/bash-completion/completions/banger"
"$B" completion zsh > "$TREE/share/zsh/site-functions/_banger"
"$B" completion fish > "$TREE/share/fish/vendor_completions.d/banger.fish"
{
  "$B" --help
  for c in $("$B" --help | awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1} on && /^$/{exit}'); do
    [ "$c" = help ] && continue
    printf '\n\n==== banger %s ====\n\n' "$c"
    "$B" "$c" --help
  done
} > "$TREE/share/doc/banger/banger-help.txt"
cp README.md "$TREE/share/doc/banger/README.md"
[ -f LICENSE ] && cp LICENSE "$TREE/share/doc/banger/LICENSE"

mkdir -p "$DEST"
TARBALL="$DEST/$NAME.tar.zst"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
  -C "$WORK" -cf - "$NAME" | zstd -q -T0 "-${ZSTD_LEVEL:-19}" -o "$TARBALL.part"
mv "$TARBALL.part" "$TARBALL"

if [ -n "$KERNEL_DIR" ]; then
  parts=(vmlinux)
  for p in initrd.img modules; do [ -e "$KERNEL_DIR/$p" ] && parts+=("$p"); done
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -C "$KERNEL_DIR" -cf - "${parts[@]}" \
    | zstd -q -T0 "-${ZSTD_LEVEL:-19}" -o "$DEST/kernel-debian-cloud.tar.zst"
  cp "$IMAGE_BUNDLE" "$DEST/image-debian-bookworm.tar.zst"
  entry() { # entry <kind> <name> <file> <description> [kernel]
    printf '[[%s]]\nname = "%s"\ndescription = "%s"\nurl = "%s"\nsha256 = "%s"\nsize = %s\n' \
      "$1" "$2" "$4" "$3" "$(sha256sum "$DEST/$3" | awk '{print $1}')" "$(stat -c %s "$DEST/$3")"
    [ -n "${5:-}" ] && printf 'kernel = "%s"\n' "$5"
    echo
  }
  {
    entry kernel debian-cloud kernel-debian-cloud.tar.zst "Debian 12's cloud kernel with banger $VERSION's initramfs"
    entry image debian-bookworm image-debian-bookworm.tar.zst "Debian 12 with systemd, OpenSSH and banger $VERSION's agent" debian-cloud
  } > "$DEST/catalog.toml"
fi

( cd "$DEST" && find . -maxdepth 1 -type f ! -name 'SHA256SUMS*' -printf '%f\n' | sort | xargs sha256sum > SHA256SUMS )
openssl dgst -sha256 -sign "$KEY" "$DEST/SHA256SUMS" | base64 -w0 > "$DEST/SHA256SUMS.sig"
# Checked against the key's public half before anything is published.
openssl ec -in "$KEY" -pubout -out "$WORK/pub.pem" 2>/dev/null
base64 -d "$DEST/SHA256SUMS.sig" > "$WORK/sig.der"
openssl dgst -sha256 -verify "$WORK/pub.pem" -signature "$WORK/sig.der" "$DEST/SHA256SUMS" >/dev/null \
  || die "the signature does not verify with $KEY's public half"
if ! cmp -s "$WORK/pub.pem" release/banger-release.pub.pem; then
  echo "scripts/release.sh: note: $KEY is not banger's release key (release/banger-release.pub.pem); only a build that trusts it (the test suite's) installs this release" >&2
fi
[ "$LATEST" = 1 ] && printf '%s\n' "$VERSION" > "$OUT/latest"
echo "$DEST:"
( cd "$DEST" && ls -l --time-style=+ | tail -n +2 | awk '{print "  " $5 "  " $NF}' )

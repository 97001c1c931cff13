#!/usr/bin/env bash
# Image build benchmark: banger against plain mmdebstrap + mkfs.ext4 -d of the
# same package set, in the same run. Needs root (mmdebstrap, bangerd-root).
#
#   bench/image-build.sh            release binaries are built first
#
# Prints wall times for:
#   baseline   mmdebstrap --variant=minbase --include=<pkgs> bookworm dir && mkfs.ext4 -d
#   cold       banger image build --rebuild with an empty package cache
#   warm       banger image build --rebuild (downloaded packages reused)
#   cached     banger image build of an unchanged recipe in a fresh state tree
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /var/tmp/banger-bench.XXXX)
trap 'rm -rf "$WORK"; [ -d /var/cache/banger-root/debs.bench-aside ] && { rm -rf /var/cache/banger-root/debs; mv /var/cache/banger-root/debs.bench-aside /var/cache/banger-root/debs; }' EXIT

PKGS=$(cargo run --release --quiet --example recipe_packages debian-bookworm)

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

export XDG_CONFIG_HOME=$WORK/config XDG_STATE_HOME=$WORK/state XDG_CACHE_HOME=$WORK/cache XDG_RUNTIME_DIR=$WORK/run BANGER_SYSTEM=0
"$BIN/banger" kernel pull debian-cloud >/dev/null

baseline_once() {
  local t0 t1 size
  t0=$(now)
  mmdebstrap --quiet --variant=minbase --include="$PKGS" bookworm "$WORK/base-root" >/dev/null 2>&1
  size=$(du -sm "$WORK/base-root" | cut -f1)
  mkfs.ext4 -F -q -d "$WORK/base-root" "$WORK/base.ext4" "$((size * 3 / 2 + 512))M" >/dev/null
  t1=$(now); rm -rf "$WORK/base-root" "$WORK/base.ext4"
  secs "$t0" "$t1"
}
banger_once() {
  local t0 t1
  t0=$(now); "$BIN/banger" image build debian-bookworm --rebuild >/dev/null 2>&1; t1=$(now)
  secs "$t0" "$t1"
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Cold: banger with an empty package cache (both download everything).
if [ -d /var/cache/banger-root/debs ]; then mv /var/cache/banger-root/debs /var/cache/banger-root/debs.bench-aside; fi
cold=$(banger_once)
rm -rf /var/cache/banger-root/debs
if [ -d /var/cache/banger-root/debs.bench-aside ]; then mv /var/cache/banger-root/debs.bench-aside /var/cache/banger-root/debs; fi

# Alternating runs: one sample is noise on this machine (an mmdebstrap run
# varies by ±30 % from one run to the next).
RUNS=${BANGER_BENCH_RUNS:-3}
bs=() ws=()
for _ in $(seq "$RUNS"); do
  bs+=("$(baseline_once)")
  ws+=("$(banger_once)")
done
baseline=$(echo "${bs[*]}" | median)
warm=$(echo "${ws[*]}" | median)
echo "baseline runs: ${bs[*]}"
echo "banger runs:   ${ws[*]}"
"$BIN/banger" image delete debian-bookworm >/dev/null
t0=$(now); "$BIN/banger" image build debian-bookworm >/dev/null 2>&1; t1=$(now); cached=$(secs "$t0" "$t1")
"$BIN/banger" daemon stop >/dev/null

printf '%-58s %8.1f s\n' "baseline: mmdebstrap + mkfs.ext4 -d, median" "$baseline"
printf '%-58s %8.1f s  (%.2fx)\n' "banger image build --rebuild, empty package cache" "$cold" "$(echo "$cold / $baseline" | bc -l)"
printf '%-58s %8.1f s  (%.2fx)\n' "banger image build --rebuild, packages cached, median" "$warm" "$(echo "$warm / $baseline" | bc -l)"
printf '%-58s %8.1f s\n' "banger image build, build cache hit (fresh state)" "$cached"

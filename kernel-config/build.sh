#!/usr/bin/env bash
# Builds the husk guest kernel from Debian's linux-source-6.1: allnoconfig plus
# the fragments in fragments/, patches in patches/, checked, into an ELF
# vmlinux with the PVH entry note. The result is cached outside the repository,
# keyed by the source package version and a hash of fragments, patches and
# this script, so a second run is instant.
#
#   kernel-config/build.sh            build (or reuse) and print the vmlinux path
#   HUSK_CACHE_DIR=/path ...          cache location (default ~/.cache/husk)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HUSK_CACHE_DIR:-$HOME/.cache/husk}
src_tar=/usr/src/linux-source-6.1.tar.xz

if [ ! -f "$src_tar" ]; then
    echo "kernel-config/build.sh: $src_tar missing: apt-get install linux-source-6.1" >&2
    exit 1
fi
version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
hash=$( (cat "$here"/fragments/*.conf; cat "$here"/patches/*.patch 2>/dev/null || true; cat "$0") \
    | sha256sum | cut -c1-16)
out="$cache/kernel/$version-$hash"
if [ -f "$out/vmlinux" ]; then
    echo "$out/vmlinux"
    exit 0
fi

work="$cache/kernel/build-$hash"
rm -rf "$work"
mkdir -p "$work"
log="$work/build.log"
echo "building guest kernel $version ($hash) in $work; log: $log" >&2
tar -C "$work" -xf "$src_tar"
tree="$work/linux-source-6.1"
for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    patch -d "$tree" -p1 --quiet < "$p"
done
cat "$here"/fragments/*.conf > "$work/husk.config"
make -C "$tree" -s KCONFIG_ALLCONFIG="$work/husk.config" allnoconfig >>"$log" 2>&1

# Every option the fragments ask for must have survived.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            opt=${line%%=*}
            if ! grep -qx -- "$line" "$tree/.config"; then
                echo "kernel config: $line did not stick (got: $(grep -E "^(# )?$opt[= ]" "$tree/.config" || echo unset))" >&2
                missing=1
            fi ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            if grep -q -- "^$opt=" "$tree/.config"; then
                echo "kernel config: $opt must be off but is $(grep "^$opt=" "$tree/.config")" >&2
                missing=1
            fi ;;
    esac
done < "$work/husk.config"
if [ "$missing" -ne 0 ]; then
    echo "kernel config check failed" >&2
    exit 1
fi

make -C "$tree" -j"$(nproc)" vmlinux >>"$log" 2>&1 || {
    tail -30 "$log" >&2
    echo "kernel build failed; see $log" >&2
    exit 1
}
if ! readelf -n "$tree/vmlinux" | grep -q 'Xen'; then
    echo "vmlinux has no PVH (Xen) note" >&2
    exit 1
fi
mkdir -p "$out.tmp"
cp "$tree/vmlinux" "$tree/.config" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
echo "$out/vmlinux"

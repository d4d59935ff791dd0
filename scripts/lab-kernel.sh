#!/usr/bin/env bash
# Fetches and unpacks the kernel of the nested KVM lab's L1 "KVM host":
# Debian's own linux-image package (the version linux-image-amd64 depends
# on), never installed, only unpacked with its modules and a modules.dep.
# Cached outside the repository, keyed by the package version, so a second
# run is instant. Prints the directory holding vmlinuz and lib/modules.
#
#   scripts/lab-kernel.sh             fetch (or reuse) and print the directory
#   HUSK_CACHE_DIR=/path ...          cache location (default ~/.cache/husk)
set -euo pipefail

cache=${HUSK_CACHE_DIR:-$HOME/.cache/husk}
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$pkg" ]; then
    echo "scripts/lab-kernel.sh: cannot tell which linux-image package linux-image-amd64 depends on (apt-get update?)" >&2
    exit 1
fi
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
release=${pkg#linux-image-}
out="$cache/lab/$pkg-$version"
if [ -f "$out/vmlinuz" ] && [ -f "$out/lib/modules/$release/modules.dep" ]; then
    echo "$out"
    exit 0
fi

work="$cache/lab/fetch-$pkg-$version"
rm -rf "$work"
mkdir -p "$work"
echo "fetching the lab kernel $pkg $version into $out" >&2
# apt's sandbox user cannot write into root's cache: fetch unsandboxed.
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$version" >/dev/null)
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/root"
depmod -b "$work/root" "$release"
mkdir -p "$out.tmp"
mv "$work/root/lib" "$out.tmp/lib"
cp "$work/root/boot/vmlinuz-$release" "$out.tmp/vmlinuz"
echo "$release" > "$out.tmp/release"
rm -rf "$out" "$work"
mv "$out.tmp" "$out"
echo "$out"

#!/usr/bin/env bash
# Builds and installs husk on this machine: the binaries in $PREFIX/bin,
# the guest kernel and an initramfs holding the static guest agent in
# $PREFIX/share/husk, and /etc/husk/config.toml naming them (an existing
# config file is left alone). Needs root. PREFIX defaults to /usr/local.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}

scripts/setup.sh
kernel=$(kernel-config/build.sh)
cargo build --release -p shim -p vmm >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p guest-agent \
    --target x86_64-unknown-linux-gnu --target-dir target/agent >&2
agent=target/agent/x86_64-unknown-linux-gnu/release/husk-agent

# The initramfs: the agent as /init and the mount points it needs.
work=$(mktemp -d /tmp/husk-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"/{dev,proc,sys,run,tmp}
mknod -m 600 "$work/root/dev/console" c 5 1
install -m 755 "$agent" "$work/root/init"
(cd "$work/root" && find . | sort | cpio -o -H newc --quiet > "$work/initramfs.cpio")

install -d "$prefix/bin" "$prefix/share/husk"
install -m 755 target/release/husk target/release/husk-vmm \
    target/release/containerd-shim-husk-v2 "$prefix/bin/"
install -m 644 "$kernel" "$prefix/share/husk/vmlinux"
install -m 644 "$work/initramfs.cpio" "$prefix/share/husk/initramfs.cpio"
if [ ! -e /etc/husk/config.toml ]; then
    install -d /etc/husk
    cat > /etc/husk/config.toml <<TOML
# husk configuration (see README.md, "The husk CLI").
kernel = "$prefix/share/husk/vmlinux"
initramfs = "$prefix/share/husk/initramfs.cpio"
TOML
fi
echo "installed husk in $prefix (configuration: /etc/husk/config.toml)" >&2

#!/usr/bin/env bash
# Installs what building and testing husk needs from Debian's packages.
# Safe to run repeatedly: only missing packages are installed.
set -euo pipefail

pkgs=(
    build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils  # guest kernel build
    linux-source-6.1                                                   # guest kernel source
    qemu-system-x86                                                    # TCG backend, peer VMM
    busybox-static                                                     # test guest userland
    iproute2                                                           # test network namespaces and TAPs
    e2fsprogs erofs-utils                                              # container root file system images
    libseccomp-dev pkg-config                                          # seccomp in the static agent and virtiofsd
    libcap-ng-dev                                                      # virtiofsd's build
    podman runc crun containerd                                        # real OCI clients and peer runtimes
    containernetworking-plugins                                        # CNI plugins for containerd's CRI
    protobuf-compiler                                                  # CRI test client (k8s-cri's build)
    iperf3                                                             # network benchmark
    fio                                                                # file system benchmark
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: husk needs a Rust toolchain (see rust-toolchain.toml)" >&2
    exit 1
fi
# vsock for Linux guests under QEMU TCG: rust-vmm's vhost-user daemon speaks
# the same hybrid Unix-socket convention as husk-vmm.
if ! command -v vhost-device-vsock >/dev/null && [ ! -x "$HOME/.cargo/bin/vhost-device-vsock" ]; then
    echo "installing vhost-device-vsock from crates.io" >&2
    cargo install --quiet --locked vhost-device-vsock --version 0.3.0
fi

# virtio-fs for Linux guests under QEMU: the upstream vhost-user file
# system daemon.
if ! command -v virtiofsd >/dev/null && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    echo "installing virtiofsd from crates.io" >&2
    cargo install --quiet --locked virtiofsd --version 1.14.0
fi

if [ ! -c /dev/kvm ]; then
    echo "warning: /dev/kvm is missing: husk-vmm cannot run VMs on this host" >&2
fi

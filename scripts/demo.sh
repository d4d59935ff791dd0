#!/usr/bin/env bash
# Sets everything up and boots husk microVMs on this machine:
#  1. husk-vmm boots the project's test guest and shows what it was handed;
#  2. the husk guest kernel boots a busybox userland that says hello: with
#     husk-vmm where KVM is hardware-backed, under QEMU TCG on PVM hosts
#     (where stock Linux guests cannot run at speed).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release -p vmm -p integration-tests >&2
kernel=$(kernel-config/build.sh)
work=$(mktemp -d /tmp/husk-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

guest=$(ls -t target/release/build/integration-tests-*/out/husk-test-guest.elf | head -1)
cat > "$work/test-guest.json" <<JSON
{"boot-source": {"kernel_image_path": "$guest", "boot_args": "console=ttyS0 action=reset"},
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}
JSON
echo "== husk-vmm: test guest (2 vCPUs, 64 MiB)"
target/release/husk-vmm --no-api --config-file "$work/test-guest.json"
echo "== exit status $?"

mkdir -p "$work/root/bin"
cp /bin/busybox "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/sh"
cat > "$work/root/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc 2>/dev/null || { mkdir /proc; mount -t proc proc /proc; }
echo
echo "hello from a husk microVM: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) vCPU(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
reboot -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet > "$work/initramfs.cpio")

if [ -d /sys/module/kvm_pvm ]; then
    echo "== host KVM is PVM: booting the husk guest kernel under QEMU TCG"
    qemu-system-x86_64 -M microvm,acpi=off -accel tcg -cpu max -m 128 -smp 2 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -kernel "$kernel" -initrd "$work/initramfs.cpio" \
        -append "console=ttyS0 reboot=t panic=-1 quiet"
else
    echo "== booting the husk guest kernel with husk-vmm"
    cat > "$work/linux.json" <<JSON
{"boot-source": {"kernel_image_path": "$kernel", "initrd_path": "$work/initramfs.cpio",
                 "boot_args": "console=ttyS0 reboot=k panic=-1 quiet"},
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 128}}
JSON
    target/release/husk-vmm --no-api --config-file "$work/linux.json"
fi
echo "== next: containers. The guest agent already serves its protocol over vsock (tests/tests/agent.rs); running OCI containers through it, the husk CLI and the containerd shim are not implemented yet"

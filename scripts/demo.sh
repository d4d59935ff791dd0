#!/usr/bin/env bash
# Sets everything up (scripts/install.sh) and runs a container in a husk
# microVM with `husk run`, on a busybox image built from Debian's
# busybox-static: QEMU runs the VM where KVM cannot run stock kernels at
# speed (PVM hosts), husk-vmm where it is hardware-backed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh
husk=${PREFIX:-/usr/local}/bin/husk
work=$(mktemp -d /tmp/husk-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The bundled default image: busybox with every applet.
mkdir -p "$work/bundle/rootfs"/{bin,dev,proc,sys,tmp,etc,root}
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/bundle/rootfs/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$work/bundle/rootfs/etc/passwd"
cat > "$work/bundle/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "hostname": "husk-demo",
  "process": {
    "terminal": false, "cwd": "/", "user": {"uid": 0, "gid": 0},
    "env": ["PATH=/bin"],
    "args": ["sh", "-c", "echo \"hello from $(hostname), a container in a husk microVM: $(uname -sr), $(nproc) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB\""]
  },
  "root": {"path": "rootfs", "readonly": true},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
  ],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
}
JSON
echo "== husk run --bundle $work/bundle demo-$$" >&2
"$husk" run --bundle "$work/bundle" "demo-$$"
echo "== exit status $?" >&2

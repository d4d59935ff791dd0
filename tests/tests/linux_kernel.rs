//! The husk guest kernel (kernel-config/) boots under QEMU TCG with virtio-mmio
//! devices bound, the filesystems, cgroup v2 controllers and namespaces
//! containers need, and SMP.

use std::time::Duration;

use integration_tests::host::{self, TempDir};
use integration_tests::initramfs;
use integration_tests::linux::{self, QemuBoot};

const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "LINUX uname=$(uname -r)"
echo "LINUX cpus=$(grep -c ^processor /proc/cpuinfo)"
for d in /sys/bus/virtio/devices/*; do
    echo "LINUX virtio id=$(cat $d/device) driver=$(basename "$(readlink $d/driver)")"
done
echo "LINUX filesystems=$(awk '{print $NF}' /proc/filesystems | tr '\n' ' ')"
echo "LINUX cgroup=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "LINUX ns=$(ls /proc/self/ns | tr '\n' ' ')"
echo "LINUX vda=$(head -c 12 /dev/vda)"
echo "LINUX seccomp=$(grep -ci seccomp /proc/self/status)"
zcat /proc/config.gz | grep -E '^CONFIG_(VIRTIO_VSOCKETS|PCI|MODULES)=' | sed 's/^/LINUX config /'
echo LINUX-DONE
reboot -f
"#;

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("LINUX {key}=")))
        .unwrap_or_else(|| panic!("guest did not report {key}:\n{out}"))
}

#[test]
fn guest_kernel_boots_under_qemu_tcg() {
    host::announce(host::require_kvm());
    let kernel = linux::kernel();
    let dir = TempDir::new("linux");
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs::busybox_initramfs(INIT)).unwrap();
    let disk = dir.join("disk.img");
    let mut image = b"husk-disk-ok".to_vec();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, &image).unwrap();

    let out = linux::qemu_tcg(
        &QemuBoot {
            kernel: &kernel,
            initrd: &initrd,
            append: "quiet",
            smp: 2,
            mem_mib: 256,
            extra: vec![
                "-drive".into(),
                format!("id=d0,file={},format=raw,if=none", disk.display()),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
                "-netdev".into(),
                "user,id=n0,restrict=on".into(),
                "-device".into(),
                "virtio-net-device,netdev=n0".into(),
                "-object".into(),
                "rng-random,id=rng0,filename=/dev/urandom".into(),
                "-device".into(),
                "virtio-rng-device,rng=rng0".into(),
                "-device".into(),
                "virtio-serial-device".into(),
            ],
        },
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("LINUX-DONE"),
        "guest did not finish:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(field(&text, "uname").ends_with("-husk"), "{text}");
    assert_eq!(field(&text, "cpus"), "2");
    // virtio IDs: 1 net, 2 block, 3 console, 4 rng; each bound to its driver.
    for (id, driver) in [
        ("0x0001", "virtio_net"),
        ("0x0002", "virtio_blk"),
        ("0x0003", "virtio_console"),
        ("0x0004", "virtio_rng"),
    ] {
        let line = format!("LINUX virtio id={id} driver={driver}");
        assert!(text.contains(&line), "missing {line:?}:\n{text}");
    }
    let fs = field(&text, "filesystems");
    for want in [
        "ext4", "erofs", "overlay", "tmpfs", "devtmpfs", "proc", "sysfs", "cgroup2", "fuse",
        "virtiofs",
    ] {
        assert!(
            fs.split_whitespace().any(|f| f == want),
            "filesystem {want} missing: {fs}"
        );
    }
    let cg = field(&text, "cgroup");
    for want in ["cpuset", "cpu", "io", "memory", "pids"] {
        assert!(
            cg.split_whitespace().any(|c| c == want),
            "cgroup controller {want} missing: {cg}"
        );
    }
    let ns = field(&text, "ns");
    for want in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        assert!(
            ns.split_whitespace().any(|n| n == want),
            "namespace {want} missing: {ns}"
        );
    }
    assert_eq!(field(&text, "vda"), "husk-disk-ok");
    assert_eq!(field(&text, "seccomp"), "2");
    assert!(
        text.contains("LINUX config CONFIG_VIRTIO_VSOCKETS=y"),
        "{text}"
    );
    assert!(
        !text.contains("CONFIG_PCI=y") && !text.contains("CONFIG_MODULES=y"),
        "{text}"
    );
}

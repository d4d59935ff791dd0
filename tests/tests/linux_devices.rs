//! Linux's own drivers against husk-vmm's devices: the husk guest kernel
//! with a busybox initramfs (and `husk-guest-tool`) on husk-vmm, configured
//! over its API, moving real data through virtio-blk, virtio-net, vsock and
//! virtio-fs and checking every byte; rng, the serial console, SMP, and the
//! exit status of reboot, power-off and panic.
//!
//! This needs a KVM that runs Linux. On a PVM host husk-vmm cannot, so each
//! test says so and returns: there these tests run in the nested KVM lab
//! (tests/tests/lab.rs runs this binary in it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use guest_tool::{Pattern, answer, fnv64, initiate};
use integration_tests::host::{self, HostKvm, TempDir};
use integration_tests::linux::{self, HuskLinux, report};
use integration_tests::netns::TapNamespace;
use integration_tests::vmm::Virtiofsd;

const T: Duration = Duration::from_secs(300);
/// Bound of a long transfer: one direction of the network test, the
/// virtio-fs file test.
const TRANSFER: Duration = Duration::from_secs(500);
const MIB: u64 = 1 << 20;

/// True where husk-vmm can boot Linux here.
fn linux_on_husk_vmm() -> bool {
    match host::require_kvm() {
        HostKvm::Hardware => true,
        HostKvm::Pvm => {
            eprintln!(
                "*** PVM host: husk-vmm cannot run Linux on this KVM; these tests run in the \
                 nested KVM lab (tests/tests/lab.rs) ***"
            );
            false
        }
    }
}

fn pattern_file(path: &Path, seed: u64, len: u64) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    Pattern::new(seed).fill(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn drives_carry_data_buffered_and_direct_and_read_only_is_refused() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-blk");
    let data = pattern_file(&dir.join("data.img"), 1, 64 * MIB);
    std::fs::write(dir.join("out.img"), vec![0u8; 64 * MIB as usize]).unwrap();
    let ro = pattern_file(&dir.join("ro.img"), 3, MIB);
    let guest = HuskLinux::default()
        .drive("data", &dir.join("data.img"), false)
        .drive("out", &dir.join("out.img"), false)
        .drive("ro", &dir.join("ro.img"), true);
    let vm = guest.start(
        &dir,
        r#"for d in vda vdb vdc; do
    echo "BLK $d serial=$(cat /sys/block/$d/serial) ro=$(cat /sys/block/$d/ro) sectors=$(cat /sys/block/$d/size)"
done
echo "BLK read=$(sha256sum /dev/vda | cut -d' ' -f1)"
echo "BLK direct-read=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/vda of=/dev/vdb bs=1M count=32 oflag=direct 2>/dev/null && echo "BLK direct-write=ok"
dd if=/dev/vda of=/dev/vdb bs=1M skip=32 seek=32 count=32 conv=fsync,notrunc 2>/dev/null && echo "BLK buffered-write=ok"
echo 3 > /proc/sys/vm/drop_caches
echo "BLK reread=$(sha256sum /dev/vdb | cut -d' ' -f1)"
if dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>/dev/null; then
    echo "BLK ro-write=accepted"
else
    echo "BLK ro-write=refused"
fi
echo BLK-DONE
reboot -f
"#,
    );
    let out = vm.wait_console("BLK-DONE", T);
    let end = vm.wait(T);
    assert_eq!(end.status.code(), Some(0), "{out}");
    for (dev, id, ro, sectors) in [
        ("vda", "data", 0, 131072),
        ("vdb", "out", 0, 131072),
        ("vdc", "ro", 1, 2048),
    ] {
        let line = format!("BLK {dev} serial={id} ro={ro} sectors={sectors}");
        assert!(out.contains(&line), "missing {line:?}:\n{out}");
    }
    let want = sha256(&data);
    for key in ["read", "direct-read", "reread"] {
        assert_eq!(
            report(&out, &format!("BLK {key}=")),
            Some(want.as_str()),
            "{key}:\n{out}"
        );
    }
    assert_eq!(report(&out, "BLK direct-write="), Some("ok"), "{out}");
    assert_eq!(report(&out, "BLK buffered-write="), Some("ok"), "{out}");
    assert_eq!(report(&out, "BLK ro-write="), Some("refused"), "{out}");
    assert!(
        std::fs::read(dir.join("out.img")).unwrap() == data,
        "the copy on the host differs"
    );
    assert!(
        std::fs::read(dir.join("ro.img")).unwrap() == ro,
        "the read-only drive changed"
    );
}

#[test]
fn a_flushed_write_survives_kill_9_of_husk_vmm() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-flush");
    let src = pattern_file(&dir.join("src.img"), 11, 8 * MIB);
    std::fs::write(dir.join("dst.img"), vec![0u8; 8 * MIB as usize]).unwrap();
    let guest = HuskLinux::default()
        .drive("src", &dir.join("src.img"), true)
        .drive("dst", &dir.join("dst.img"), false);
    let vm = guest.start(
        &dir,
        "dd if=/dev/vda of=/dev/vdb bs=1M conv=fsync 2>/dev/null && echo FLUSHED\nsleep 1000\n",
    );
    vm.wait_console("FLUSHED", T);
    // SAFETY: kill(2) of our own child; no memory is involved.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGKILL) }, 0);
    let end = vm.wait(T);
    assert_eq!(end.status.code(), None, "husk-vmm was killed");
    assert!(
        std::fs::read(dir.join("dst.img")).unwrap() == src,
        "a write the guest saw flushed did not reach the host file"
    );
}

#[test]
fn the_network_carries_ping_and_64_mib_each_way() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-net");
    let net = TapNamespace::new("lnet");
    let tool = linux::guest_tool();
    // The host's end: answers the guest's exchange.
    // The host's ends are bounded in time: a stalled transfer fails the
    // test, naming its direction, instead of hanging it.
    // Each direction moves 128 MiB in all, which takes minutes in the
    // nested lab under load.
    let bounded = || {
        let mut c = net.command(Path::new("timeout"));
        c.arg(TRANSFER.as_secs().to_string()).arg(&tool);
        c
    };
    let mut host_listener = bounded()
        .args(["tcp-listen", &format!("{}:5001", net.host_ip), "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("host tcp-listen");
    let mut first = String::new();
    BufReader::new(host_listener.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("listening"), "{first}");
    let guest = HuskLinux {
        netns: Some(net.ns.clone()),
        ..HuskLinux::default()
    }
    .nic("eth0", &net.tap, "06:00:0a:00:00:02");
    let bytes = (64 * MIB).to_string();
    let started = std::time::Instant::now();
    let vm = guest.start(
        &dir,
        &format!(
            "ip link set eth0 up
ip addr add {guest}/24 dev eth0
ping -c 3 -W 5 {host} >/dev/null && echo \"NET ping=ok\"
husk-guest-tool tcp-connect {host}:5001 1 {bytes} {bytes}
husk-guest-tool tcp-listen 0.0.0.0:5002 1
echo NET-DONE
reboot -f
",
            guest = net.guest_ip,
            host = net.host_ip,
        ),
    );
    vm.wait_console("tcp-listen: listening", TRANSFER);
    eprintln!(
        "guest to host took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let to_guest = bounded()
        .args([
            "tcp-connect",
            &format!("{}:5002", net.guest_ip),
            "1",
            &bytes,
            &bytes,
        ])
        .output()
        .expect("host tcp-connect");
    eprintln!(
        "host to guest took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let out = vm.wait_console("NET-DONE", T);
    assert_eq!(report(&out, "NET ping="), Some("ok"), "{out}");
    assert!(out.contains("tcp-connect: ok"), "guest to host:\n{out}");
    assert!(out.contains("tcp-listen: ok"), "host to guest:\n{out}");
    assert!(
        to_guest.status.success(),
        "host to guest ({}): {}{}",
        to_guest.status,
        String::from_utf8_lossy(&to_guest.stdout),
        String::from_utf8_lossy(&to_guest.stderr)
    );
    let listened = host_listener.wait_with_output().unwrap();
    assert!(
        listened.status.success(),
        "{}",
        String::from_utf8_lossy(&listened.stdout)
    );
    assert_eq!(vm.wait(T).status.code(), Some(0));
}

/// A dozen lines of `console` from the first that starts with `from`.
fn around(console: &str, from: &str) -> String {
    let all: Vec<&str> = console.lines().collect();
    let i = all.iter().position(|l| l.starts_with(from)).unwrap_or(0);
    all[i..(i + 12).min(all.len())].join("\n")
}

/// Opens a host-initiated vsock connection to guest port `port` through
/// the hybrid socket `uds`.
fn vsock_connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).expect("connect the vsock socket");
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "no answer to CONNECT");
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    s
}

fn exchange(mut s: UnixStream, bytes: u64, seed: u64) -> Result<(), String> {
    initiate(
        &mut s,
        |s| s.shutdown(std::net::Shutdown::Write),
        bytes,
        bytes,
        seed,
    )
}

#[test]
fn vsock_streams_100_mib_each_way_with_eof_and_64_at_once() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-vsock");
    let uds = dir.join("v.sock");
    // Guest-initiated connections to host port 6000 arrive here.
    let listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    let answers = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for _ in 0..65 {
            let (mut s, _) = listener.accept().expect("accept");
            threads.push(std::thread::spawn(move || answer(&mut s)));
        }
        threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().err())
            .collect::<Vec<_>>()
    });
    let big = 100 * MIB;
    let guest = HuskLinux::default().vsock(&uds);
    let vm = guest.start(
        &dir,
        &format!(
            "husk-guest-tool vsock-listen 5000 65 &
listener=$!
husk-guest-tool vsock-connect 2 6000 1 {big} {big}
husk-guest-tool vsock-connect 2 6000 64 {MIB} {MIB}
wait $listener
echo VSOCK-DONE
reboot -f
"
        ),
    );
    vm.wait_console("vsock-listen: listening", T);
    exchange(vsock_connect(&uds, 5000), big, 7).expect("host to guest, 100 MiB");
    let many: Vec<_> = (0..64)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || exchange(vsock_connect(&uds, 5000), MIB, 100 + i))
        })
        .collect();
    let failed: Vec<String> = many
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(failed.is_empty(), "host to guest, 64 at once: {failed:?}");
    let out = vm.wait_console("VSOCK-DONE", T);
    assert_eq!(
        out.matches("vsock-connect: ok").count(),
        2,
        "guest to host:\n{out}"
    );
    assert!(
        out.contains("vsock-listen: ok"),
        "host to guest, guest's view:\n{out}"
    );
    let failed = answers.join().unwrap();
    assert!(failed.is_empty(), "guest to host, host's view: {failed:?}");
    assert_eq!(vm.wait(T).status.code(), Some(0));
}

#[test]
fn virtio_fs_shares_files_both_ways_and_mmap() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-fs");
    let shared = dir.join("shared");
    std::fs::create_dir_all(shared.join("h")).unwrap();
    for i in 0..10_000 {
        std::fs::write(shared.join(format!("h/f{i}")), format!("{i}\n")).unwrap();
    }
    let host_bin = pattern_file(&shared.join("host.bin"), 5, MIB);
    let socket = dir.join("fs.sock");
    let _daemon = Virtiofsd::start_with(&shared, &socket, "auto");
    let guest = HuskLinux::default().fs("share", &socket);
    let vm = guest.start(
        &dir,
        "mount -t virtiofs share /mnt && echo \"FS mount=ok\"
husk-guest-tool files-check /mnt/h 10000
mkdir /mnt/g && husk-guest-tool files-write /mnt/g 10000
husk-guest-tool mmap-read /mnt/host.bin
husk-guest-tool mmap-write /mnt/guest.bin 4194304 9
umount /mnt && echo \"FS umount=ok\"
echo FS-DONE
reboot -f
",
    );
    // 20,000 files through FUSE take about 3 minutes in the lab alone, and
    // longer beside the other tests of this binary on one emulated CPU.
    let out = vm.wait_console("FS-DONE", TRANSFER);
    assert_eq!(vm.wait(T).status.code(), Some(0), "{out}");
    assert_eq!(report(&out, "FS mount="), Some("ok"), "{out}");
    assert!(out.contains("files-check: ok 10000 files"), "{out}");
    assert!(out.contains("files-write: ok 10000 files"), "{out}");
    let want = format!(
        "mmap-read: ok len={} fnv={:016x}",
        host_bin.len(),
        fnv64(&host_bin)
    );
    assert!(out.contains(&want), "want {want:?}:\n{out}");
    assert!(out.contains("mmap-write: ok 4194304 bytes"), "{out}");
    assert_eq!(report(&out, "FS umount="), Some("ok"), "{out}");
    for i in [0, 1, 4321, 9999] {
        assert_eq!(
            std::fs::read_to_string(shared.join(format!("g/f{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    assert_eq!(std::fs::read_dir(shared.join("g")).unwrap().count(), 10_000);
    let written = std::fs::read(shared.join("guest.bin")).unwrap();
    let mut expect = vec![0u8; 4 << 20];
    Pattern::new(9).fill(&mut expect);
    assert!(
        written == expect,
        "guest.bin differs from what the guest mapped"
    );
}

const KERNEL_REPORT: &str = r#"mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "LINUX uname=$(uname -r)"
echo "LINUX online=$(cat /sys/devices/system/cpu/online)"
for c in 0 1 2 3; do taskset -c $c true && echo "LINUX ran-on=$c"; done
for d in /sys/bus/virtio/devices/*; do
    echo "LINUX virtio id=$(cat $d/device) driver=$(basename "$(readlink $d/driver)")"
done
echo "LINUX rng=$(cat /sys/devices/virtual/misc/hw_random/rng_current)"
echo "LINUX random1=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
echo "LINUX random2=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
echo "LINUX filesystems=$(awk '{print $NF}' /proc/filesystems | tr '\n' ' ')"
echo "LINUX cgroup=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "LINUX ns=$(ls /proc/self/ns | tr '\n' ' ')"
echo "LINUX seccomp=$(grep -ci seccomp /proc/self/status)"
echo "LINUX perf=$(dmesg | grep -o 'Performance Events: .*' | head -1)"
seq 1 20000 | sed 's/^/LINE /'
echo LINUX-DONE
sleep 1000
"#;

#[test]
fn rng_serial_smp_and_the_kernel_on_husk_vmm() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-basics");
    // The kernel's own messages stay off the console (they could land in
    // the middle of a counted line); the script's lines are what is counted.
    let guest = HuskLinux {
        vcpus: 4,
        append: "loglevel=1".into(),
        ..HuskLinux::default()
    }
    .entropy();
    let vm = guest.start(&dir, KERNEL_REPORT);
    let out = vm.wait_console("LINUX-DONE", T);
    let field = |k: &str| {
        report(&out, &format!("LINUX {k}="))
            .unwrap_or_else(|| panic!("no {k}:\n{out}"))
            .to_string()
    };
    assert!(field("uname").ends_with("-husk"), "{out}");
    assert_eq!(field("online"), "0-3", "{out}");
    assert_eq!(out.matches("LINUX ran-on=").count(), 4, "{out}");
    assert!(
        out.contains("LINUX virtio id=0x0004 driver=virtio_rng"),
        "{out}"
    );
    assert_eq!(field("rng"), "virtio_rng.0", "{out}");
    let (r1, r2) = (field("random1"), field("random2"));
    assert_eq!(r1.len(), 64, "{out}");
    assert_ne!(
        r1, r2,
        "two reads of the entropy device gave the same bytes"
    );
    let fs = field("filesystems");
    for want in ["ext4", "erofs", "overlay", "tmpfs", "cgroup2", "virtiofs"] {
        assert!(
            fs.split_whitespace().any(|f| f == want),
            "{want} missing: {fs}"
        );
    }
    let cg = field("cgroup");
    for want in ["cpuset", "cpu", "io", "memory", "pids"] {
        assert!(
            cg.split_whitespace().any(|c| c == want),
            "{want} missing: {cg}"
        );
    }
    let ns = field("ns");
    for want in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        assert!(
            ns.split_whitespace().any(|n| n == want),
            "{want} missing: {ns}"
        );
    }
    assert_eq!(field("seccomp"), "2", "{out}");
    // No virtual PMU: the guest's probe of the counters is refused, and it
    // settles for software events.
    assert!(field("perf").contains("software events"), "{out}");
    // Every console line arrived, in order.
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("LINE "))
        .collect();
    let expect: Vec<String> = (1..=20000).map(|i| i.to_string()).collect();
    if let Some(i) = (0..expect.len().max(lines.len()))
        .find(|&i| lines.get(i).map(|l| l.trim_end()) != expect.get(i).map(String::as_str))
    {
        let start = i.saturating_sub(3);
        panic!(
            "console lines lost or reordered: {} lines; from line {} on: {:?}\nconsole around it:\n{}",
            lines.len(),
            start + 1,
            &lines[start.min(lines.len())..(i + 4).min(lines.len())],
            around(&out, &format!("LINE {}", start + 1))
        );
    }
    // The device registry after the start: the entropy device, activated.
    let listed = vm.request("GET", "/devices", None);
    let listed: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(listed["devices"][0]["id"], "entropy", "{listed}");
    assert_eq!(listed["devices"][0]["activated"], true, "{listed}");
}

fn exit_of(vcpus: u32, script: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("linux-exit");
    let guest = HuskLinux {
        vcpus,
        ..HuskLinux::default()
    };
    let vm = guest.start(&dir, script);
    let end = vm.wait(T);
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    (end.status.code(), console)
}

#[test]
fn reboot_power_off_and_panic_end_husk_vmm_with_their_status() {
    if !linux_on_husk_vmm() {
        return;
    }
    let (code, out) = exit_of(
        2,
        "echo \"UP $(cat /sys/devices/system/cpu/online)\"\nreboot -f\n",
    );
    assert!(out.contains("UP 0-1"), "{out}");
    assert_eq!(code, Some(0), "reboot:\n{out}");
    let (code, out) = exit_of(
        4,
        "echo \"UP $(cat /sys/devices/system/cpu/online)\"\npoweroff -f\n",
    );
    assert!(out.contains("UP 0-3"), "{out}");
    assert_eq!(code, Some(0), "power-off:\n{out}");
    let (code, out) = exit_of(1, "echo UP\nexit 3\n");
    assert!(out.contains("Kernel panic"), "{out}");
    assert_eq!(code, Some(vmm::EXIT_GUEST_PANIC), "panic:\n{out}");
}

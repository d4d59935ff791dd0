//! virtio-blk and virtio-rng of husk-vmm, driven by the virtio test guest's
//! polling drivers under real KVM: byte-exact reads, writes that reach the
//! host file, read-only drives, flush surviving kill -9 of the VMM, entropy,
//! and malformed descriptor chains that fail without harming the VMM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest::{self, field, fnv1a, parse_hex};
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::run_config;

const T: Duration = Duration::from_secs(120);

fn config(test: &str, drives: &[(&str, &Path, bool, bool)], entropy: bool) -> String {
    let drives: Vec<_> = drives
        .iter()
        .map(|(id, path, root, ro)| {
            serde_json::json!({"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": ro})
        })
        .collect();
    let mut v = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(), "boot_args": format!("console=ttyS0 test={test}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": drives,
    });
    if entropy {
        v["entropy"] = serde_json::json!({});
    }
    v.to_string()
}

fn disk(dir: &TempDir, name: &str, size: usize, seed: u32) -> (std::path::PathBuf, Vec<u8>) {
    let mut x = seed;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, &bytes).unwrap();
    (p, bytes)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..4096).map(|i| (i * 7 + n * 13 + 1) as u8).collect()
}

fn run(dir: &TempDir, cfg: &str) -> String {
    host::announce(host::require_kvm());
    let out = run_config(dir, cfg, T);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "husk-vmm panicked: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(guest::VIRTIO_DONE),
        "guest did not finish:\n{stdout}"
    );
    stdout
}

fn hex_field(out: &str, prefix: &str, key: &str) -> u64 {
    field(out, prefix, key)
        .and_then(parse_hex)
        .unwrap_or_else(|| panic!("no {key} on {prefix:?} in:\n{out}"))
}

#[test]
fn block_read_write_flush_and_read_only() {
    let dir = TempDir::new("blk");
    let (rw_path, rw_orig) = disk(&dir, "rw.img", 1 << 20, 7);
    let (ro_path, ro_orig) = disk(&dir, "ro.img", 512 * 1024, 99);
    let out = run(
        &dir,
        &config(
            "blk",
            &[
                ("rootfs", &rw_path, true, false),
                ("data-ro", &ro_path, false, true),
            ],
            false,
        ),
    );

    // Drive 0: read-write, the root device.
    assert_eq!(field(&out, "blk 0 id=", "id"), Some("rootfs"), "{out}");
    assert_eq!(field(&out, "blk 0 id=", "cap"), Some("2048"));
    assert_eq!(field(&out, "blk 0 id=", "ro"), Some("0"));
    assert_eq!(
        hex_field(&out, "blk 0 read0", "fnv") as u32,
        fnv1a(&rw_orig[..4096])
    );
    assert_eq!(field(&out, "blk 0 read0", "status"), Some("0"));
    assert_eq!(field(&out, "blk 0 write8", "status"), Some("0"));
    assert_eq!(field(&out, "blk 0 flush", "status"), Some("0"));
    assert_eq!(
        hex_field(&out, "blk 0 read8", "fnv") as u32,
        fnv1a(&pattern(0))
    );
    assert_eq!(field(&out, "blk 0 unsupported", "status"), Some("2"));
    assert_eq!(field(&out, "blk 0 beyond", "status"), Some("1"));
    let rw_now = std::fs::read(&rw_path).unwrap();
    assert_eq!(
        &rw_now[4096..8192],
        &pattern(0)[..],
        "write did not reach the file"
    );
    assert_eq!(&rw_now[..4096], &rw_orig[..4096]);
    assert_eq!(&rw_now[8192..], &rw_orig[8192..]);

    // Drive 1: read-only.
    assert_eq!(field(&out, "blk 1 id=", "id"), Some("data-ro"));
    assert_eq!(field(&out, "blk 1 id=", "cap"), Some("1024"));
    assert_eq!(field(&out, "blk 1 id=", "ro"), Some("1"));
    assert_eq!(
        hex_field(&out, "blk 1 read0", "fnv") as u32,
        fnv1a(&ro_orig[..4096])
    );
    assert_eq!(
        field(&out, "blk 1 write8", "status"),
        Some("1"),
        "write to a read-only drive succeeded"
    );
    assert_eq!(
        hex_field(&out, "blk 1 read8", "fnv") as u32,
        fnv1a(&ro_orig[4096..8192])
    );
    assert_eq!(
        std::fs::read(&ro_path).unwrap(),
        ro_orig,
        "read-only drive changed"
    );

    // The root drive is declared to the kernel.
    let cmdline = out
        .lines()
        .find(|l| l.starts_with("dev "))
        .map(|_| ())
        .is_some();
    assert!(cmdline, "{out}");
}

#[test]
fn flushed_data_survives_kill_9() {
    host::require_kvm();
    let dir = TempDir::new("flush");
    let (path, orig) = disk(&dir, "disk.img", 1 << 20, 3);
    let cfg_path = dir.join("vm.json");
    std::fs::write(
        &cfg_path,
        config("flush", &[("disk", &path, false, false)], false),
    )
    .unwrap();
    let console = dir.join("console.log");
    let mut child = Command::new(host::bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg_path)
        .arg("--console-out")
        .arg(&console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("FLUSHED") {
            assert_eq!(field(&text, "blk 0 flush", "status"), Some("0"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "guest never flushed:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGKILL: no chance for the VMM to write anything after the flush.
    child.kill().unwrap();
    child.wait().unwrap();
    let now = std::fs::read(&path).unwrap();
    assert_eq!(&now[4096..8192], &pattern(0)[..]);
    assert_eq!(&now[..4096], &orig[..4096]);
}

#[test]
fn entropy() {
    let dir = TempDir::new("rng");
    let out = run(&dir, &config("rng", &[], true));
    assert_eq!(field(&out, "rng round=0", "len"), Some("64"), "{out}");
    assert_eq!(field(&out, "rng round=1", "len"), Some("64"));
    let a = hex_field(&out, "rng round=0", "fnv");
    let b = hex_field(&out, "rng round=1", "fnv");
    assert_ne!(a, b, "two reads returned the same bytes");
    assert_ne!(a as u32, fnv1a(&[0u8; 64]), "random bytes were all zero");
    // A device-readable buffer gets nothing; an oversized one is capped.
    assert_eq!(field(&out, "rng readonly", "len"), Some("0"));
    assert_eq!(field(&out, "rng big", "len"), Some("65536"));
}

#[test]
fn malformed_chains_fail_alone() {
    let dir = TempDir::new("hostile");
    let (path, orig) = disk(&dir, "disk.img", 1 << 20, 11);
    let out = run(
        &dir,
        &config("hostile", &[("disk", &path, false, false)], false),
    );
    let status = |name: &str| {
        field(&out, &format!("hostile {name} "), "status")
            .unwrap_or("?")
            .to_string()
    };
    let used = |name: &str| {
        field(&out, &format!("hostile {name} "), "used")
            .unwrap_or("?")
            .to_string()
    };
    // IOERR written to the status byte, completion returned.
    for name in [
        "outside-memory",
        "writable-header",
        "wrong-direction",
        "oversized",
    ] {
        assert_eq!(status(name), "1", "{name}:\n{out}");
        assert_eq!(used(name), "1", "{name}:\n{out}");
    }
    // A self-looping chain ends after the queue size; the error status goes
    // to the last byte of its last (writable) descriptor, not the request's
    // status buffer, which is not part of the chain.
    assert_eq!(status("loop"), "255", "{out}");
    assert_eq!(used("loop"), "1", "{out}");
    // No writable status byte at all: the chain completes with nothing written.
    assert_eq!(status("bad-next"), "255", "{out}");
    assert_eq!(used("bad-next"), "0", "{out}");
    assert_eq!(used("zero-length"), "0", "{out}");
    // An invalid head index cannot be completed.
    assert_eq!(used("bad-head"), "none", "{out}");
    // The device still serves a normal read, and its status is intact.
    assert_eq!(field(&out, "hostile sane", "status"), Some("0"), "{out}");
    assert_eq!(
        hex_field(&out, "hostile sane", "fnv") as u32,
        fnv1a(&orig[..4096])
    );
    assert_eq!(
        field(&out, "hostile sane", "devstatus"),
        Some("0xf"),
        "{out}"
    );
}

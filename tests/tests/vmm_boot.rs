//! husk-vmm boots the test guests under real KVM: boot protocols, memory
//! map, command line, initrd, vCPU count, exit codes, repeated boots, and
//! configuration errors.

use std::path::Path;
use std::time::Duration;

use integration_tests::guest::{self, Report};
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::{config_json, run_config};

const TIMEOUT: Duration = Duration::from_secs(30);

fn boot(
    kernel: &Path,
    initrd: Option<&Path>,
    args: &str,
    vcpus: u32,
    mem: u32,
) -> (i32, Report, String) {
    host::announce(host::require_kvm());
    let dir = TempDir::new("boot");
    let out = run_config(
        &dir,
        &config_json(kernel, initrd, args, vcpus, mem),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code().unwrap_or(-1),
        guest::parse(&stdout),
        stderr,
    )
}

fn expected_e820(mem_mib: u64) -> Vec<(u64, u64, u32)> {
    vec![(0, 0x9fc00, 1), (0x10_0000, (mem_mib << 20) - 0x10_0000, 1)]
}

#[test]
fn pvh_guest_sees_what_was_configured() {
    let dir = TempDir::new("initrd");
    let initrd = dir.join("initrd.img");
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&initrd, &bytes).unwrap();
    let args = "console=ttyS0 husk.test=1 action=reset";
    let (code, r, err) = boot(&guest::pvh(), Some(&initrd), args, 1, 96);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(r.complete, "{r:?}");
    assert_eq!(r.boot, "pvh");
    assert_eq!(r.cmdline, args);
    assert_eq!(r.e820, expected_e820(96));
    assert_eq!(r.initrd.1, bytes.len() as u64);
    assert_eq!(
        r.initrd.2,
        guest::fnv1a(&bytes),
        "initrd bytes differ in the guest"
    );
    assert_eq!(r.initrd.0 % 4096, 0);
    assert!(r.initrd.0 + r.initrd.1 <= 96 << 20);
    assert_eq!(r.cpus, 1);
}

#[test]
fn bzimage_guest_sees_what_was_configured() {
    let dir = TempDir::new("initrd");
    let initrd = dir.join("initrd.img");
    let bytes = vec![0x5au8; 4096 * 3 + 17];
    std::fs::write(&initrd, &bytes).unwrap();
    let args = "console=ttyS0 root=/dev/vda action=reset";
    let (code, r, err) = boot(&guest::bzimage(), Some(&initrd), args, 1, 64);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(r.complete, "{r:?}");
    assert_eq!(r.boot, "linux");
    assert_eq!(r.cmdline, args);
    assert_eq!(r.e820, expected_e820(64));
    assert_eq!(r.initrd.1, bytes.len() as u64);
    assert_eq!(r.initrd.2, guest::fnv1a(&bytes));
    assert_eq!(r.cpus, 1);
}

#[test]
fn no_initrd() {
    let (code, r, err) = boot(&guest::pvh(), None, "action=reset", 1, 32);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(r.initrd, (0, 0, 0x811c_9dc5));
    let (code, r, err) = boot(&guest::bzimage(), None, "action=reset", 1, 32);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!((r.initrd.0, r.initrd.1), (0, 0));
}

#[test]
fn two_vcpus_in_mp_table() {
    for kernel in [guest::pvh(), guest::bzimage()] {
        let (code, r, err) = boot(&kernel, None, "action=reset", 2, 64);
        assert_eq!(code, 0, "stderr: {err}");
        assert_eq!(r.cpus, 2, "{r:?}");
        // CPUID as the VMM set it: logical processor count, BSP APIC ID 0,
        // hypervisor bit.
        assert_eq!((r.cpuid1.1 >> 16) & 0xff, 2, "{r:?}");
        assert_eq!(r.cpuid1.1 >> 24, 0, "{r:?}");
        assert_ne!(r.cpuid1.0 & (1 << 31), 0, "{r:?}");
    }
    let (code, r, _) = boot(&guest::pvh(), None, "action=reset", 4, 64);
    assert_eq!((code, r.cpus, (r.cpuid1.1 >> 16) & 0xff), (0, 4, 4));
}

#[test]
fn triple_fault_is_an_error() {
    let (code, r, err) = boot(&guest::pvh(), None, "action=triple", 1, 32);
    assert!(r.complete);
    assert_eq!(code, vmm::EXIT_TRIPLE_FAULT, "stderr: {err}");
    assert!(err.contains("triple-faulted"), "stderr: {err}");
}

#[test]
fn emulation_failure_is_an_error() {
    let host = host::require_kvm();
    let (code, r, err) = boot(&guest::bzimage(), None, "action=emulfail", 1, 32);
    assert!(r.complete);
    match host {
        host::HostKvm::Pvm => {
            assert_eq!(code, vmm::EXIT_INTERNAL_ERROR, "stderr: {err}");
            assert!(err.contains("could not be emulated"), "stderr: {err}");
            assert!(err.contains("PVM"), "stderr: {err}");
        }
        // On hardware the instruction runs; the guest then triple-faults.
        host::HostKvm::Hardware => assert_ne!(code, 0, "stderr: {err}"),
    }
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn fifty_boots_in_a_row() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("fifty");
    let config = config_json(&guest::pvh(), None, "action=reset", 1, 32);
    for i in 0..50 {
        let out = run_config(&dir, &config, TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "boot {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(guest::parse(&stdout).complete, "boot {i}: {stdout}");
    }
}

fn run_bad(config: &str) -> (i32, String) {
    host::require_kvm();
    let dir = TempDir::new("bad");
    let out = run_config(&dir, config, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "husk-vmm panicked: {err}");
    assert_eq!(err.trim().lines().count(), 1, "expected one line: {err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn configuration_errors_are_one_clear_line() {
    let pvh = guest::pvh();
    let cases: Vec<(String, &str)> = vec![
        (
            config_json(Path::new("/nonexistent/vmlinux"), None, "", 1, 32),
            "/nonexistent/vmlinux",
        ),
        (
            config_json(&pvh, Some(Path::new("/nonexistent/initrd")), "", 1, 32),
            "/nonexistent/initrd",
        ),
        (config_json(&pvh, None, "", 0, 32), "vcpu_count"),
        (config_json(&pvh, None, "", 1000, 32), "vcpu_count"),
        (config_json(&pvh, None, "", 1, 0), "mem_size_mib"),
        (config_json(&pvh, None, "", 1, 100_000_000), "mem_size_mib"),
        ("this is not json".into(), "invalid configuration"),
        (
            r#"{"boot-source":{"kernel_image_path":"/k"},"bogus":{}}"#.into(),
            "bogus",
        ),
        (
            r#"{"boot-source":{"kernel_image_path":"/k","initrd":"/x"}}"#.into(),
            "initrd",
        ),
        (
            r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":32}}"#.into(),
            "boot-source",
        ),
        (
            r#"{"boot-source":{"kernel_image_path":"/k"},"vsock":{"guest_cid":1,"uds_path":"/tmp/v"}}"#.into(),
            "vsock.guest_cid",
        ),
        (
            r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[{"drive_id":"rootfs"}]}"#.into(),
            "path_on_host",
        ),
    ];
    for (config, needle) in cases {
        let (code, err) = run_bad(&config);
        assert_eq!(code, vmm::EXIT_BAD_CONFIG, "{config}: {err}");
        assert!(
            err.contains(needle),
            "{config}: expected {needle:?} in {err}"
        );
    }
}

#[test]
fn corrupt_kernels_are_rejected() {
    let dir = TempDir::new("corrupt");
    let pvh_bytes = std::fs::read(guest::pvh()).unwrap();
    let bz_bytes = std::fs::read(guest::bzimage()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", vec![0xa5; 64 * 1024]),
        ("truncated-elf", pvh_bytes[..100].to_vec()),
        ("truncated-bzimage", bz_bytes[..0x300].to_vec()),
        ("elf-no-segments", {
            let mut b = pvh_bytes.clone();
            b[56] = 0; // e_phnum = 0
            b[57] = 0;
            b
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let (code, err) = run_bad(&config_json(&path, None, "", 1, 32));
        assert_eq!(code, vmm::EXIT_BAD_CONFIG, "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: error does not name the file: {err}"
        );
    }
    // A directory is not a kernel.
    let (code, err) = run_bad(&config_json(&dir.0, None, "", 1, 32));
    assert_eq!(code, vmm::EXIT_BAD_CONFIG, "{err}");
}

#[test]
fn initrd_larger_than_memory() {
    let dir = TempDir::new("bigrd");
    let initrd = dir.join("big.img");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(40 << 20).unwrap();
    let (code, err) = run_bad(&config_json(&guest::pvh(), Some(&initrd), "", 1, 32));
    assert_eq!(code, vmm::EXIT_BAD_CONFIG, "{err}");
    assert!(err.contains("does not fit"), "{err}");
}

#[test]
fn missing_flags() {
    let out = std::process::Command::new(host::bin("husk-vmm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(vmm::EXIT_BAD_CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-sock"), "{err}");
    let out = std::process::Command::new(host::bin("husk-vmm"))
        .arg("--no-api")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

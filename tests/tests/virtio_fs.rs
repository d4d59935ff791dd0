//! husk-vmm's virtio-fs device, a vhost-user front end, with the upstream
//! `virtiofsd` as its back end, driven by the virtio test guest under real
//! KVM: the tag in the configuration space, then FUSE INIT, LOOKUP, OPEN,
//! READ and RELEASE of a host file through the request queue (served by
//! virtiofsd from guest memory shared by memfd, completions back through
//! the VMM's interrupt), and a missing name answered with ENOENT.

use std::path::Path;
use std::time::Duration;

use integration_tests::guest::{self, field, fnv1a, parse_hex};
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::{Virtiofsd as Daemon, run_config};

const T: Duration = Duration::from_secs(120);

fn config(test_args: &str, socket: &Path) -> String {
    serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(),
                        "boot_args": format!("console=ttyS0 test=fs {test_args}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "fs": [{"tag": "husk", "socket": socket}],
    })
    .to_string()
}

#[test]
fn fuse_requests_reach_virtiofsd_through_husk_vmm() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("virtio-fs");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let text = b"hello from the host through virtio-fs\n";
    std::fs::write(shared.join("hello.txt"), text).unwrap();
    let socket = dir.join("fs.sock");
    let _daemon = Daemon::start(&shared, &socket);

    let out = run_config(&dir, &config("fs.file=hello.txt", &socket), T);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "husk-vmm panicked: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(guest::VIRTIO_DONE), "{stdout}");
    assert_eq!(field(&stdout, "fs config", "tag"), Some("husk"), "{stdout}");
    assert_eq!(
        field(&stdout, "fs config", "request_queues"),
        Some("1"),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "fs init", "error"), Some("0"), "{stdout}");
    assert_eq!(field(&stdout, "fs init", "major"), Some("7"), "{stdout}");
    assert_eq!(field(&stdout, "fs lookup", "error"), Some("0"), "{stdout}");
    let len = text.len().to_string();
    assert_eq!(field(&stdout, "fs lookup", "size"), Some(len.as_str()));
    assert_eq!(field(&stdout, "fs open", "error"), Some("0"), "{stdout}");
    assert_eq!(field(&stdout, "fs read", "error"), Some("0"), "{stdout}");
    assert_eq!(field(&stdout, "fs read", "len"), Some(len.as_str()));
    assert_eq!(
        field(&stdout, "fs read", "fnv").and_then(parse_hex),
        Some(u64::from(fnv1a(text)))
    );
    assert_eq!(
        field(&stdout, "fs interrupt", "used"),
        Some("1"),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "fs release", "error"), Some("0"));
    // ENOENT from the host, not a failure of the device.
    assert_eq!(field(&stdout, "fs lookup-missing", "error"), Some("-2"));
}

#[test]
fn a_missing_back_end_is_refused_in_one_line() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("virtio-fs-missing");
    let socket = dir.join("nobody.sock");
    let out = run_config(&dir, &config("", &socket), T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("virtio-fs husk: cannot connect to") && l.contains("nobody.sock")),
        "{stderr}"
    );
}

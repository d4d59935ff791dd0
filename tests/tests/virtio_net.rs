//! virtio-net of husk-vmm on a TAP in a test network namespace: the guest's
//! ARP request reaches the host kernel (which learns the guest's MAC) and the
//! kernel's ARP reply reaches the guest.

use std::process::Stdio;
use std::time::Duration;

use integration_tests::guest::{self, field};
use integration_tests::host::{self, TempDir};
use integration_tests::netns::TapNamespace;
use integration_tests::vmm::wait_output;

const GUEST_MAC: &str = "06:00:0a:d5:00:02";

#[test]
fn frames_cross_the_tap_both_ways() {
    host::announce(host::require_kvm());
    let net = TapNamespace::new("net");
    assert_eq!(net.tap_stat("rx_packets"), 0);
    let dir = TempDir::new("net");
    let cfg = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest::virtio(),
            "boot_args": format!("console=ttyS0 test=net net.ip={} net.peer={}", net.guest_ip, net.host_ip),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": net.tap, "guest_mac": GUEST_MAC}],
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let child = net
        .command(&host::bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(guest::VIRTIO_DONE), "{stdout}");

    assert_eq!(
        field(&stdout, "net mac=", "mac"),
        Some(GUEST_MAC),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "net tx", "used"), Some("0"), "{stdout}");
    // Receive: the host kernel answered the guest's ARP request.
    let sha =
        field(&stdout, "net arp-reply", "sha").unwrap_or_else(|| panic!("no ARP reply:\n{stdout}"));
    assert_eq!(sha, net.tap_mac(), "{stdout}");
    // Transmit: the host kernel received the guest's frame on the TAP (and
    // answered it, which is the reply above).
    assert!(
        net.tap_stat("rx_packets") >= 1,
        "the TAP received nothing from the guest"
    );
    assert!(
        net.tap_stat("tx_packets") >= 1,
        "the TAP sent nothing to the guest"
    );
}

#[test]
fn missing_tap_is_a_clear_error() {
    host::require_kvm();
    let dir = TempDir::new("net-missing");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(), "boot_args": "test=net"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "nosuchtap9"}],
    });
    let out = integration_tests::vmm::run_config(&dir, &cfg.to_string(), Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(vmm::EXIT_BAD_CONFIG), "{err}");
    assert!(err.contains("eth0") && err.contains("nosuchtap9"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

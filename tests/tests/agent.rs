//! husk-agent as PID 1 of a real Linux guest (the husk kernel, booted by
//! husk's hypervisor backend: QEMU TCG here, vsock through
//! vhost-device-vsock in Firecracker's hybrid convention): it boots,
//! answers Version and Ping, survives malformed requests, applies sandbox
//! settings, reports its memory and shuts the guest down.

use husk_host::agent::AgentError;
use integration_tests::agent::{self, AgentVm};
use integration_tests::host::TempDir;
use integration_tests::linux;
use integration_tests::pod::{self, BOOT};
use protocol::{Call, ErrorCode, Reply, Request, Response, SandboxConfig};

fn call(s: &mut std::os::unix::net::UnixStream, id: u64, call: Call) -> Response {
    protocol::write_message(s, &Request { id, call }).unwrap();
    protocol::read_message(s).unwrap_or_else(|e| panic!("call {id}: {e}"))
}

#[test]
fn agent_serves_version_ping_and_shutdown() {
    let kernel = linux::kernel();
    let dir = TempDir::new("agent");
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, agent::initramfs(&agent::binary())).unwrap();
    let mut vm = AgentVm::boot(&dir.0, &kernel, &initrd);
    let console = vm.wait_console("husk-agent ready in", BOOT);
    assert!(!console.contains("init failed"), "{console}");

    let mut s = vm.connect(protocol::AGENT_CONTROL_PORT);
    let r = call(&mut s, 1, Call::Version);
    assert_eq!(r.id, 1);
    match r.result {
        Ok(Reply::Version(v)) => {
            assert_eq!(v.protocol, protocol::PROTOCOL_VERSION);
            assert!(v.boot_to_ready_ms > 0);
        }
        other => panic!("bad Version answer: {other:?}"),
    }
    assert_eq!(call(&mut s, 2, Call::Ping).result, Ok(Reply::Empty));

    // Malformed and invalid requests get errors; the agent keeps serving.
    let mut junk = 5u32.to_be_bytes().to_vec();
    junk.extend_from_slice(b"{oops");
    std::io::Write::write_all(&mut s, &junk).unwrap();
    let r: Response = protocol::read_message(&mut s).unwrap();
    assert_eq!(r.result.unwrap_err().code, ErrorCode::InvalidArgument);
    let unknown = br#"{"id":9,"call":{"op":"format_disk"}}"#;
    let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(unknown);
    std::io::Write::write_all(&mut s, &frame).unwrap();
    let r: Response = protocol::read_message(&mut s).unwrap();
    assert_eq!(r.result.unwrap_err().code, ErrorCode::InvalidArgument);
    let r = call(
        &mut s,
        3,
        Call::SetTime {
            secs: 1,
            nanos: 2_000_000_000,
        },
    );
    assert_eq!(r.result.unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(call(&mut s, 4, Call::Ping).result, Ok(Reply::Empty));

    // The host's client: version checked on connect, typed errors.
    let mut client = vm.client();
    let guest = match client.call(Call::GuestStats).unwrap() {
        Reply::GuestStats(g) => g,
        other => panic!("{other:?}"),
    };
    assert!(guest.agent_rss_kib > 100, "{guest:?}");
    assert!(guest.mem_total_kib > guest.mem_available_kib, "{guest:?}");
    match client.call(Call::StartContainer { id: "nope".into() }) {
        Err(AgentError::Refused(e)) => assert_eq!(e.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }

    assert_eq!(call(&mut s, 6, Call::Shutdown).result, Ok(Reply::Empty));
    // The agent waits for the host to close before the guest goes down, so
    // the answer is never lost.
    drop(s);
    drop(client);
    assert!(vm.wait_exit(BOOT), "the guest did not shut down");
}

#[test]
fn sandbox_settings_reach_containers() {
    let dir = TempDir::new("agent-sandbox");
    let vm = pod::boot_with_rootfs(&dir, &[]);
    let mut client = vm.client();
    // Invalid settings are refused whole.
    let bad = SandboxConfig {
        hostname: "pod 1".into(),
        ..SandboxConfig::default()
    };
    match client.call(Call::CreateSandbox(bad)) {
        Err(AgentError::Refused(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument),
        other => panic!("{other:?}"),
    }
    let bad = SandboxConfig {
        sysctls: [("kernel/../../etc".to_string(), "1".to_string())].into(),
        ..SandboxConfig::default()
    };
    assert!(client.call(Call::CreateSandbox(bad)).is_err());
    // An interface the VM was not given a device for is named.
    let bad = SandboxConfig {
        network: protocol::network::NetworkConfig {
            interfaces: vec![protocol::network::Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:99".into(),
                mtu: 1500,
                addresses: Vec::new(),
            }],
            routes: Vec::new(),
        },
        ..SandboxConfig::default()
    };
    let e = client
        .call(Call::CreateSandbox(bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eth0: no network device with MAC 02:00:00:00:00:99"),
        "{e}"
    );

    let cfg = SandboxConfig {
        hostname: "pod-1".into(),
        dns_servers: vec!["10.0.0.53".into()],
        dns_searches: vec!["svc.local".into()],
        dns_options: vec!["ndots:2".into()],
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        ..SandboxConfig::default()
    };
    client.call_empty(Call::CreateSandbox(cfg)).unwrap();
    // A container sharing the guest's UTS and network namespaces sees the
    // sandbox's host name and sysctls; resolv.conf is bind-mounted from
    // the guest path the agent wrote.
    let (st, out, err) = pod::run(
        &vm,
        &mut client,
        "c1",
        &[
            "/bin/sh",
            "-c",
            "hostname; cat /proc/sys/net/ipv4/ip_forward; cat /etc/resolv.conf",
        ],
        serde_json::json!({
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/husk/resolv.conf", "options": ["rbind", "ro"]}
            ]
        }),
    );
    assert_eq!(st, 0, "{err}");
    assert_eq!(
        out,
        "pod-1\n1\nnameserver 10.0.0.53\nsearch svc.local\noptions ndots:2\n"
    );
}

//! husk-agent as PID 1 of a real Linux guest (the husk kernel under QEMU
//! TCG, vsock through vhost-device-vsock in Firecracker's hybrid
//! convention): it boots, answers Version and Ping, survives malformed
//! requests, and shuts the guest down.

use std::time::Duration;

use integration_tests::agent::{self, AgentVm};
use integration_tests::host::TempDir;
use integration_tests::linux;
use protocol::{Call, ErrorCode, Reply, Request, Response};

const T: Duration = Duration::from_secs(120);

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
    let console = vm.wait_console("husk-agent ready in", T);
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
    // A second connection works alongside the first.
    let mut s2 = vm.connect(protocol::AGENT_CONTROL_PORT);
    assert_eq!(call(&mut s2, 5, Call::Ping).result, Ok(Reply::Empty));

    assert_eq!(call(&mut s, 6, Call::Shutdown).result, Ok(Reply::Empty));
    // The agent waits for the host to close before the guest goes down, so
    // the answer is never lost.
    drop(s);
    assert!(vm.wait_exit(T), "the guest did not shut down");
}

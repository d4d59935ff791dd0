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

#[test]
fn container_runs_with_separate_stdout_stderr_and_exit_code() {
    let kernel = linux::kernel();
    let dir = TempDir::new("agent-ctr");
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, agent::initramfs(&agent::binary())).unwrap();
    let rootfs = agent::busybox_rootfs(&dir.0);
    let drive = vec![
        "-drive".to_string(),
        format!("id=rootfs,file={},format=raw,if=none", rootfs.display()),
        "-device".to_string(),
        "virtio-blk-device,drive=rootfs,serial=rootfs".to_string(),
    ];
    let vm = AgentVm::boot_with(&dir.0, &kernel, &initrd, &drive);
    vm.wait_console("husk-agent ready in", T);
    let mut s = vm.connect(protocol::AGENT_CONTROL_PORT);
    match call(&mut s, 1, Call::Version).result {
        Ok(Reply::Version(v)) => assert_eq!(v.protocol, protocol::PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    let mut out = agent::attach(&vm, "c1", protocol::StdioStream::Stdout);
    let mut err = agent::attach(&vm, "c1", protocol::StdioStream::Stderr);
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "echo hello; echo oops >&2; hostname; exit 3"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "ignored", "readonly": false},
        "hostname": "c1",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    let rootfs = protocol::Storage {
        block_serial: "rootfs".into(),
        fstype: "ext4".into(),
        read_only: false,
    };
    let r = call(
        &mut s,
        2,
        Call::CreateContainer {
            id: "c1".into(),
            spec,
            rootfs,
        },
    );
    assert_eq!(r.result, Ok(Reply::Empty), "{}", vm.wait_console("", T));
    assert_eq!(
        call(&mut s, 3, Call::StartContainer { id: "c1".into() }).result,
        Ok(Reply::Empty)
    );
    assert_eq!(
        call(&mut s, 4, Call::WaitContainer { id: "c1".into() }).result,
        Ok(Reply::Exit { status: 3 })
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
    assert_eq!(stdout, "hello\nc1\n");
    assert_eq!(stderr, "oops\n");
    // Unknown containers and bad ids are errors.
    let r = call(&mut s, 5, Call::StartContainer { id: "nope".into() });
    assert_eq!(r.result.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        call(&mut s, 6, Call::RemoveContainer { id: "c1".into() }).result,
        Ok(Reply::Empty)
    );
}

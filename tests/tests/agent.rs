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
    let dir = TempDir::new("agent-ctr");
    let vm = boot_with_rootfs(&dir);
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
        "mounts": default_mounts(),
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    let c1_rootfs = protocol::Storage {
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
            rootfs: c1_rootfs,
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
    // A failed create closes the streams attached for it.
    let mut orphan = agent::attach(&vm, "bad", protocol::StdioStream::Stdout);
    let bad_rootfs = protocol::Storage {
        block_serial: "no-such-drive".into(),
        fstype: "ext4".into(),
        read_only: false,
    };
    let r = call(
        &mut s,
        20,
        Call::CreateContainer {
            id: "bad".into(),
            spec: spec_for(&["/bin/sh"]),
            rootfs: bad_rootfs,
        },
    );
    assert_eq!(r.result.unwrap_err().code, ErrorCode::NotFound);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut orphan, &mut rest).expect("stream was not closed");
    assert!(rest.is_empty());
    // Unknown containers and bad ids are errors.
    let r = call(&mut s, 5, Call::StartContainer { id: "nope".into() });
    assert_eq!(r.result.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        call(&mut s, 6, Call::RemoveContainer { id: "c1".into() }).result,
        Ok(Reply::Empty)
    );

    // stdin round-trips: `cat` echoes what the host sends until it closes.
    let mut input = agent::attach(&vm, "c2", protocol::StdioStream::Stdin);
    let mut out = agent::attach(&vm, "c2", protocol::StdioStream::Stdout);
    let r = call(
        &mut s,
        7,
        Call::CreateContainer {
            id: "c2".into(),
            spec: spec_for(&["/bin/cat"]),
            rootfs: rootfs(),
        },
    );
    assert_eq!(r.result, Ok(Reply::Empty));
    assert_eq!(
        call(&mut s, 8, Call::StartContainer { id: "c2".into() }).result,
        Ok(Reply::Empty)
    );
    std::io::Write::write_all(&mut input, b"ping over stdin\n").unwrap();
    drop(input);
    let mut echoed = String::new();
    std::io::Read::read_to_string(&mut out, &mut echoed).unwrap();
    assert_eq!(echoed, "ping over stdin\n");
    assert_eq!(
        call(&mut s, 9, Call::WaitContainer { id: "c2".into() }).result,
        Ok(Reply::Exit { status: 0 })
    );
    assert_eq!(
        call(&mut s, 10, Call::RemoveContainer { id: "c2".into() }).result,
        Ok(Reply::Empty)
    );

    // A signal reaches the process; SIGKILL is reported as 137. A running
    // container cannot be removed.
    let r = call(
        &mut s,
        11,
        Call::CreateContainer {
            id: "c3".into(),
            spec: spec_for(&["/bin/sleep", "1000"]),
            rootfs: rootfs(),
        },
    );
    assert_eq!(r.result, Ok(Reply::Empty));
    assert_eq!(
        call(&mut s, 12, Call::StartContainer { id: "c3".into() }).result,
        Ok(Reply::Empty)
    );
    // exec: a second process in the running container sees its files and
    // pid namespace (the container's process is pid 1 there).
    let mut xout = agent::attach_exec(&vm, "c3", "x1", protocol::StdioStream::Stdout);
    let r = call(
        &mut s,
        30,
        Call::ExecProcess {
            container_id: "c3".into(),
            exec_id: "x1".into(),
            args: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo exec $MSG; cat /proc/1/cmdline; echo; exit 7".into(),
            ],
            env: vec!["PATH=/bin".into(), "MSG=works".into()],
            cwd: Some("/".into()),
        },
    );
    assert_eq!(r.result, Ok(Reply::Empty));
    let r = call(
        &mut s,
        31,
        Call::WaitExec {
            container_id: "c3".into(),
            exec_id: "x1".into(),
        },
    );
    assert_eq!(r.result, Ok(Reply::Exit { status: 7 }));
    let mut xs = String::new();
    std::io::Read::read_to_string(&mut xout, &mut xs).unwrap();
    assert_eq!(xs, "exec works\n/bin/sleep\u{0}1000\u{0}\n");
    let r = call(
        &mut s,
        32,
        Call::WaitExec {
            container_id: "c3".into(),
            exec_id: "nope".into(),
        },
    );
    assert_eq!(r.result.unwrap_err().code, ErrorCode::NotFound);

    let r = call(&mut s, 13, Call::RemoveContainer { id: "c3".into() });
    assert_eq!(r.result.unwrap_err().code, ErrorCode::FailedPrecondition);
    assert_eq!(
        call(
            &mut s,
            14,
            Call::SignalContainer {
                id: "c3".into(),
                signal: 9
            }
        )
        .result,
        Ok(Reply::Empty)
    );
    assert_eq!(
        call(&mut s, 15, Call::WaitContainer { id: "c3".into() }).result,
        Ok(Reply::Exit { status: 137 })
    );
    assert_eq!(
        call(&mut s, 16, Call::RemoveContainer { id: "c3".into() }).result,
        Ok(Reply::Empty)
    );
}

/// Boots the agent with a busybox root file system drive (serial `rootfs`)
/// and waits until it serves.
fn boot_with_rootfs(dir: &TempDir) -> AgentVm {
    let kernel = linux::kernel();
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, agent::initramfs(&agent::binary())).unwrap();
    let rootfs_img = agent::busybox_rootfs(&dir.0);
    let drive = vec![
        "-drive".to_string(),
        format!("id=rootfs,file={},format=raw,if=none", rootfs_img.display()),
        "-device".to_string(),
        "virtio-blk-device,drive=rootfs,serial=rootfs".to_string(),
    ];
    let vm = AgentVm::boot_with(&dir.0, &kernel, &initrd, &drive);
    vm.wait_console("husk-agent ready in", T);
    vm
}

fn rootfs() -> protocol::Storage {
    protocol::Storage {
        block_serial: "rootfs".into(),
        fstype: "ext4".into(),
        read_only: false,
    }
}

fn spec_for(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "ignored", "readonly": false},
        "mounts": default_mounts(),
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    })
}

/// The mounts of `runc spec`'s default config: a fresh /dev per container.
fn default_mounts() -> serde_json::Value {
    serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
    ])
}

/// Runs `args` in container `id` with `extra` merged into the spec; returns
/// (exit status, stdout, stderr).
fn run(
    vm: &AgentVm,
    s: &mut std::os::unix::net::UnixStream,
    id: &str,
    args: &[&str],
    extra: serde_json::Value,
) -> (i32, String, String) {
    let mut out = agent::attach(vm, id, protocol::StdioStream::Stdout);
    let mut err = agent::attach(vm, id, protocol::StdioStream::Stderr);
    let mut spec = spec_for(args);
    merge(&mut spec, extra);
    let r = call(
        s,
        100,
        Call::CreateContainer {
            id: id.into(),
            spec,
            rootfs: rootfs(),
        },
    );
    if r.result != Ok(Reply::Empty) {
        err.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut e = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut e);
        panic!(
            "create {id}: {:?}; container stderr: {}",
            r.result,
            String::from_utf8_lossy(&e)
        );
    }
    assert_eq!(
        call(s, 101, Call::StartContainer { id: id.into() }).result,
        Ok(Reply::Empty)
    );
    let status = match call(s, 102, Call::WaitContainer { id: id.into() }).result {
        Ok(Reply::Exit { status }) => status,
        other => panic!("wait {id}: {other:?}"),
    };
    let mut o = String::new();
    std::io::Read::read_to_string(&mut out, &mut o).unwrap();
    let mut e = String::new();
    std::io::Read::read_to_string(&mut err, &mut e).unwrap();
    assert_eq!(
        call(s, 103, Call::RemoveContainer { id: id.into() }).result,
        Ok(Reply::Empty)
    );
    (status, o, e)
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn container_spec_is_honoured() {
    let dir = TempDir::new("agent-spec");
    let vm = boot_with_rootfs(&dir);
    let mut s = vm.connect(protocol::AGENT_CONTROL_PORT);

    // User and groups.
    let (st, out, _) = run(
        &vm,
        &mut s,
        "uid",
        &["/bin/sh", "-c", "id -u; id -g"],
        serde_json::json!({"process": {"user": {"uid": 1000, "gid": 1001}}}),
    );
    assert_eq!((st, out.as_str()), (0, "1000\n1001\n"));

    // Two containers at once: the second is pid 1 in its own namespace
    // while the first keeps running.
    let r = call(
        &mut s,
        40,
        Call::CreateContainer {
            id: "bg".into(),
            spec: spec_for(&["/bin/sleep", "1000"]),
            rootfs: rootfs(),
        },
    );
    assert_eq!(r.result, Ok(Reply::Empty));
    assert_eq!(
        call(&mut s, 41, Call::StartContainer { id: "bg".into() }).result,
        Ok(Reply::Empty)
    );
    let (st, out, _) = run(
        &vm,
        &mut s,
        "fg",
        &["/bin/sh", "-c", "echo $$; echo /proc/[0-9]*"],
        serde_json::json!({}),
    );
    assert_eq!(
        (st, out.as_str()),
        (0, "1\n/proc/1\n"),
        "sees only its own processes"
    );
    assert_eq!(
        call(
            &mut s,
            42,
            Call::SignalContainer {
                id: "bg".into(),
                signal: 9
            }
        )
        .result,
        Ok(Reply::Empty)
    );
    assert_eq!(
        call(&mut s, 43, Call::WaitContainer { id: "bg".into() }).result,
        Ok(Reply::Exit { status: 137 })
    );
    assert_eq!(
        call(&mut s, 44, Call::RemoveContainer { id: "bg".into() }).result,
        Ok(Reply::Empty)
    );

    // Own pid namespace: the process is pid 1 in each container.
    let (st, out, _) = run(
        &vm,
        &mut s,
        "pid",
        &["/bin/sh", "-c", "echo $$"],
        serde_json::json!({}),
    );
    assert_eq!((st, out.as_str()), (0, "1\n"));

    // Read-only root file system.
    let (st, _, err) = run(
        &vm,
        &mut s,
        "ro",
        &["/bin/sh", "-c", "echo x > /file"],
        serde_json::json!({"root": {"readonly": true}}),
    );
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");

    // Environment and working directory.
    let (st, out, _) = run(
        &vm,
        &mut s,
        "env",
        &["/bin/sh", "-c", "echo $GREETING; pwd"],
        serde_json::json!({"process": {"env": ["PATH=/bin", "GREETING=hi"], "cwd": "/tmp"}}),
    );
    assert_eq!((st, out.as_str()), (0, "hi\n/tmp\n"));

    // cgroup v2 pids limit: with at most 4 tasks the shell cannot start a
    // fifth (without the limit this loop succeeds).
    let (st, _, err) = run(
        &vm,
        &mut s,
        "pids",
        &["/bin/sh", "-c", "for i in 1 2 3 4 5 6; do sleep 5 & done"],
        serde_json::json!({"linux": {"cgroupsPath": "/husk/pids", "resources": {"pids": {"limit": 4}}}}),
    );
    assert_ne!(st, 0, "{err}");
    assert!(err.contains("fork"), "{err}");

    // cgroup v2 memory limit: going past it gets the process OOM-killed.
    let (st, _, _) = run(
        &vm,
        &mut s,
        "oom",
        &["/bin/sh", "-c", "x=a; while :; do x=$x$x; done"],
        serde_json::json!({"linux": {"cgroupsPath": "/husk/oom", "resources": {"memory": {"limit": 16777216, "swap": 16777216}}}}),
    );
    assert_eq!(st, 137, "not killed by the memory limit");
}

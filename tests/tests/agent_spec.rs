//! The OCI runtime spec honoured inside the guest: user and groups, pid
//! namespaces of two containers, read-only and overlay roots, env and cwd,
//! rlimits, capabilities, no_new_privileges, oom_score_adj, seccomp,
//! masked and read-only paths, sysctls, mounts, user namespaces; cgroup v2
//! limits, statistics, updates and OOM events; terminals and resize.

use std::io::Write;
use std::time::Duration;

use husk_host::agent::{AgentError, OutputPump};
use integration_tests::agent;
use integration_tests::host::TempDir;
use integration_tests::pod::{self, Buffer};
use protocol::{Call, ErrorCode, Reply, StdioStream};

#[test]
fn process_and_isolation_settings() {
    let dir = TempDir::new("agent-spec");
    let vm = pod::boot_with_rootfs(&dir, &[]);
    let mut c = vm.client();
    let mut run =
        |id: &str, args: &[&str], extra: serde_json::Value| pod::run(&vm, &mut c, id, args, extra);

    // User, group and additional groups.
    let (st, out, _) = run(
        "uid",
        &["/bin/sh", "-c", "id -u; id -G"],
        serde_json::json!({"process": {"user": {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}}}),
    );
    assert_eq!((st, out.as_str()), (0, "1000\n1001 10 20\n"));

    // Read-only root file system.
    let (st, _, err) = run(
        "ro",
        &["/bin/sh", "-c", "echo x > /file"],
        serde_json::json!({"root": {"readonly": true}}),
    );
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    // A writable root is an overlay: writes succeed and stay with that
    // container.
    let (st, out, _) = run(
        "rw1",
        &["/bin/sh", "-c", "echo x > /data/f && cat /data/f"],
        serde_json::json!({}),
    );
    assert_eq!((st, out.as_str()), (0, "x\n"));
    let (st, _, _) = run(
        "rw2",
        &["/bin/test", "-e", "/data/f"],
        serde_json::json!({}),
    );
    assert_eq!(st, 1, "a write leaked into the next container");

    // Environment and working directory, rlimits, no_new_privileges,
    // oom_score_adj, host name.
    let (st, out, _) = run(
        "proc",
        &[
            "/bin/sh",
            "-c",
            "echo $GREETING; pwd; ulimit -n; grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj; hostname",
        ],
        serde_json::json!({
            "hostname": "box",
            "process": {
                "env": ["PATH=/bin", "GREETING=hi"],
                "cwd": "/tmp",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": true,
                "oomScoreAdj": 500
            }
        }),
    );
    assert_eq!(
        (st, out.as_str()),
        (0, "hi\n/tmp\n512\nNoNewPrivs:\t1\n500\nbox\n")
    );

    // Capabilities: chown to another user needs CAP_CHOWN.
    let chown = ["/bin/sh", "-c", "touch /tmp/f && chown 5 /tmp/f"];
    let caps = |list: &[&str]| {
        serde_json::json!({"process": {"capabilities": {
            "bounding": list, "effective": list, "permitted": list
        }}})
    };
    let (st, _, err) = run("cap1", &chown, caps(&["CAP_CHOWN"]));
    assert_eq!(st, 0, "{err}");
    let (st, _, err) = run("cap0", &chown, caps(&[]));
    assert_ne!(st, 0);
    assert!(err.contains("Operation not permitted"), "{err}");

    // seccomp: the profile makes mkdir fail with EPERM.
    let mkdir = ["/bin/mkdir", "/tmp/d"];
    let (st, _, _) = run("noseccomp", &mkdir, serde_json::json!({}));
    assert_eq!(st, 0);
    let (st, _, err) = run(
        "seccomp",
        &mkdir,
        serde_json::json!({"linux": {"seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        }}}),
    );
    assert_ne!(st, 0);
    assert!(err.contains("Operation not permitted"), "{err}");

    // Masked and read-only paths; namespaced sysctls; extra mounts.
    let (st, out, err) = run(
        "paths",
        &[
            "/bin/sh",
            "-c",
            "wc -c < /proc/cmdline; echo 1 > /proc/sys/vm/overcommit_memory || echo ro; \
             cat /proc/sys/kernel/shmmax; grep -c ' /scratch tmpfs ' /proc/mounts",
        ],
        serde_json::json!({
            "linux": {
                "maskedPaths": ["/proc/cmdline"],
                "readonlyPaths": ["/proc/sys/vm"],
                "sysctl": {"kernel.shmmax": "12345"}
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}
            ]
        }),
    );
    assert_eq!(st, 0, "{err}");
    assert_eq!(out, "0\nro\n12345\n1\n", "{err}");

    // A user namespace maps container root to an unprivileged range (with
    // its own network namespace: sysfs can only be mounted there).
    let (st, out, err) = run(
        "userns",
        &["/bin/sh", "-c", "cat /proc/self/uid_map; id -u"],
        serde_json::json!({"linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "user"}, {"type": "network"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]
        }}),
    );
    assert_eq!(st, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "100000", "65536", "0"], "{out}");

    // Two containers at once: each is pid 1 in its own namespace.
    let bg = pod::create(
        &vm,
        &mut c,
        "bg",
        &["/bin/sleep", "1000"],
        serde_json::json!({}),
    );
    bg.start(&mut c);
    let (st, out, _) = pod::run(
        &vm,
        &mut c,
        "fg",
        &["/bin/sh", "-c", "echo $$; echo /proc/[0-9]*"],
        serde_json::json!({}),
    );
    assert_eq!((st, out.as_str()), (0, "1\n/proc/1\n"));
    c.call_empty(Call::SignalContainer {
        id: "bg".into(),
        signal: 9,
        all: true,
    })
    .unwrap();
    assert_eq!(bg.wait(&mut c).0.status, 137);
    c.call_empty(Call::RemoveContainer { id: "bg".into() })
        .unwrap();
}

fn stats(c: &mut husk_host::agent::AgentClient, id: &str) -> protocol::ContainerStats {
    match c.call(Call::Stats { id: id.into() }).unwrap() {
        Reply::Stats(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn cgroup_limits_stats_updates_and_oom_events() {
    let dir = TempDir::new("agent-cgroup");
    let vm = pod::boot_with_rootfs(&dir, &[]);
    let mut c = vm.client();

    // pids limit: with at most 4 tasks the shell cannot start a fifth.
    let (st, _, err) = pod::run(
        &vm,
        &mut c,
        "pids",
        &["/bin/sh", "-c", "for i in 1 2 3 4 5 6; do sleep 5 & done"],
        serde_json::json!({"linux": {"resources": {"pids": {"limit": 4}}}}),
    );
    assert_ne!(st, 0, "{err}");
    assert!(err.contains("fork"), "{err}");

    // Statistics and updates of a running container.
    let mib = 1u64 << 20;
    let running = pod::create(
        &vm,
        &mut c,
        "idle",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 1000",
        ],
        serde_json::json!({"linux": {"resources": {"memory": {"limit": 64 * mib}, "pids": {"limit": 10}}}}),
    );
    running.start(&mut c);
    std::thread::sleep(Duration::from_millis(500));
    let s = stats(&mut c, "idle");
    assert_eq!(s.memory_limit, Some(64 * mib), "{s:?}");
    assert_eq!(s.pids_limit, Some(10), "{s:?}");
    assert!(
        s.pids_current >= 1 && s.memory_usage > 0 && s.cpu_usage_usec > 0,
        "{s:?}"
    );
    assert!(s.memory_stat.contains_key("anon"), "{s:?}");
    c.call_empty(Call::UpdateResources {
        id: "idle".into(),
        resources: serde_json::json!({"memory": {"limit": 128 * mib}, "pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}}),
    })
    .unwrap();
    let s = stats(&mut c, "idle");
    assert_eq!((s.memory_limit, s.pids_limit), (Some(128 * mib), Some(20)));
    match c.call(Call::UpdateResources {
        id: "idle".into(),
        resources: serde_json::json!({"memory": {"limit": "lots"}}),
    }) {
        Err(AgentError::Refused(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument),
        other => panic!("{other:?}"),
    }
    match c.call(Call::Stats { id: "nope".into() }) {
        Err(AgentError::Refused(e)) => assert_eq!(e.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    c.call_empty(Call::SignalContainer {
        id: "idle".into(),
        signal: 9,
        all: true,
    })
    .unwrap();
    assert_eq!(running.wait(&mut c).0.status, 137);
    c.call_empty(Call::RemoveContainer { id: "idle".into() })
        .unwrap();

    // Memory limit exceeded: the process is OOM-killed and an OOM event
    // names the container.
    let hybrid = vm.hybrid.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut events = husk_host::agent::AgentClient::connect(&hybrid).unwrap();
        let _ = tx.send(events.call(Call::WaitOomEvent { after: 0 }));
    });
    let hog = pod::create(
        &vm,
        &mut c,
        "oom",
        &["/bin/sh", "-c", "x=a; while :; do x=$x$x; done"],
        serde_json::json!({"linux": {"resources": {"memory": {"limit": 16 * mib, "swap": 16 * mib}}}}),
    );
    hog.start(&mut c);
    let (exit, _, _) = hog.wait(&mut c);
    assert_eq!(exit.status, 137, "not killed by the memory limit");
    let s = stats(&mut c, "oom");
    assert_eq!(s.memory_oom_kills, 1, "{s:?}");
    match rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no OOM event")
    {
        Ok(Reply::OomEvent(e)) => assert_eq!((e.seq, e.container_id.as_str()), (1, "oom")),
        other => panic!("{other:?}"),
    }
    c.call_empty(Call::RemoveContainer { id: "oom".into() })
        .unwrap();
}

#[test]
fn terminal_gets_a_pty_and_resizes() {
    let dir = TempDir::new("agent-tty");
    // The ext4 image path (the other tests use EROFS).
    let vm = pod::boot_with_image(&dir, &[], husk_host::rootfs::ImageFormat::Ext4);
    let mut c = vm.client();
    let mut input = agent::attach(&vm, "tty", "", StdioStream::Stdin);
    let running = pod::create(
        &vm,
        &mut c,
        "tty",
        &["/bin/sh", "-c", "tty; read line; stty size; echo got $line"],
        serde_json::json!({"process": {"terminal": true}}),
    );
    running.start(&mut c);
    c.call_empty(Call::ResizeTty {
        container_id: "tty".into(),
        exec_id: String::new(),
        rows: 40,
        cols: 100,
    })
    .unwrap();
    input.write_all(b"hello\n").unwrap();
    let (exit, out, err) = running.wait(&mut c);
    assert_eq!(exit.status, 0, "{out}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("40 100\r\n"), "{out:?}");
    assert!(out.contains("got hello\r\n"), "{out:?}");
    assert_eq!(err, "", "a terminal has no separate stderr");
    c.call_empty(Call::RemoveContainer { id: "tty".into() })
        .unwrap();

    // A pipe-stdio container has no terminal to resize; an exec'd process
    // may have one of its own.
    let running = pod::create(
        &vm,
        &mut c,
        "plain",
        &["/bin/sleep", "1000"],
        serde_json::json!({}),
    );
    running.start(&mut c);
    match c.call(Call::ResizeTty {
        container_id: "plain".into(),
        exec_id: String::new(),
        rows: 1,
        cols: 1,
    }) {
        Err(AgentError::Refused(e)) => assert_eq!(e.code, ErrorCode::FailedPrecondition),
        other => panic!("{other:?}"),
    }
    let mut xin = agent::attach(&vm, "plain", "t", StdioStream::Stdin);
    let xout = agent::attach(&vm, "plain", "t", StdioStream::Stdout);
    let xbuf = Buffer::default();
    let pump = OutputPump::start(xout, Box::new(xbuf.clone())).unwrap();
    c.call_empty(Call::ExecProcess {
        container_id: "plain".into(),
        exec_id: "t".into(),
        process: serde_json::json!({"args": ["/bin/sh", "-c", "read x; stty size"], "env": ["PATH=/bin"], "cwd": "/", "terminal": true, "user": {"uid": 0, "gid": 0}}),
    })
    .unwrap();
    c.call_empty(Call::ResizeTty {
        container_id: "plain".into(),
        exec_id: "t".into(),
        rows: 12,
        cols: 34,
    })
    .unwrap();
    xin.write_all(b"\n").unwrap();
    let x = c.wait("plain", "t").unwrap();
    assert_eq!(x.status, 0);
    pump.finish(x.stdout_bytes, Duration::from_secs(30));
    assert!(xbuf.text().contains("12 34\r\n"), "{:?}", xbuf.text());
    c.call_empty(Call::SignalContainer {
        id: "plain".into(),
        signal: 9,
        all: false,
    })
    .unwrap();
    assert_eq!(running.wait(&mut c).0.status, 137);
}

//! Container lifecycle through husk-agent in a real guest: separate,
//! byte-exact stdout and stderr (100 MiB checksummed), stdin round trips
//! and close, exit codes 0, 1, 3, 137 and 143, signals, exec of OCI
//! processes, process lists, and what is refused.

use std::io::{Read, Write};
use std::time::Duration;

use husk_host::agent::{AgentError, OutputPump};
use integration_tests::agent;
use integration_tests::host::TempDir;
use integration_tests::pod::{self, Buffer};
use protocol::{Call, ErrorCode, Reply, StdioStream};

fn refused(r: Result<Reply, AgentError>) -> ErrorCode {
    match r {
        Err(AgentError::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn container_lifecycle() {
    let dir = TempDir::new("agent-life");
    let vm = pod::boot_with_rootfs(&dir, &[]);
    let mut c = vm.client();

    // stdout and stderr arrive separately; the exit code is reported.
    let (st, out, err) = pod::run(
        &vm,
        &mut c,
        "c1",
        &["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"],
        serde_json::json!({}),
    );
    assert_eq!((st, out.as_str(), err.as_str()), (3, "hello\n", "oops\n"));
    for (args, code) in [(["/bin/true"], 0), (["/bin/false"], 1)] {
        let (st, _, _) = pod::run(&vm, &mut c, "codes", &args, serde_json::json!({}));
        assert_eq!(st, code, "{args:?}");
    }

    // A failed create closes the streams attached for it and leaves
    // nothing behind: the same ID works afterwards.
    let mut orphan = agent::attach(&vm, "bad", "", StdioStream::Stdout);
    let mut bad_root = pod::rootfs(&vm);
    bad_root.source = protocol::StorageSource::Block {
        serial: "no-such-drive".into(),
    };
    let r = c.call(Call::CreateContainer {
        id: "bad".into(),
        spec: pod::spec_for(&["/bin/true"]),
        rootfs: bad_root,
    });
    assert_eq!(refused(r), ErrorCode::NotFound);
    let mut rest = Vec::new();
    orphan
        .read_to_end(&mut rest)
        .expect("stream was not closed");
    assert!(rest.is_empty());
    let r = c.call(Call::CreateContainer {
        id: "bad".into(),
        spec: serde_json::json!({"ociVersion": "1.0.2"}),
        rootfs: pod::rootfs(&vm),
    });
    assert_eq!(refused(r), ErrorCode::InvalidArgument);
    let (st, _, _) = pod::run(&vm, &mut c, "bad", &["/bin/true"], serde_json::json!({}));
    assert_eq!(st, 0);
    let r = c.call(Call::CreateContainer {
        id: "../x".into(),
        spec: pod::spec_for(&["/bin/true"]),
        rootfs: pod::rootfs(&vm),
    });
    assert_eq!(refused(r), ErrorCode::InvalidArgument);

    // stdin round-trips (1 MiB through cat); closing it ends the input.
    let mut input = agent::attach(&vm, "cat", "", StdioStream::Stdin);
    let running = pod::create(&vm, &mut c, "cat", &["/bin/cat"], serde_json::json!({}));
    running.start(&mut c);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    input.write_all(&data).unwrap();
    c.call_empty(Call::CloseStdin {
        container_id: "cat".into(),
        exec_id: String::new(),
        after_bytes: Some(data.len() as u64),
    })
    .unwrap();
    let echoed = running.stdout.clone();
    let (exit, _, _) = running.wait(&mut c);
    assert_eq!(exit.status, 0);
    assert_eq!(exit.stdout_bytes, data.len() as u64);
    assert!(
        *echoed.0.lock().unwrap() == data,
        "stdin did not round-trip"
    );
    c.call_empty(Call::RemoveContainer { id: "cat".into() })
        .unwrap();

    // A running container: exec, signals, process list; removing it is
    // refused while it runs.
    let running = pod::create(
        &vm,
        &mut c,
        "c3",
        &["/bin/sleep", "1000"],
        serde_json::json!({}),
    );
    running.start(&mut c);
    let r = c.call(Call::StartContainer { id: "c3".into() });
    assert_eq!(refused(r), ErrorCode::FailedPrecondition);
    // exec: an OCI process object, run in the container's namespaces (the
    // container's process is pid 1 there) as the user it names.
    let xout = agent::attach(&vm, "c3", "x1", StdioStream::Stdout);
    let xbuf = Buffer::default();
    let xpump = OutputPump::start(xout, Box::new(xbuf.clone())).unwrap();
    c.call_empty(Call::ExecProcess {
        container_id: "c3".into(),
        exec_id: "x1".into(),
        process: serde_json::json!({
            "args": ["/bin/sh", "-c", "echo exec $MSG; id -u; cat /proc/1/cmdline; echo; exit 7"],
            "env": ["PATH=/bin", "MSG=works"],
            "cwd": "/",
            "user": {"uid": 1000, "gid": 1000}
        }),
    })
    .unwrap();
    let x = c.wait("c3", "x1").unwrap();
    assert_eq!(x.status, 7);
    xpump.finish(x.stdout_bytes, Duration::from_secs(30));
    assert_eq!(xbuf.text(), "exec works\n1000\n/bin/sleep\u{0}1000\u{0}\n");
    // A second exec that runs until signalled: SIGTERM is reported as 143.
    c.call_empty(Call::ExecProcess {
        container_id: "c3".into(),
        exec_id: "x2".into(),
        process: serde_json::json!({"args": ["/bin/sleep", "500"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
    })
    .unwrap();
    let pids = match c.call(Call::ListProcesses { id: "c3".into() }).unwrap() {
        Reply::Processes { pids } => pids,
        other => panic!("{other:?}"),
    };
    assert_eq!(pids.len(), 2, "{pids:?}");
    c.call_empty(Call::SignalExec {
        container_id: "c3".into(),
        exec_id: "x2".into(),
        signal: 15,
    })
    .unwrap();
    assert_eq!(c.wait("c3", "x2").unwrap().status, 143);
    let r = c.call(Call::WaitExec {
        container_id: "c3".into(),
        exec_id: "nope".into(),
    });
    assert_eq!(refused(r), ErrorCode::NotFound);
    let r = c.call(Call::ExecProcess {
        container_id: "c3".into(),
        exec_id: "x3".into(),
        process: serde_json::json!({"args": []}),
    });
    assert_eq!(refused(r), ErrorCode::InvalidArgument);
    let r = c.call(Call::ExecProcess {
        container_id: "c3".into(),
        exec_id: "x3".into(),
        process: serde_json::json!({"args": ["/bin/true"], "cwd": "/"}),
    });
    assert_eq!(refused(r), ErrorCode::InvalidArgument);
    let r = c.call(Call::RemoveContainer { id: "c3".into() });
    assert_eq!(refused(r), ErrorCode::FailedPrecondition);
    let r = c.call(Call::SignalContainer {
        id: "c3".into(),
        signal: 99,
        all: false,
    });
    assert_eq!(refused(r), ErrorCode::InvalidArgument);
    c.call_empty(Call::SignalContainer {
        id: "c3".into(),
        signal: 9,
        all: false,
    })
    .unwrap();
    let (exit, _, _) = running.wait(&mut c);
    assert_eq!(exit.status, 137);
    let r = c.call(Call::ExecProcess {
        container_id: "c3".into(),
        exec_id: "late".into(),
        process: serde_json::json!({"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
    });
    assert_eq!(refused(r), ErrorCode::FailedPrecondition);
    c.call_empty(Call::RemoveContainer { id: "c3".into() })
        .unwrap();

    // Outside a pid namespace the process is not an init: SIGTERM ends it
    // with 143.
    let running = pod::create(
        &vm,
        &mut c,
        "term",
        &["/bin/sleep", "1000"],
        serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}),
    );
    running.start(&mut c);
    c.call_empty(Call::SignalContainer {
        id: "term".into(),
        signal: 15,
        all: false,
    })
    .unwrap();
    let (exit, _, _) = running.wait(&mut c);
    assert_eq!(exit.status, 143);
    c.call_empty(Call::RemoveContainer { id: "term".into() })
        .unwrap();
}

/// FNV-1a over a stream.
#[derive(Clone)]
struct Fnv(std::sync::Arc<std::sync::Mutex<(u64, u64)>>);

impl Fnv {
    fn new() -> Fnv {
        Fnv(std::sync::Arc::new(std::sync::Mutex::new((
            0xcbf2_9ce4_8422_2325,
            0,
        ))))
    }
    fn feed(state: &mut (u64, u64), bytes: &[u8]) {
        for b in bytes {
            state.0 ^= u64::from(*b);
            state.0 = state.0.wrapping_mul(0x100_0000_01b3);
        }
        state.1 += bytes.len() as u64;
    }
    fn get(&self) -> (u64, u64) {
        *self.0.lock().unwrap()
    }
}

impl Write for Fnv {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Fnv::feed(&mut self.0.lock().unwrap(), b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn large_output_is_byte_exact() {
    const MIB: usize = 1 << 20;
    const REPEAT: usize = 50;
    let a = pseudo_random(1, MIB);
    let b = pseudo_random(2, MIB);
    let dir = TempDir::new("agent-large");
    let vm = pod::boot_with_rootfs(&dir, &[("data/a", &a), ("data/b", &b)]);
    let mut c = vm.client();
    let out = agent::attach(&vm, "big", "", StdioStream::Stdout);
    let err = agent::attach(&vm, "big", "", StdioStream::Stderr);
    let (hout, herr) = (Fnv::new(), Fnv::new());
    let pout = OutputPump::start(out, Box::new(hout.clone())).unwrap();
    let perr = OutputPump::start(err, Box::new(herr.clone())).unwrap();
    // Both streams at once: a pipeline (the left side writes only to
    // stderr, the right side ignores its stdin).
    let script = format!(
        "for i in $(seq {REPEAT}); do cat /data/b; done >&2 | \
         for i in $(seq {REPEAT}); do cat /data/a; done"
    );
    let mut spec = pod::spec_for(&["/bin/sh", "-c", &script]);
    pod::merge(&mut spec, serde_json::json!({}));
    c.call_empty(Call::CreateContainer {
        id: "big".into(),
        spec,
        rootfs: pod::rootfs(&vm),
    })
    .unwrap();
    c.call_empty(Call::StartContainer { id: "big".into() })
        .unwrap();
    let exit = c.wait("big", "").unwrap();
    assert_eq!(exit.status, 0);
    let total = (REPEAT * MIB) as u64;
    assert_eq!((exit.stdout_bytes, exit.stderr_bytes), (total, total));
    let grace = Duration::from_secs(60);
    assert_eq!(pout.finish(total, grace), total);
    assert_eq!(perr.finish(total, grace), total);
    let expect = |blob: &[u8]| {
        let mut st = (0xcbf2_9ce4_8422_2325, 0);
        for _ in 0..REPEAT {
            Fnv::feed(&mut st, blob);
        }
        st
    };
    assert_eq!(hout.get(), expect(&a), "stdout differs");
    assert_eq!(herr.get(), expect(&b), "stderr differs");
    c.call_empty(Call::RemoveContainer { id: "big".into() })
        .unwrap();
}

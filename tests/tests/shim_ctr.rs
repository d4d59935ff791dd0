//! `containerd-shim-husk-v2` under a real containerd, driven with `ctr`
//! (`--runtime io.containerd.husk.v2`): every task a microVM.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::cli::text;
use integration_tests::shim::{RUNTIME, ShimEnv};

/// Starts `ctr events` writing to a file; returns the file and the process.
fn record_events(env: &ShimEnv) -> (std::path::PathBuf, std::process::Child) {
    let log = env.husk.dir.join("events.log");
    let child = env
        .containerd
        .command(&["events"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (log, child)
}

#[test]
fn ctr_runs_tasks_in_microvms() {
    let env = ShimEnv::start("shim-ctr");
    let c = &env.containerd;

    // Events, recorded while the test runs.
    let (events_log, mut events) = record_events(&env);

    let out = env.run(&["--rm"], "r1", &["echo", "hello"]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let out = env.run(&["--rm"], "r2", &["sh", "-c", "echo oops >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "oops\n");

    // stdin, to its end.
    let mut child = c
        .command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            c.image(),
            "r3",
            "sh",
            "-c",
            "wc -c; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&vec![b'x'; 100_000])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "100000\ndone\n", "{}", text(&out.stderr));

    // A terminal: ctr needs one itself, so it runs under script(1).
    let ctr_line = format!(
        "ctr --address {} --namespace {} run --rm -t --runtime {RUNTIME} {} r4 sh -c 'tty; stty size; exit 4'",
        c.dir().join("containerd.sock").display(),
        c.namespace(),
        c.image()
    );
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("stty rows 33 cols 77; {ctr_line}"),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("/dev/pts/0"),
        "{shown:?} {}",
        text(&out.stderr)
    );
    assert!(shown.contains("33 77"), "{shown:?}");
    assert_eq!(out.status.code(), Some(4), "{shown:?}");

    // Detached: exec, ps, pause/resume, metrics, kill, delete.
    let out = env.run(
        &["-d"],
        "d1",
        &["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 1; done"],
    );
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    env.wait_status("d1", "RUNNING");
    let out = c.exec(
        "d1",
        "e1",
        &["sh", "-c", "echo in $(cat /proc/1/comm); exit 3"],
    );
    assert_eq!(text(&out.stdout), "in sh\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
    let out = c.ctr(&["task", "ps", "d1"]);
    let pids = text(&out.stdout);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    // Guest PIDs: the shell and its sleep.
    let listed: Vec<u32> = pids
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!listed.is_empty() && listed.len() <= 3, "{pids}");
    assert!(c.ctr(&["task", "pause", "d1"]).status.success());
    env.wait_status("d1", "PAUSED");
    assert!(c.ctr(&["task", "resume", "d1"]).status.success());
    env.wait_status("d1", "RUNNING");
    let out = c.ctr(&["task", "metrics", "--format", "json", "d1"]);
    assert!(out.status.success(), "metrics: {}", text(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("metrics: {e}: {}", text(&out.stdout)));
    assert!(m["memory"]["usage"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");
    let out = c.ctr(&["task", "kill", "--signal", "SIGTERM", "d1"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    env.wait_status("d1", "STOPPED");
    let out = c.ctr(&["task", "delete", "d1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert!(c.ctr(&["container", "delete", "d1"]).status.success());

    // kill --all reaches every process.
    let out = env.run(&["-d"], "d2", &["sh", "-c", "sleep 1000 & sleep 1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("d2", "RUNNING");
    let out = c.ctr(&["task", "kill", "--all", "--signal", "SIGKILL", "d2"]);
    assert!(out.status.success(), "kill --all: {}", text(&out.stderr));
    env.wait_status("d2", "STOPPED");
    assert!(c.ctr(&["task", "delete", "d2"]).status.success());
    assert!(c.ctr(&["container", "delete", "d2"]).status.success());

    // Output to a file by URI.
    let log = env.husk.dir.join("out.log");
    let uri = format!("file://{}", log.display());
    let out = env.run(&["--rm", "--log-uri", &uri], "r5", &["echo", "to a file"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to a file\n");

    // Output to a logging program by URI: key and value become arguments.
    let logger = env.husk.dir.join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\n[ \"$1\" = out ] || exit 2\nexec 5>&-\ncat <&3 >> \"$2\" & cat <&4 >> \"$2\"; wait\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let logged = env.husk.dir.join("logged.txt");
    let uri = format!("binary://{}?out={}", logger.display(), logged.display());
    let out = env.run(&["--rm", "--log-uri", &uri], "r6", &["echo", "to a logger"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&logged).unwrap_or_default() != "to a logger\n" {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            std::fs::read_to_string(&logged)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    env.assert_clean();

    // The events of d1, in order.
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let _ = events.wait();
    let log = std::fs::read_to_string(&events_log).unwrap();
    let topics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"d1\""))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|t| t.starts_with("/tasks/"))
        .collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{log}"
    );
    let _ = Instant::now();
}

/// The `/tasks/exit` events of `id` in a `ctr events` log.
fn exits_of(log: &str, id: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some("/tasks/exit"))
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.split_whitespace().nth(6)?).ok()
        })
        .filter(|v| v["container_id"] == id)
        .collect()
}

#[test]
fn the_shim_binary_answers_version() {
    let out = std::process::Command::new(integration_tests::host::bin("containerd-shim-husk-v2"))
        .arg("-v")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("Version: "),
        "{}",
        text(&out.stdout)
    );
    // Without containerd's arguments it refuses, saying what is missing.
    let out = std::process::Command::new(integration_tests::host::bin("containerd-shim-husk-v2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("namespace"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn faults_are_reported_and_cleaned_up() {
    let env = ShimEnv::start("shim-faults");
    let c = &env.containerd;
    let (events_log, mut events) = record_events(&env);

    // The VMM killed: the task exits with 137 and deletes cleanly.
    let out = env.run(&["-d"], "k1", &["sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("k1", "RUNNING");
    let line = env.task_line("k1").unwrap();
    let vmm: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: kill(2) on the VMM PID containerd reported for the task.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    env.wait_status("k1", "STOPPED");
    // Before any delete, the rest of the VM (the vsock daemon) is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !integration_tests::cli::processes_mentioning(&env.task_root()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "VM helpers outlive the VMM: {:?}",
            integration_tests::cli::processes_mentioning(&env.task_root())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.ctr(&["task", "delete", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(c.ctr(&["container", "delete", "k1"]).status.success());
    env.assert_clean();

    // The shim killed: containerd runs `containerd-shim-husk-v2 delete`,
    // which leaves nothing behind.
    let out = env.run(&["-d"], "k2", &["sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("k2", "RUNNING");
    let bundle = c
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(c.namespace())
        .join("k2");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = address.trim().trim_start_matches("unix://").to_string();
    assert!(std::path::Path::new(&socket).exists(), "{socket}");
    let shims = env.shim_pids("k2");
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) on the shim process found by its command line.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.task_line("k2").is_some_and(|l| !l.contains("STOPPED")) {
        assert!(Instant::now() < deadline, "{:?}", env.task_line("k2"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.ctr(&["task", "delete", "k2"]);
    assert!(c.ctr(&["container", "delete", "k2"]).status.success());
    env.assert_clean();
    assert!(!std::path::Path::new(&socket).exists(), "{socket} left");
    assert!(!bundle.exists(), "{} left", bundle.display());

    // Invalid settings fail at create, naming the setting, leaving nothing.
    for (ann, needle) in [
        ("io.husk.vcpus=99", "io.husk.vcpus"),
        ("io.husk.hypervisor=xen", "io.husk.hypervisor"),
    ] {
        let out = env.run(&["--rm", "--annotation", ann], "bad", &["true"]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(needle), "{}", text(&out.stderr));
        let _ = c.ctr(&["container", "delete", "bad"]);
        env.assert_clean();
    }

    // The memory limit reached: the OOM kill is an event and exit 137.
    let out = env.run(
        &["--rm", "--memory-limit", "33554432"],
        "oom",
        &["sh", "-c", "tail /dev/zero"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    env.assert_clean();

    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let _ = events.wait();
    let log = std::fs::read_to_string(&events_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"oom\"")),
        "{log}"
    );
    let k1 = exits_of(&log, "k1");
    assert_eq!(k1.len(), 1, "{log}");
    assert_eq!(k1[0]["exit_status"], 137, "{log}");
    let k2 = exits_of(&log, "k2");
    assert!(k2.iter().all(|e| e["exit_status"] != 0), "{log}");
}

#[test]
fn a_pods_containers_share_its_vm() {
    let env = ShimEnv::start("shim-pod");
    let c = &env.containerd;
    let sandbox = [
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let member = [
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let mut flags = vec!["-d"];
    flags.extend(sandbox);
    let out = env.run(
        &flags,
        "pod1",
        &["sh", "-c", "echo from-sandbox > /dev/shm/x; sleep 1000"],
    );
    assert!(out.status.success(), "sandbox: {}", text(&out.stderr));
    env.wait_status("pod1", "RUNNING");
    let mut flags = vec!["-d"];
    flags.extend(member);
    let out = env.run(&flags, "c1", &["sleep", "1000"]);
    assert!(out.status.success(), "c1: {}", text(&out.stderr));
    let mut flags = vec!["--rm"];
    flags.extend(member);
    // A second image into the same VM, run to its end.
    let out = env.run(&flags, "c2", &["sh", "-c", "cat /proc/1/comm; exit 6"]);
    assert_eq!(out.status.code(), Some(6), "c2: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "sh\n");
    env.wait_status("c1", "RUNNING");

    // One shim, one VM: the tasks report the same VMM PID.
    assert_eq!(env.shim_pids("pod1").len(), 1);
    assert!(env.shim_pids("c1").is_empty(), "c1 has a shim of its own");
    let pid = |id: &str| {
        env.task_line(id)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(pid("pod1"), pid("c1"));
    // Each container has its own root and processes.
    let out = c.exec("c1", "e1", &["cat", "/proc/1/comm"]);
    assert_eq!(text(&out.stdout), "sleep\n", "{}", text(&out.stderr));

    // The member goes; the pod's VM stays until its sandbox goes.
    env.remove("c1");
    let out = c.exec("pod1", "e2", &["cat", "/dev/shm/x"]);
    assert_eq!(text(&out.stdout), "from-sandbox\n", "{}", text(&out.stderr));
    env.remove("pod1");
    env.assert_clean();

    // A member whose sandbox is not there is refused at create.
    let mut flags = vec!["--rm"];
    flags.extend(member);
    let out = env.run(&flags, "orphan", &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pod sandbox pod1"),
        "{}",
        text(&out.stderr)
    );
    let _ = c.ctr(&["container", "delete", "orphan"]);
    env.assert_clean();
}

//! The `husk` CLI as runc's callers use it: each container a microVM (QEMU
//! TCG on hosts without hardware-backed KVM).

use std::io::Write;
use std::process::Stdio;

use integration_tests::cli::{Husk, processes_mentioning, text};

#[test]
fn run_prints_output_and_returns_the_exit_code() {
    let h = Husk::new("cli-run");
    let b = h.bundle(
        "b1",
        &["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"],
        serde_json::json!({}),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "r1"]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(3));
    // `run` without --keep removes the container.
    assert!(h.state("r1").is_none());

    // stdin reaches the process; EOF ends it.
    let b = h.bundle(
        "b2",
        &["/bin/sh", "-c", "tr a-z A-Z; echo done"],
        serde_json::json!({}),
    );
    let mut child = h
        .command(&["run", "--bundle", b.to_str().unwrap(), "r2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "SHOUT\ndone\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn lifecycle_create_start_state_exec_kill_delete() {
    let h = Husk::new("cli-life");
    let b = h.bundle(
        "b",
        &["/bin/sh", "-c", "echo started; exec sleep 1000"],
        serde_json::json!({"annotations": {"org.example": "x"}}),
    );
    let pid_file = h.dir.join("c1.pid");
    let log = h.dir.join("c1.out");
    let out = h
        .command(&[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(h.dir.join("c1.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        out.success(),
        "create: {}",
        std::fs::read_to_string(h.dir.join("c1.err")).unwrap()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = h.state("c1").unwrap();
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["bundle"], b.to_str().unwrap());
    assert_eq!(s["annotations"]["org.example"], "x");
    assert_eq!(s["ociVersion"], "1.0.2");
    // The pid lives: kill -0 works.
    // SAFETY: signal 0 only checks the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);

    // Errors: duplicate id, unknown container, invalid state transitions.
    let out = h.run(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert_eq!(text(&out.stderr), "husk: container c1 already exists\n");
    assert_eq!(out.status.code(), Some(1));
    let out = h.run(&["state", "nope"]);
    assert_eq!(text(&out.stderr), "husk: container nope does not exist\n");
    let out = h.run(&["exec", "c1", "/bin/true"]);
    assert!(
        text(&out.stderr).contains("it is created"),
        "{}",
        text(&out.stderr)
    );

    let out = h.run(&["start", "c1"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    assert_eq!(h.state("c1").unwrap()["status"], "running");
    let out = h.run(&["start", "c1"]);
    assert_eq!(
        text(&out.stderr),
        "husk: cannot start container c1: it is running\n"
    );

    // exec with args (foreground) and its exit code.
    let out = h.run(&["exec", "c1", "/bin/sh", "-c", "echo in $(hostname); exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("in "),
        "{}",
        text(&out.stdout)
    );
    // exec with --process, detached, with a pid file.
    let proc_file = h.dir.join("p.json");
    std::fs::write(&proc_file, serde_json::json!({"args": ["/bin/sleep", "30"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}).to_string()).unwrap();
    let xpid = h.dir.join("x.pid");
    // Detached: its stdio stays open, so not pipes (as with runc); errors
    // go to a file.
    let xerr = h.dir.join("x.err");
    let st = h
        .command(&[
            "exec",
            "--process",
            proc_file.to_str().unwrap(),
            "--detach",
            "--pid-file",
            xpid.to_str().unwrap(),
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&xerr).unwrap())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "exec -d failed ({st}): {}",
        std::fs::read_to_string(&xerr).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(&xpid)
            .unwrap()
            .trim()
            .parse::<i32>()
            .is_ok()
    );

    // ps lists the container's processes (sleep and the exec'd sleep).
    let out = h.run(&["ps", "--format", "json", "c1"]);
    let pids: Vec<i32> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stderr)));
    assert_eq!(pids.len(), 2, "{pids:?}");
    let out = h.run(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "c1");

    // pause / resume.
    assert!(h.run(&["pause", "c1"]).status.success());
    assert_eq!(h.state("c1").unwrap()["status"], "paused");
    let out = h.run(&["delete", "c1"]);
    assert!(
        text(&out.stderr).contains("not stopped"),
        "{}",
        text(&out.stderr)
    );
    assert!(h.run(&["resume", "c1"]).status.success());
    assert_eq!(h.state("c1").unwrap()["status"], "running");

    // kill: the container stops; its pid exits with 128 + 15.
    let out = h.run(&["kill", "c1", "KILL"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.state("c1").unwrap()["status"] != "stopped" {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(h.state("c1").unwrap()["pid"], 0);
    let out = h.run(&["kill", "c1", "TERM"]);
    assert_eq!(text(&out.stderr), "husk: container c1 is not running\n");
    let out = h.run(&["kill", "c1", "NOSUCH"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
    assert!(h.run(&["delete", "c1"]).status.success());
    assert!(h.state("c1").is_none());
    assert!(!h.root.join("c1").exists());
    assert!(
        std::fs::read_dir(h.root.join(".vm"))
            .unwrap()
            .next()
            .is_none(),
        "VM directory left"
    );
    assert!(
        processes_mentioning(&h.root).is_empty(),
        "{:?}",
        processes_mentioning(&h.root)
    );
    let out = h.run(&["delete", "c1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(h.run(&["delete", "--force", "c1"]).status.success());
}

#[test]
fn bad_input_fails_cleanly() {
    let h = Husk::new("cli-bad");
    let b = h.bundle("b", &["/bin/true"], serde_json::json!({}));
    // Invalid config.json names the field.
    let bad = h.bundle(
        "bad",
        &["/bin/true"],
        serde_json::json!({"process": {"args": []}}),
    );
    let out = h.run(&["create", "--bundle", bad.to_str().unwrap(), "x1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("process.args: empty"),
        "{}",
        text(&out.stderr)
    );
    assert!(!h.root.join("x1").exists(), "state left behind");
    // A missing bundle.
    let out = h.run(&["create", "--bundle", "/nonexistent", "x2"]);
    assert!(
        text(&out.stderr).contains("config.json"),
        "{}",
        text(&out.stderr)
    );
    // An invalid id.
    let out = h.run(&["create", "--bundle", b.to_str().unwrap(), "../x"]);
    assert!(
        text(&out.stderr).contains("invalid container id"),
        "{}",
        text(&out.stderr)
    );
    // A missing kernel: one line naming it, nothing left.
    std::fs::write(&h.config, "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
    let out = h.run(&["create", "--bundle", b.to_str().unwrap(), "x3"]);
    assert_eq!(
        text(&out.stderr),
        "husk: kernel /nonexistent/vmlinux: not found (set `kernel` in the husk config file, /etc/husk/config.toml or $HUSK_CONFIG)\n"
    );
    assert!(!h.root.join("x3").exists());
    assert_eq!(processes_mentioning(&h.root), Vec::<String>::new());
    // `spec` writes a default config.json once.
    let dir = h.dir.join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(
        h.run(&["spec", "--bundle", dir.to_str().unwrap()])
            .status
            .success()
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"][0], "sh");
    assert_eq!(spec["hostname"], "husk");
    assert!(
        !h.run(&["spec", "--bundle", dir.to_str().unwrap()])
            .status
            .success()
    );
    let out = h.run(&["features"]);
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["linux"]["cgroup"]["v2"], true);
    let out = h.run(&["--version"]);
    assert!(
        text(&out.stdout).starts_with("husk "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let h = Husk::new("cli-hooks");
    let out_dir = h.dir.join("hooks");
    std::fs::create_dir_all(&out_dir).unwrap();
    let hook = |kind: &str| {
        serde_json::json!([{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{kind}.json", out_dir.display())],
        }])
    };
    let hooks = serde_json::json!({
        "createRuntime": hook("createRuntime"),
        "createContainer": hook("createContainer"),
        "prestart": hook("prestart"),
        "startContainer": hook("startContainer"),
        "poststart": hook("poststart"),
        "poststop": hook("poststop"),
    });
    let b = h.bundle(
        "b",
        &["/bin/sleep", "1000"],
        serde_json::json!({"hooks": hooks}),
    );
    let seen = |kind: &str| -> Option<serde_json::Value> {
        let text = std::fs::read(out_dir.join(format!("{kind}.json"))).ok()?;
        Some(serde_json::from_slice(&text).unwrap())
    };
    let out = h.create(&b, "h1", &[]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let pid = h.state("h1").unwrap()["pid"].clone();
    for kind in ["createRuntime", "createContainer"] {
        let s = seen(kind).unwrap_or_else(|| panic!("{kind} did not run"));
        assert_eq!(s["status"], "creating", "{kind}");
        assert_eq!(s["id"], "h1");
        assert_eq!(s["pid"], pid);
        assert_eq!(s["bundle"], b.to_str().unwrap());
    }
    assert!(seen("prestart").is_none() && seen("startContainer").is_none());
    assert!(h.run(&["start", "h1"]).status.success());
    assert_eq!(seen("prestart").unwrap()["status"], "created");
    assert_eq!(seen("startContainer").unwrap()["status"], "created");
    assert_eq!(seen("poststart").unwrap()["status"], "running");
    assert!(seen("poststop").is_none());
    assert!(h.run(&["delete", "--force", "h1"]).status.success());
    assert_eq!(seen("poststop").unwrap()["status"], "stopped");

    // A failing createRuntime hook fails `create` and leaves nothing.
    let failing = serde_json::json!({"hooks": {"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 4"]}
    ]}});
    let b = h.bundle("bad", &["/bin/true"], failing);
    let out = h.create(&b, "h2", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "husk: createRuntime hook /bin/sh: exited with status 4: refused\n"
    );
    assert!(!h.root.join("h2").exists());
    assert!(
        processes_mentioning(&h.root).is_empty(),
        "{:?}",
        processes_mentioning(&h.root)
    );
}

#[test]
fn terminal_through_the_console_socket_and_update_and_events() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let h = Husk::new("cli-tty");
    let b = h.bundle(
        "b",
        &[
            "/bin/sh",
            "-c",
            "tty; stty size; read line; echo got $line; exec sleep 1000",
        ],
        serde_json::json!({"process": {"terminal": true}}),
    );
    // Without a console socket, a terminal process is refused.
    let out = h.create(&b, "t0", &[]);
    assert!(
        text(&out.stderr).contains("no --console-socket"),
        "{}",
        text(&out.stderr)
    );
    assert!(!h.root.join("t0").exists());

    let sock = h.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || integration_tests::cli::receive_fd(&listener));
    let out = h.create(&b, "t1", &["--console-socket", sock.to_str().unwrap()]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let mut master = receiver.join().unwrap();
    // A window size before the process starts reaches the guest's tty.
    let ws = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on the pty master.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(h.run(&["start", "t1"]).status.success());
    master.write_all(b"typed\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("got typed") {
        let n = master.read(&mut buf).expect("read the pty master");
        assert!(n > 0, "terminal closed: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert!(seen.contains("30 100\r\n"), "{seen:?}");

    // update sets the container's cgroup limits; events --stats shows them.
    let out = h.run(&["update", "--memory", "67108864", "--pids-limit", "50", "t1"]);
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    let out = h.run(&["events", "--stats", "t1"]);
    let ev: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stderr)));
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["data"]["memory_limit"], 67108864, "{ev}");
    assert_eq!(ev["data"]["pids_limit"], 50, "{ev}");
    let out = h.run(&["update", "--memory", "-5", "t1"]);
    assert!(!out.status.success() && !out.stderr.is_empty());
    let bad = h.dir.join("bad-resources.json");
    std::fs::write(&bad, "{\"memory\": {\"limit\": \"lots\"}}").unwrap();
    let out = h.run(&["update", "--resources", bad.to_str().unwrap(), "t1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // --preserve-fds cannot cross into a VM: said, not ignored.
    let out = h.run(&["exec", "--preserve-fds", "1", "t1", "/bin/true"]);
    assert!(
        text(&out.stderr).contains("not implemented: --preserve-fds"),
        "{}",
        text(&out.stderr)
    );
    assert!(h.run(&["delete", "--force", "t1"]).status.success());
    assert_eq!(processes_mentioning(&h.root), Vec::<String>::new());
}

#[test]
fn the_vm_is_sized_from_the_spec_and_annotations() {
    let h = Husk::new("cli-size");
    let report = "echo $(nproc) $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)";
    let sized = |name: &str, extra: serde_json::Value| -> (u32, u32) {
        let b = h.bundle(name, &["/bin/sh", "-c", report], extra);
        let out = h.run(&["run", "--bundle", b.to_str().unwrap(), name]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let t = text(&out.stdout);
        let mut it = t.split_whitespace().map(|v| v.parse::<u32>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    // Defaults: 1 vCPU, 256 MiB (the kernel keeps some for itself).
    let (cpus, mem) = sized("default", serde_json::json!({}));
    assert_eq!(cpus, 1);
    assert!((200..=256).contains(&mem), "{mem}");
    // A cpu quota of 1.5 CPUs and a 512 MiB limit: 2 vCPUs, 512 + 64 MiB.
    let (cpus, mem) = sized(
        "limits",
        serde_json::json!({"linux": {"resources": {
            "cpu": {"quota": 150000, "period": 100000},
            "memory": {"limit": 536870912}
        }}}),
    );
    assert_eq!(cpus, 2);
    assert!((500..=576).contains(&mem), "{mem}");
    // Annotations win.
    let (cpus, mem) = sized(
        "annotated",
        serde_json::json!({"annotations": {"io.husk.vcpus": "3", "io.husk.memory_mib": "384"}}),
    );
    assert_eq!(cpus, 3);
    assert!((330..=384).contains(&mem), "{mem}");
    // A bad annotation names itself.
    let b = h.bundle(
        "bad",
        &["/bin/true"],
        serde_json::json!({"annotations": {"io.husk.vcpus": "lots"}}),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("io.husk.vcpus"),
        "{}",
        text(&out.stderr)
    );
    assert!(!h.root.join("bad").exists());
}

#[test]
fn foreground_run_of_a_terminal_process_uses_the_callers_terminal() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let h = Husk::new("cli-fgtty");
    let b = h.bundle(
        "b",
        &["/bin/sh"],
        serde_json::json!({"process": {"terminal": true}}),
    );
    // The caller's terminal: a pty whose slave is husk's stdin and stdout.
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) fills two descriptors; the winsize outlives it.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0);
    // SAFETY: both descriptors were just opened and are owned here.
    let (mut master, slave) =
        unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) };
    let mut child = h
        .command(&["run", "--bundle", b.to_str().unwrap(), "fg"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(slave);
    master
        .write_all(b"stty size; echo in-$((40+2)); exit 3\n")
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("in-42") {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(seen.contains("in-42"), "{seen:?} {err}");
    assert!(seen.contains("24 80"), "{seen:?}");
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(h.state("fg").is_none());
    assert!(
        std::fs::read_dir(&h.root)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".console"))
    );
}

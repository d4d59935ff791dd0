//! Debian's podman with husk as its OCI runtime (`podman --runtime husk`):
//! podman and conmon drive husk exactly as they drive runc.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use integration_tests::cli::{Husk, processes_mentioning, text};
use integration_tests::podman::Podman;

/// husk's default root, which podman uses: podman 4.3 passes neither its
/// runtime flags nor its environment to `husk delete`.
const ROOT: &str = "/run/husk";

/// `podman --runtime husk` with the test's husk configuration as a
/// runtime flag.
fn podman(p: &Podman, h: &Husk, args: &[&str]) -> Command {
    let mut c = p.command();
    c.arg("--runtime")
        .arg(Husk::binary())
        .arg(format!("--runtime-flag=config={}", h.config.display()))
        .args(args);
    c
}

fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run podman")
}

#[test]
fn podman_runs_containers_through_husk() {
    let h = Husk::new("podman");
    let p = Podman::new("husk");
    let image = p.image().to_string();

    // Output, and the exit code.
    let out = output(podman(&p, &h, &["run", "--rm", &image, "echo", "hello"]));
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    let out = output(podman(
        &p,
        &h,
        &["run", "--rm", &image, "sh", "-c", "echo err >&2; exit 7"],
    ));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    // Interactive stdin without a terminal: EOF ends the process.
    let mut child = podman(
        &p,
        &h,
        &[
            "run",
            "--rm",
            "-i",
            &image,
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "SHOUT\ndone\n", "{}", text(&out.stderr));

    // Detached, then logs, exec, stop.
    let out = output(podman(
        &p,
        &h,
        &[
            "run",
            "-d",
            "--name",
            "d1",
            &image,
            "sh",
            "-c",
            "echo up; exec sleep 1000",
        ],
    ));
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let logs = output(podman(&p, &h, &["logs", "d1"]));
        if text(&logs.stdout) == "up\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs: {:?} {}",
            text(&logs.stdout),
            text(&logs.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = output(podman(
        &p,
        &h,
        &[
            "exec",
            "d1",
            "sh",
            "-c",
            "echo in $(cat /proc/1/comm); exit 3",
        ],
    ));
    assert_eq!(text(&out.stdout), "in sleep\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
    let out = output(podman(&p, &h, &["exec", "-i", "d1", "cat"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // sleep as PID 1 ignores SIGTERM: stop escalates to SIGKILL.
    let out = output(podman(&p, &h, &["stop", "-t", "1", "d1"]));
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let out = output(podman(
        &p,
        &h,
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "d1",
        ],
    ));
    assert_eq!(
        text(&out.stdout).trim(),
        "exited 137",
        "{}",
        text(&out.stderr)
    );

    // kill with a signal the process handles.
    let script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done";
    let out = output(podman(
        &p,
        &h,
        &["run", "-d", "--name", "d2", &image, "sh", "-c", script],
    ));
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while text(&output(podman(&p, &h, &["logs", "d2"])).stdout) != "ready\n" {
        assert!(std::time::Instant::now() < deadline, "d2 never got ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = output(podman(&p, &h, &["kill", "--signal", "TERM", "d2"]));
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let out = output(podman(&p, &h, &["wait", "d2"]));
    assert_eq!(text(&out.stdout).trim(), "42", "{}", text(&out.stderr));
    let out = output(podman(&p, &h, &["logs", "d2"]));
    assert_eq!(text(&out.stdout), "ready\ngot TERM\n");

    // Removing the containers leaves nothing of husk behind.
    let out = output(podman(
        &p,
        &h,
        &["ps", "--all", "--no-trunc", "--format", "{{.ID}}"],
    ));
    let ids: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 2, "{}", text(&out.stderr));
    let out = output(podman(&p, &h, &["rm", "-f", "d1", "d2"]));
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    let root = std::path::Path::new(ROOT);
    for id in &ids {
        assert!(!root.join(id).exists(), "state of {id} left");
        assert!(
            processes_mentioning(&root.join(id)).is_empty(),
            "{:?}",
            processes_mentioning(&root.join(id))
        );
    }
    // The --rm containers are gone too: no state dir holds a bundle of
    // this podman's.
    let bundles = p.dir().display().to_string();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let state = std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
        assert!(!state.contains(&bundles), "left: {}", e.path().display());
    }
}

//! containerd's own runc shim (`io.containerd.runc.v2`) with husk as its
//! runc binary (`ctr run --runc-binary husk`): every container a microVM
//! behind containerd's unchanged shim.

use integration_tests::cli::{Husk, processes_mentioning, text};
use integration_tests::containerd::Containerd;

#[test]
fn containerds_runc_shim_drives_husk() {
    let h = Husk::new("ctr-runc");
    // The shims, and the husk they run, inherit containerd's environment.
    let c = Containerd::start("runc-shim", &[("HUSK_CONFIG", h.config.as_path())]);
    let husk = Husk::binary();
    let husk = husk.to_str().unwrap();
    let image = c.image().to_string();

    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        husk,
        &image,
        "r1",
        "echo",
        "hello",
    ]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        husk,
        &image,
        "r2",
        "sh",
        "-c",
        "echo oops >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "oops\n");

    // Detached, exec, kill, delete.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        husk,
        &image,
        "d1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = c.exec(
        "d1",
        "e1",
        &["sh", "-c", "echo in $(cat /proc/1/comm); exit 3"],
    );
    assert_eq!(text(&out.stdout), "in sleep\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
    let out = c.ctr(&["task", "kill", "--signal", "SIGKILL", "d1"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ls = text(&c.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.starts_with("d1 ") && l.contains("STOPPED"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "d1 never stopped: {ls}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(c.ctr(&["task", "delete", "d1"]).status.success());
    assert!(c.ctr(&["container", "delete", "d1"]).status.success());

    // Nothing of husk left in the runc shim's root.
    let root = std::path::Path::new("/run/containerd/runc").join(c.namespace());
    let left: Vec<_> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".vm")
        .collect();
    assert!(
        left.is_empty(),
        "state left in {}: {left:?}",
        root.display()
    );
    assert!(
        processes_mentioning(&root).is_empty(),
        "{:?}",
        processes_mentioning(&root)
    );
    let _ = std::fs::remove_dir_all(&root);
}

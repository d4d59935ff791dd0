//! `husk run` against runc and crun (Debian's) in the same invocation:
//! median wall time of `run` of `echo hello` on one busybox bundle, husk's
//! time split into VM boot and host-side work (from its `--debug` log),
//! `podman run --rm` with husk against podman with runc, and the memory of
//! one idle container (PSS of every host process husk keeps for it, and the
//! guest memory it touched) against runc's. Prints figures; asserts
//! nothing.
//!
//!   cargo build --release --workspace
//!   ./target/release/bench-cli-run [RUNS]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use husk_bench::{comm, median, mib, pss_kib, report, tree};
use integration_tests::cli::{Husk, text};
use integration_tests::podman::Podman;

/// Runs `cmd` `runs` times; each must print exactly `hello`. Returns the
/// wall times (ms), or the first failure.
fn time_runs(runs: usize, mut make: impl FnMut(usize) -> Command) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    for i in 0..runs {
        let mut cmd = make(i);
        let t = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn: {e}"))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() || text(&out.stdout) != "hello\n" {
            let err = text(&out.stderr);
            return Err(format!(
                "{}: {}",
                out.status,
                err.lines().last().unwrap_or("").trim()
            ));
        }
        times.push(ms);
    }
    Ok(times)
}

/// An OCI runtime's CLI with a private root.
fn oci(program: &str, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.arg("--root").arg(root).args(args);
    c
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let h = Husk::new("bench-cli");
    let bundle = h.bundle("bundle", &["/bin/echo", "hello"], serde_json::json!({}));
    let b = bundle.to_str().unwrap().to_string();
    let log = h.dir.join("husk.log");
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM: Linux guests under QEMU TCG"
    } else {
        "hardware-backed"
    };
    println!(
        "husk run benchmark: `echo hello` in a busybox bundle, {runs} runs each; host KVM {kvm}"
    );

    // 1. `run` with each runtime on the same bundle.
    let husk = time_runs(runs, |i| {
        let mut c = h.command(&[
            "--debug",
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
        ]);
        c.args(["run", "--bundle", &b, &format!("bench-{i}")]);
        c
    });
    let peers: Vec<(&str, Result<Vec<f64>, String>)> = ["runc", "crun"]
        .iter()
        .map(|rt| {
            let root = h.dir.join(&format!("{rt}-root"));
            let r = time_runs(runs, |i| {
                oci(rt, &root, &["run", "--bundle", &b, &format!("{rt}-{i}")])
            });
            (*rt, r)
        })
        .collect();
    let husk_ms = report("husk run", &husk);
    for (rt, r) in &peers {
        let m = report(&format!("{rt} run"), r);
        if let (Some(h), Some(p)) = (husk_ms, m) {
            println!("ratio husk/{rt}: {:.1}x", h / p);
        }
    }

    // Where husk's time goes, from the monitor's debug lines.
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    let created: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "container created")
        .collect();
    let field = |k: &str| {
        median(
            &created
                .iter()
                .filter_map(|v| v[k].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    if let Some(total) = husk_ms {
        let image = field("image_ms");
        let ready = field("agent_ready_ms");
        let created = field("created_ms");
        println!(
            "husk split (medians): root image {image:.1} ms | VM launch to agent serving {:.1} ms (guest clock, kernel start to agent: {:.1} ms) | sandbox and container creation {:.1} ms | start, run, exit, teardown {:.1} ms",
            ready - image,
            field("guest_boot_ms"),
            created - ready,
            total - created
        );
    }

    // 2. podman run --rm with husk and with runc.
    let p = Podman::new("bench");
    let image = p.image().to_string();
    let config = format!("--runtime-flag=config={}", h.config.display());
    let husk_bin = Husk::binary();
    let podman_husk = time_runs(runs, |_| {
        let mut c = p.command();
        c.arg("--runtime").arg(&husk_bin).arg(&config);
        c.args(["run", "--rm", &image, "echo", "hello"]);
        c
    });
    let podman_runc = time_runs(runs, |_| {
        let mut c = p.command();
        c.args(["--runtime", "runc", "run", "--rm", &image, "echo", "hello"]);
        c
    });
    let podman_crun = time_runs(runs, |_| {
        let mut c = p.command();
        c.args(["--runtime", "crun", "run", "--rm", &image, "echo", "hello"]);
        c
    });
    let a = report("podman run (husk)", &podman_husk);
    for (name, r) in [("runc", &podman_runc), ("crun", &podman_crun)] {
        let m = report(&format!("podman run ({name})"), r);
        if let (Some(a), Some(m)) = (a, m) {
            println!("ratio podman husk/{name}: {:.1}x", a / m);
        }
    }
    drop(p);

    // 3. Memory of one idle container.
    let idle = h.bundle("idle", &["/bin/sleep", "1000"], serde_json::json!({}));
    let id = "bench-idle";
    let st = h
        .command(&["create", "--bundle", idle.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("husk create");
    if st.success() && h.run(&["start", id]).status.success() {
        std::thread::sleep(std::time::Duration::from_secs(3));
        let pid = h
            .state(id)
            .map_or(0, |s| s["pid"].as_i64().unwrap_or(0) as i32);
        let (mut total, mut guest) = (0, 0);
        let mut parts = Vec::new();
        for p in tree(pid) {
            let (all, memfd) = pss_kib(p);
            total += all;
            guest += memfd;
            parts.push(format!("{} {:.1}", comm(p), mib(all - memfd)));
        }
        println!(
            "husk idle container: {:.1} MiB PSS in all = host processes {:.1} MiB ({}) + guest memory touched {:.1} MiB",
            mib(total),
            mib(total - guest),
            parts.join(", "),
            mib(guest)
        );
        let _ = h.run(&["delete", "--force", id]);
        let root = h.dir.join("runc-root");
        let ok = oci(
            "runc",
            &root,
            &[
                "run",
                "--detach",
                "--bundle",
                idle.to_str().unwrap(),
                "runc-idle",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
        if ok {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let out = oci("runc", &root, &["state", "runc-idle"])
                .output()
                .unwrap();
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let rpid = s["pid"].as_i64().unwrap_or(0) as i32;
            let (all, _) = pss_kib(rpid);
            println!(
                "runc idle container: {:.2} MiB PSS (the container's process; runc keeps no process); ratio husk/runc {:.0}x",
                mib(all),
                mib(total) / mib(all.max(1))
            );
            let _ = oci("runc", &root, &["delete", "--force", "runc-idle"]).status();
        }
        println!("reference (not measured here): Kata Containers about 124 MiB per container");
    } else {
        println!("husk idle container: create/start failed");
    }
}

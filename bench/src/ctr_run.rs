//! containerd with the husk shim against containerd with runc, in one
//! invocation on one private containerd: median wall time of
//! `ctr run --rm <busybox> echo hello`, husk's time split into host-side
//! work and guest boot (from the shim's `task timings` log lines), and the
//! memory of idle tasks (PSS of each task's shim process tree: for husk the
//! shim, QEMU with the guest memory it touched, and the vsock helper; for
//! runc the shim and the container's processes). Prints figures; asserts
//! nothing.
//!
//!   cargo build --release --workspace
//!   ./target/release/bench-ctr-run [RUNS] [IDLE_TASKS]

use std::time::{Duration, Instant};

use husk_bench::{median, print_idle_memory, report, shim_timings};
use integration_tests::cli::text;
use integration_tests::shim::{RUNTIME, ShimEnv};

/// containerd's own runc shim.
const RUNC: &str = "io.containerd.runc.v2";

/// One `ctr run --rm … echo hello`; its wall time (ms) or why it failed.
fn run_once(env: &ShimEnv, runtime: &str, id: &str) -> Result<f64, String> {
    let t = Instant::now();
    let out = env.run_with(runtime, &["--rm"], id, &["echo", "hello"]);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if out.status.success() && text(&out.stdout) == "hello\n" {
        Ok(ms)
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            text(&out.stderr).lines().last().unwrap_or("").trim()
        ))
    }
}

fn idle_tasks(env: &ShimEnv, runtime: &str, prefix: &str, n: usize) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let out = env.run_with(runtime, &["-d"], &id, &["sleep", "100000"]);
        if !out.status.success() {
            return Err(text(&out.stderr).lines().last().unwrap_or("").to_string());
        }
        ids.push(id);
    }
    // Let the guests settle.
    std::thread::sleep(Duration::from_secs(3));
    Ok(ids)
}

fn remove_tasks(env: &ShimEnv, ids: &[String]) {
    for id in ids {
        let _ = env
            .containerd
            .ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    }
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.task_line(id).is_some_and(|l| !l.contains("STOPPED")) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = env.containerd.ctr(&["task", "delete", id]);
        let _ = env.containerd.ctr(&["container", "delete", id]);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let idle: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let env = ShimEnv::start("bench-ctr");
    println!("ctr run --rm <busybox> echo hello, {runs} runs each, one containerd:");
    // Warm caches for both.
    let _ = run_once(&env, RUNTIME, "warm-husk");
    let _ = run_once(&env, RUNC, "warm-runc");
    let (mut husk, mut runc) = (Ok(Vec::new()), Ok(Vec::new()));
    for i in 0..runs {
        for (name, runtime, acc) in [("husk", RUNTIME, &mut husk), ("runc", RUNC, &mut runc)] {
            if let Ok(v) = acc {
                match run_once(&env, runtime, &format!("b-{name}-{i}")) {
                    Ok(ms) => v.push(ms),
                    Err(e) => *acc = Err(e),
                }
            }
        }
    }
    let h = report("husk (io.containerd.husk.v2)", &husk);
    let r = report("runc (io.containerd.runc.v2)", &runc);
    if let (Some(h), Some(r)) = (h, r) {
        println!("ratio husk/runc: {:.2}x", h / r);
    }
    let t: Vec<serde_json::Value> = shim_timings(env.containerd.dir())
        .into_iter()
        .filter(|(id, _)| id.starts_with("b-husk-"))
        .map(|(_, t)| t)
        .collect();
    if !t.is_empty() {
        let field = |k: &str| {
            median(
                &t.iter()
                    .map(|v| v[k].as_f64().unwrap_or(0.0))
                    .collect::<Vec<_>>(),
            )
        };
        let host: Vec<f64> = t
            .iter()
            .map(|v| {
                ["host_prepare_ms", "host_create_ms", "start_ms", "delete_ms"]
                    .iter()
                    .map(|k| v[*k].as_f64().unwrap_or(0.0))
                    .sum()
            })
            .collect();
        println!(
            "husk split (medians of {} tasks, from the shim's log):",
            t.len()
        );
        println!(
            "  host: create → VM launched       {:>8.1} ms",
            field("host_prepare_ms")
        );
        println!(
            "  guest boot (VM → agent ready)   {:>8.1} ms",
            field("guest_boot_ms")
        );
        println!(
            "  host: agent ready → created     {:>8.1} ms",
            field("host_create_ms")
        );
        println!(
            "  guest: create container         {:>8.1} ms",
            field("guest_create_ms")
        );
        println!(
            "  host: start                     {:>8.1} ms",
            field("start_ms")
        );
        println!(
            "  host: exit → deleted            {:>8.1} ms",
            field("delete_ms")
        );
        let hs = median(&host);
        print!("  host-side total                 {hs:>8.1} ms");
        if let Some(r) = r {
            println!("  (target: <= runc total + 50 = {:.1} ms)", r + 50.0);
        } else {
            println!();
        }
    }

    println!("memory of {idle} idle tasks (sleep), PSS of each task's shim tree:");
    for (name, runtime, shim) in [
        ("husk", RUNTIME, "containerd-shim-husk-v2"),
        ("runc", RUNC, "containerd-shim-runc-v2"),
    ] {
        match idle_tasks(&env, runtime, &format!("idle-{name}"), idle) {
            Ok(ids) => {
                print_idle_memory(name, "task", env.containerd.namespace(), shim, &ids);
                remove_tasks(&env, &ids);
            }
            Err(e) => println!("  {name}: failed: {e}"),
        }
    }
    println!("CRI pods: see bench-cri-run");
}

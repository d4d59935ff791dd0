//! Pods through containerd's CRI plugin, husk against runc, in one
//! invocation on one private containerd: median wall time of a pod start
//! as the kubelet does it (RunPodSandbox + CreateContainer + StartContainer
//! of one busybox container), the teardown (StopPodSandbox +
//! RemovePodSandbox), and the memory of idle pods (a sandbox and one
//! sleeping container each; PSS of the pod's shim process tree: for husk
//! the shim, QEMU with the guest memory it touched, and the vsock helper;
//! for runc the shim, pause and the container). Prints figures; asserts
//! nothing.
//!
//!   cargo build --release --workspace
//!   ./target/release/bench-cri-run [RUNS] [IDLE_PODS]

use std::time::{Duration, Instant};

use husk_bench::{median, print_idle_memory, report, shim_timings};
use integration_tests::containerd::CRI_HANDLER;
use integration_tests::cri::{Cri, container_config, pod_config};
use integration_tests::image::IMAGE;
use integration_tests::shim::ShimEnv;

/// A started pod: its ID, its container's, and how long starting took (ms).
struct Started {
    pod: String,
    container: String,
    ms: f64,
}

/// Starts pod `name` with one sleeping container, or says why it failed.
fn start_pod(cri: &mut Cri, env: &ShimEnv, handler: &str, name: &str) -> Result<Started, String> {
    let cfg = pod_config(name, &env.husk.dir.join("logs"));
    let t = Instant::now();
    let pod = cri
        .run_pod(&cfg, handler)
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?;
    let c = cri
        .create_container(
            &pod,
            &cfg,
            container_config("main", IMAGE, &["sleep", "100000"]),
        )
        .map_err(|e| format!("CreateContainer: {}", e.message()))?;
    cri.start_container(&c)
        .map_err(|e| format!("StartContainer: {}", e.message()))?;
    Ok(Started {
        pod,
        container: c,
        ms: t.elapsed().as_secs_f64() * 1e3,
    })
}

/// Stops and removes pod `pod`; the time it took (ms).
fn remove_pod(cri: &mut Cri, pod: &str) -> Result<f64, String> {
    let t = Instant::now();
    cri.stop_pod(pod)
        .map_err(|e| format!("StopPodSandbox: {}", e.message()))?;
    cri.remove_pod(pod)
        .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let idle: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let env = ShimEnv::start_cri("bench-cri");
    std::fs::create_dir_all(env.husk.dir.join("logs")).expect("log directory");
    let mut cri = Cri::connect(&env.containerd.socket());
    let runtimes = [
        ("husk", CRI_HANDLER, "containerd-shim-husk-v2"),
        ("runc", "runc", "containerd-shim-runc-v2"),
    ];

    println!("CRI pod start (RunPodSandbox + CreateContainer + StartContainer), {runs} runs each:");
    // Warm caches for both.
    for (name, handler, _) in runtimes {
        if let Ok(s) = start_pod(&mut cri, &env, handler, &format!("warm-{name}")) {
            let _ = remove_pod(&mut cri, &s.pod);
        }
    }
    let mut start = [Ok(Vec::new()), Ok(Vec::new())];
    let mut stop = [Ok(Vec::new()), Ok(Vec::new())];
    let (mut sandboxes, mut containers) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (k, (name, handler, _)) in runtimes.iter().enumerate() {
            if start[k].is_err() || stop[k].is_err() {
                continue;
            }
            match start_pod(&mut cri, &env, handler, &format!("b-{name}-{i}")) {
                Ok(s) => {
                    if let Ok(v) = &mut start[k] {
                        v.push(s.ms);
                    }
                    if k == 0 {
                        sandboxes.push(s.pod.clone());
                        containers.push(s.container.clone());
                    }
                    match remove_pod(&mut cri, &s.pod) {
                        Ok(ms) => {
                            if let Ok(v) = &mut stop[k] {
                                v.push(ms);
                            }
                        }
                        Err(e) => stop[k] = Err(e),
                    }
                }
                Err(e) => start[k] = Err(e),
            }
        }
    }
    let h = report("husk start", &start[0]);
    let r = report("runc start", &start[1]);
    if let (Some(h), Some(r)) = (h, r) {
        println!("ratio husk/runc (start): {:.2}x", h / r);
    }
    let h = report("husk teardown", &stop[0]);
    let r = report("runc teardown", &stop[1]);
    if let (Some(h), Some(r)) = (h, r) {
        println!("ratio husk/runc (teardown): {:.2}x", h / r);
    }

    print_split(&env, &sandboxes, &containers);

    println!("memory of {idle} idle pods (sandbox + sleep), PSS of each pod's shim tree:");
    for (name, handler, shim) in runtimes {
        let mut pods = Vec::new();
        let mut failed = None;
        for i in 0..idle {
            match start_pod(&mut cri, &env, handler, &format!("idle-{name}-{i}")) {
                Ok(s) => pods.push(s.pod),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                // Let the guests settle.
                std::thread::sleep(Duration::from_secs(3));
                print_idle_memory(name, "pod", env.containerd.namespace(), shim, &pods);
            }
            Some(e) => println!("  {name}: failed: {e}"),
        }
        for pod in &pods {
            let _ = remove_pod(&mut cri, pod);
        }
    }
}

/// Prints the medians of the husk shim's timings for the pods' sandbox and
/// container tasks.
fn print_split(env: &ShimEnv, sandboxes: &[String], containers: &[String]) {
    let all = shim_timings(env.containerd.dir());
    let of = |ids: &[String]| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(_, t)| t.clone())
            .collect()
    };
    let (s, c) = (of(sandboxes), of(containers));
    if s.is_empty() || c.is_empty() {
        return;
    }
    let field = |t: &[serde_json::Value], k: &str| {
        median(
            &t.iter()
                .map(|v| v[k].as_f64().unwrap_or(0.0))
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "husk split (medians of {} pods, from the shim's log):",
        s.len()
    );
    println!(
        "  sandbox  host: create → VM launched   {:>8.1} ms",
        field(&s, "host_prepare_ms")
    );
    println!(
        "  sandbox  guest boot                   {:>8.1} ms",
        field(&s, "guest_boot_ms")
    );
    println!(
        "  sandbox  host: agent ready → created  {:>8.1} ms",
        field(&s, "host_create_ms")
    );
    println!(
        "  sandbox  guest: create                {:>8.1} ms",
        field(&s, "guest_create_ms")
    );
    println!(
        "  container host: image into the VM     {:>8.1} ms",
        field(&c, "host_prepare_ms")
    );
    println!(
        "  container host: created               {:>8.1} ms",
        field(&c, "host_create_ms")
    );
    println!(
        "  container guest: create               {:>8.1} ms",
        field(&c, "guest_create_ms")
    );
    println!(
        "  container host: start                 {:>8.1} ms",
        field(&c, "start_ms")
    );
}

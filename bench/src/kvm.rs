//! husk-vmm against QEMU microvm with KVM, in one invocation on a host
//! whose KVM runs Linux (hardware-backed KVM, or the nested lab's L1:
//! `bench-lab` runs this there). Same guest kernel, same initramfs, 1 vCPU,
//! 256 MiB; runs interleaved (husk-vmm, QEMU, husk-vmm, …) so that a slow
//! moment hits both. Prints figures and ratios; asserts nothing.
//!
//! 1. launch → a user-space marker (the tiny static init's line);
//! 2. launch → the agent answering (`Version` over vsock);
//! 3. `husk run` of `echo hello` (`hypervisor` = husk-vmm / qemu);
//! 4. `ctr run --rm` through `containerd-shim-husk-v2`;
//! 5. one idle container: the VMM's memory besides guest RAM, and the guest
//!    RAM it touched;
//! 6. husk-vmm's vCPU exits by reason for the boot to the marker.
//!
//!   cargo run --release -p husk-bench --bin bench-kvm [-- RUNS]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_bench::{comm, mib, report, tree};
use husk_host::hypervisor::{Backend, VmSpec};
use husk_host::sandbox::boot::boot_vm;
use integration_tests::cli::{Husk, text};
use integration_tests::host::{HostKvm, TempDir, bin, require_kvm};
use integration_tests::shim::ShimEnv;
use integration_tests::{agent, initramfs, linux};

const MEM_MIB: u32 = 256;

/// Spawns `cmd` (the guest console on its stdout) and returns the time to
/// the first console line holding `marker`; kills it then.
fn time_to_marker(mut cmd: Command, marker: &str) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut t = None;
    for line in out.lines() {
        let Ok(line) = line else { break };
        if line.contains(marker) {
            t = Some(start.elapsed().as_secs_f64() * 1e3);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    t.ok_or_else(|| format!("no {marker:?} on the console"))
}

fn husk_vmm_cmd(dir: &TempDir, kernel: &Path, initrd: &Path, metrics: Option<&Path>) -> Command {
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "initrd_path": initrd,
                        "boot_args": "console=ttyS0 reboot=k panic=-1 quiet"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut c = Command::new(bin("husk-vmm"));
    c.args(["--no-api", "--config-file"]).arg(path);
    if let Some(m) = metrics {
        c.arg("--metrics-path").arg(m);
    }
    c
}

fn qemu_cmd(kernel: &Path, initrd: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
        .args(["-m", &MEM_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"]);
    c
}

/// Launch → the agent answering, with `backend`, on the sandbox's boot
/// path (`husk_host::sandbox::boot::boot_vm`, as `husk run` and the shim).
fn agent_ready(backend: Backend, dir: &TempDir, spec: &VmSpec) -> Result<f64, String> {
    let start = Instant::now();
    let vm_dir = dir.join(&format!("vm-{}", start.elapsed().as_nanos()));
    std::fs::create_dir_all(&vm_dir).map_err(|e| e.to_string())?;
    let mut booted = boot_vm(backend, &vm_dir, spec).map_err(|e| e.to_string());
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if let Ok(b) = &mut booted {
        b.vm.kill();
    }
    let _ = std::fs::remove_dir_all(&vm_dir);
    if booted?.rebooted {
        eprintln!("({backend:?}: the first VM's vsock never answered; a second one did)");
    }
    Ok(ms)
}

/// Runs `cmd`, which must print `hello`; returns its wall time.
fn time_hello(mut cmd: Command) -> Result<f64, String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() || !text(&out.stdout).contains("hello") {
        return Err(format!(
            "{}: {}",
            out.status,
            text(&out.stderr).lines().last().unwrap_or("")
        ));
    }
    Ok(ms)
}

/// Collects interleaved samples: `runs` of each of `n` contenders.
fn interleaved<const N: usize>(
    runs: usize,
    mut one: impl FnMut(usize, usize) -> Result<f64, String>,
) -> [Result<Vec<f64>, String>; N] {
    let mut out: [Result<Vec<f64>, String>; N] = std::array::from_fn(|_| Ok(Vec::new()));
    for run in 0..runs {
        for (who, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = slot {
                match one(who, run) {
                    Ok(ms) => v.push(ms),
                    Err(e) => *slot = Err(e),
                }
            }
        }
    }
    out
}

fn ratio(what: &str, a: Option<f64>, b: Option<f64>) {
    if let (Some(a), Some(b)) = (a, b) {
        println!("ratio {what}: {:.2}", a / b);
    }
}

/// Resident KiB of `pid`: (all, the mapping of `guest_mib` MiB: guest RAM).
fn rss_split(pid: i32, guest_mib: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let guest_kib = u64::from(guest_mib) * 1024;
    let (mut all, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = (b - a) / 1024 == guest_kib;
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            all += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    (all, guest)
}

/// One idle container with `config`: the VMM's resident memory besides
/// guest RAM, and the guest RAM it touched (MiB).
fn idle_memory(h: &Husk, config: &Path, bundle: &str, id: &str) -> Result<(f64, f64), String> {
    // Detached: the container keeps its stdio open, so not pipes.
    let err = h.dir.join(&format!("{id}.err"));
    let status = h
        .command(&["run", "--detach", "--bundle", bundle, id])
        .env("HUSK_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(std::fs::read_to_string(&err).unwrap_or_default());
    }
    // Settle: the guest's boot-time allocations are done.
    std::thread::sleep(Duration::from_secs(3));
    let state = h.state(id).ok_or("no state")?;
    let monitor = state["pid"].as_i64().ok_or("no pid")? as i32;
    let vmm = tree(monitor)
        .into_iter()
        .find(|p| {
            let c = comm(*p);
            c.starts_with("husk-vmm") || c.starts_with("qemu-system")
        })
        .ok_or("no VMM process")?;
    let (all, guest) = rss_split(vmm, MEM_MIB);
    let _ = h
        .command(&["delete", "--force", id])
        .env("HUSK_CONFIG", config)
        .output();
    Ok((mib(all - guest), mib(guest)))
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    if require_kvm() != HostKvm::Hardware {
        eprintln!(
            "bench-kvm needs a KVM that runs Linux; on a PVM host run it in the lab: bench-lab"
        );
        std::process::exit(1);
    }
    let kernel = linux::kernel();
    let dir = TempDir::new("bench-kvm");
    let tiny = dir.join("tiny.cpio");
    std::fs::write(&tiny, initramfs::tiny_initramfs()).unwrap();
    println!(
        "husk-vmm against QEMU microvm (-accel kvm), the husk guest kernel, 1 vCPU, {MEM_MIB} MiB, \
         {runs} interleaved runs each"
    );

    // 1. Launch → user-space marker.
    let [h, q] = interleaved::<2>(runs, |who, _| match who {
        0 => time_to_marker(husk_vmm_cmd(&dir, &kernel, &tiny, None), "HUSK-INIT-RAN"),
        _ => time_to_marker(qemu_cmd(&kernel, &tiny), "HUSK-INIT-RAN"),
    });
    let (hm, qm) = (report("marker husk-vmm", &h), report("marker qemu-kvm", &q));
    ratio("husk-vmm/qemu-kvm to the marker", hm, qm);

    // 6 (with 1): husk-vmm's exits for the whole boot (the tiny init
    // restarts the machine right after its line; the VMM writes its
    // metrics as it ends).
    let metrics = dir.join("metrics.json");
    let mut cmd = husk_vmm_cmd(&dir, &kernel, &tiny, Some(&metrics));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn husk-vmm");
    let _ = integration_tests::vmm::wait_output(child, Duration::from_secs(120));
    let exits = std::fs::read_to_string(&metrics).unwrap_or_default();
    let exits = exits
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["vcpu_exits"].to_string())
        .unwrap_or_else(|| "(none written)".into());
    println!("husk-vmm exits, boot to the marker and reset: {exits}");

    // 2. Launch → the agent answering.
    let agent_initrd = dir.join("agent.cpio");
    std::fs::write(&agent_initrd, agent::initramfs(&agent::binary())).unwrap();
    let spec = VmSpec {
        kernel: kernel.clone(),
        initrd: agent_initrd.clone(),
        vcpus: 1,
        memory_mib: MEM_MIB,
        ..VmSpec::default()
    };
    let [h, q] = interleaved::<2>(runs, |who, _| {
        let backend = if who == 0 {
            Backend::HuskVmm
        } else {
            Backend::Qemu
        };
        agent_ready(backend, &dir, &spec)
    });
    let (ha, qa) = (report("agent husk-vmm", &h), report("agent qemu-kvm", &q));
    ratio("husk-vmm/qemu-kvm to the agent", ha, qa);

    // 3. `husk run`.
    let husk = Husk::new("bench-kvm-cli");
    let bundle = husk.bundle("hello", &["/bin/echo", "hello"], serde_json::json!({}));
    let b = bundle.to_str().unwrap().to_string();
    let base = std::fs::read_to_string(&husk.config).unwrap();
    let configs: Vec<PathBuf> = ["husk-vmm", "qemu"]
        .iter()
        .map(|hv| {
            let p = husk.dir.join(&format!("config-{hv}.toml"));
            std::fs::write(
                &p,
                format!("{base}memory_mib = {MEM_MIB}\nhypervisor = \"{hv}\"\n"),
            )
            .unwrap();
            p
        })
        .collect();
    let [h, q] = interleaved::<2>(runs, |who, run| {
        let mut c = husk.command(&["run", "--bundle", &b, &format!("run-{who}-{run}")]);
        c.env("HUSK_CONFIG", &configs[who]);
        time_hello(c)
    });
    let (hr, qr) = (
        report("husk run husk-vmm", &h),
        report("husk run qemu-kvm", &q),
    );
    ratio("husk-vmm/qemu-kvm husk run", hr, qr);

    // 4. `ctr run` through the shim.
    let env = ShimEnv::start("bench-kvm-ctr");
    let [h, q] = interleaved::<2>(runs, |who, run| {
        let hv = if who == 0 { "husk-vmm" } else { "qemu" };
        let ann = format!("io.husk.hypervisor={hv}");
        let id = format!("ctr-{who}-{run}");
        let t = Instant::now();
        let out = env.run(&["--rm", "--annotation", &ann], &id, &["echo", "hello"]);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if out.status.success() && text(&out.stdout).contains("hello") {
            Ok(ms)
        } else {
            Err(format!("{}: {}", out.status, text(&out.stderr).trim()))
        }
    });
    let (hc, qc) = (
        report("ctr run husk-vmm", &h),
        report("ctr run qemu-kvm", &q),
    );
    ratio("husk-vmm/qemu-kvm ctr run", hc, qc);

    // 5. One idle container.
    let sleeper = husk.bundle("idle", &["/bin/sleep", "1000"], serde_json::json!({}));
    let s = sleeper.to_str().unwrap().to_string();
    for (who, config) in ["husk-vmm", "qemu-kvm"].iter().zip(&configs) {
        match idle_memory(&husk, config, &s, &format!("idle-{who}")) {
            Ok((vmm, guest)) => println!(
                "idle container {who:<9} VMM besides guest RAM {vmm:>6.1} MiB, guest RAM touched {guest:>6.1} MiB"
            ),
            Err(e) => println!("idle container {who:<9} failed: {e}"),
        }
    }
}

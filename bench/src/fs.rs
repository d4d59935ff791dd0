//! File system I/O in the same invocation: fio (psync, one job) on a
//! virtio-fs volume of a husk VM (virtiofsd, `cache=auto`), on an ext4
//! virtio-blk disk of the same VM, and on the same host directory bound
//! into a runc container. Sequential 1 MiB and random 4 KiB reads and
//! writes; each job drops the file's cached pages first (`invalidate`),
//! writes end with an fsync. Prints MiB/s and IOPS with husk/runc ratios;
//! asserts nothing about speed.
//!
//! Then the start of a container by root file system delivery: median wall
//! time of `husk run` of `echo hello` with the root as a block image built
//! at create against the root shared by virtio-fs, on a busybox tree and
//! on one with fio and its libraries.
//!
//! Usage: `bench-fs [SECONDS] [SIZE_MIB] [RUNS]` (defaults 5, 64 and 5).

use std::process::{Command, Stdio};

use husk_host::hypervisor::{Drive, VmSpec};
use husk_host::rootfs::{ImageFormat, build_image};
use husk_host::shares::{ShareBind, ShareRoot, TAG};
use integration_tests::agent::{self, AgentVm};
use integration_tests::cli::{Husk, text};
use integration_tests::host::TempDir;
use integration_tests::{linux, pod};
use protocol::{Call, SandboxConfig};

/// One fio workload.
struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    write: bool,
}

const JOBS: [Job; 4] = [
    Job {
        name: "sequential read 1M",
        rw: "read",
        bs: "1M",
        write: false,
    },
    Job {
        name: "sequential write 1M",
        rw: "write",
        bs: "1M",
        write: true,
    },
    Job {
        name: "random read 4k",
        rw: "randread",
        bs: "4k",
        write: false,
    },
    Job {
        name: "random write 4k",
        rw: "randwrite",
        bs: "4k",
        write: true,
    },
];

fn fio_args(file: &str, job: &Job, secs: u32, size_mib: u32) -> Vec<String> {
    let mut a: Vec<String> = [
        "/usr/bin/fio",
        "--name=bench",
        "--ioengine=psync",
        "--thread",
        "--invalidate=1",
        "--time_based",
        "--output-format=json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--filename={file}"));
    a.push(format!("--size={size_mib}M"));
    a.push(format!("--rw={}", job.rw));
    a.push(format!("--bs={}", job.bs));
    a.push(format!("--runtime={secs}"));
    if job.write {
        a.push("--end_fsync=1".into());
    }
    a
}

/// (MiB/s, IOPS) from fio's JSON output.
fn parse(out: &str, write: bool) -> Result<(f64, f64), String> {
    let start = out.find('{').ok_or("no JSON from fio")?;
    let v: serde_json::Value =
        serde_json::from_str(&out[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let side = &v["jobs"][0][if write { "write" } else { "read" }];
    let bw = side["bw_bytes"].as_f64().ok_or("no bw_bytes")?;
    let iops = side["iops"].as_f64().ok_or("no iops")?;
    Ok((bw / f64::from(1 << 20), iops))
}

type Figures = Result<(f64, f64), String>;

/// `runc spec`'s mounts and `extra`.
fn with_default_mounts(extra: serde_json::Value) -> serde_json::Value {
    let mut m = pod::default_mounts();
    if let Some(list) = m.as_array_mut() {
        list.push(extra);
    }
    m
}

/// The husk VM: a rootfs image with fio, an ext4 data disk, a virtio-fs
/// volume; runs each job on the volume and on the disk.
fn husk(dir: &TempDir, vol: &std::path::Path, secs: u32, size_mib: u32) -> Vec<(Figures, Figures)> {
    let fail = |e: String| {
        JOBS.iter()
            .map(|_| (Err(e.clone()), Err(e.clone())))
            .collect()
    };
    let tree = dir.join("rootfs");
    let img = match build_image(&tree, &dir.join("rootfs.erofs"), ImageFormat::Erofs) {
        Ok(i) => i,
        Err(e) => return fail(e.to_string()),
    };
    let disk = dir.join("disk.ext4");
    let made = std::fs::File::create(&disk)
        .and_then(|f| f.set_len(u64::from(size_mib * 2 + 128) << 20))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&disk)
                .status()
                .map_err(|e| e.to_string())?;
            if st.success() {
                Ok(())
            } else {
                Err("mkfs.ext4 failed".to_string())
            }
        });
    if let Err(e) = made {
        return fail(e);
    }
    let share = match ShareRoot::create(&dir.join("share")) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let bound = share.bind(&ShareBind {
        name: "vol".into(),
        source: vol.to_path_buf(),
        read_only: false,
        recursive: false,
    });
    if let Err(e) = bound {
        share.release();
        return fail(e.to_string());
    }
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, agent::initramfs(&agent::binary())).unwrap();
    let spec = VmSpec {
        kernel: linux::kernel(),
        initrd,
        vcpus: 1,
        memory_mib: 512,
        drives: vec![
            Drive {
                id: "rootfs".into(),
                path: img.path,
                read_only: true,
            },
            Drive {
                id: "data".into(),
                path: disk,
                read_only: false,
            },
        ],
        shared_dir: Some(share.root()),
        ..VmSpec::default()
    };
    let mut vm = AgentVm::boot_spec(&dir.0, &spec);
    vm.rootfs = Some(ImageFormat::Erofs);
    vm.wait_console("husk-agent ready in", pod::BOOT);
    let mut client = vm.client();
    client
        .call_empty(Call::CreateSandbox(SandboxConfig {
            shared_fs: Some(TAG.into()),
            ..SandboxConfig::default()
        }))
        .expect("create the sandbox");
    let probe = "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = data ] && basename $d; done";
    let (_, dev, _) = pod::run(
        &vm,
        &mut client,
        "probe",
        &["/bin/sh", "-c", probe],
        serde_json::json!({}),
    );
    let dev = format!("/dev/{}", dev.trim());
    let mut results = Vec::new();
    for (i, job) in JOBS.iter().enumerate() {
        let mut one = |id: String, file: &str, mount: serde_json::Value| -> Figures {
            let args = fio_args(file, job, secs, size_mib);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = pod::run(
                &vm,
                &mut client,
                &id,
                &args,
                serde_json::json!({ "mounts": with_default_mounts(mount) }),
            );
            if code != 0 {
                return Err(format!("fio exited {code}: {}", err.trim()));
            }
            parse(&out, job.write)
        };
        let fs = one(
            format!("fs-{i}"),
            "/vol/husk.dat",
            serde_json::json!({"destination": "/vol", "type": "bind",
                "source": format!("{}/vol", protocol::SHARED_FS_DIR), "options": ["rbind"]}),
        );
        let blk = one(
            format!("blk-{i}"),
            "/blk/husk.dat",
            serde_json::json!({"destination": "/blk", "type": "ext4", "source": dev, "options": []}),
        );
        results.push((fs, blk));
    }
    drop(client);
    vm.vm.kill();
    share.release();
    results
}

/// runc with the same tree and the volume bound at `/vol`.
fn runc(dir: &TempDir, vol: &std::path::Path, secs: u32, size_mib: u32) -> Vec<Figures> {
    let root = dir.join("runc-root");
    JOBS.iter()
        .enumerate()
        .map(|(i, job)| {
            let args = fio_args("/vol/runc.dat", job, secs, size_mib);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut spec = pod::spec_for(&args);
            spec["mounts"] = with_default_mounts(serde_json::json!({"destination": "/vol",
                "type": "bind", "source": vol, "options": ["rbind"]}));
            std::fs::write(dir.join("config.json"), spec.to_string()).map_err(|e| e.to_string())?;
            let out = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["run", "--bundle"])
                .arg(&dir.0)
                .arg(format!("bench-fs-{i}"))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("runc: {e}"))?;
            if !out.status.success() {
                return Err(format!("runc: {}", text(&out.stderr).trim()));
            }
            parse(&text(&out.stdout), job.write)
        })
        .collect()
}

fn cell(f: &Figures) -> String {
    match f {
        Ok((mib, iops)) => format!("{mib:>8.1} MiB/s {iops:>9.0} IOPS"),
        Err(e) => format!("failed: {e}"),
    }
}

fn ratio(a: &Figures, b: &Figures) -> String {
    match (a, b) {
        (Ok((a, _)), Ok((b, _))) if *b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

/// Median wall time (ms) of `husk run` of `echo hello` with rootfs
/// `delivery`, on a busybox tree (`with_fio`: plus fio and its libraries).
fn start(with_fio: bool, delivery: &str, runs: usize) -> Result<Vec<f64>, String> {
    let h = Husk::new(&format!("bench-fs-start-{delivery}"));
    let b = h.bundle(
        "b",
        &["/bin/echo", "hello"],
        serde_json::json!({"annotations": {"io.husk.rootfs": delivery}}),
    );
    if with_fio {
        husk_bench::add_program("/usr/bin/fio", &b.join("rootfs"))?;
    }
    let mut times = Vec::new();
    for i in 0..runs {
        let t = std::time::Instant::now();
        let out = h.run(&["run", "--bundle", b.to_str().unwrap(), &format!("s{i}")]);
        if !out.status.success() || text(&out.stdout) != "hello\n" {
            return Err(text(&out.stderr).trim().to_string());
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let size_mib: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = TempDir::new("bench-fs");
    let tree = agent::busybox_tree(&dir.0);
    for d in ["vol", "blk", "usr/bin"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    if let Err(e) = husk_bench::add_program("/usr/bin/fio", &tree) {
        println!("fio: {e} (apt-get install fio)");
        return;
    }
    let vol = dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let kvm = if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "PVM: Linux guests under QEMU TCG"
    } else {
        "hardware-backed"
    };
    println!(
        "fio benchmark: psync, one job, {size_mib} MiB file, {secs} s per job; host KVM {kvm}; \
         husk volume = virtio-fs (virtiofsd cache=auto), husk disk = ext4 on virtio-blk, runc = same host directory"
    );
    let husk = husk(&dir, &vol, secs, size_mib);
    let runc = runc(&dir, &vol, secs, size_mib);
    for (job, ((fs, blk), rc)) in JOBS.iter().zip(husk.iter().zip(runc.iter())) {
        println!("{}:", job.name);
        println!("  husk virtio-fs volume {}", cell(fs));
        println!("  husk virtio-blk disk  {}", cell(blk));
        println!("  runc host directory   {}", cell(rc));
        println!(
            "  ratio virtio-fs/runc {}  virtio-blk/runc {}  virtio-fs/virtio-blk {}",
            ratio(fs, rc),
            ratio(blk, rc),
            ratio(fs, blk)
        );
    }

    drop(dir);
    println!("container start by root file system delivery ({runs} runs each):");
    for (with_fio, tree) in [(false, "busybox tree"), (true, "busybox + fio tree")] {
        let block = husk_bench::report(&format!("{tree}, block"), &start(with_fio, "block", runs));
        let fs = husk_bench::report(
            &format!("{tree}, virtio-fs"),
            &start(with_fio, "virtio-fs", runs),
        );
        if let (Some(b), Some(f)) = (block, fs) {
            println!("  ratio virtio-fs/block {:.2}", f / b);
        }
    }
}

//! Helpers shared by husk's benchmarks: medians, reports, and the memory
//! of process trees.

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Prints a line of figures for `name`; returns the median.
pub fn report(name: &str, r: &Result<Vec<f64>, String>) -> Option<f64> {
    match r {
        Ok(t) => {
            let (min, max) = t
                .iter()
                .fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            println!(
                "{name:<22} median {:>8.1} ms  (min {min:>8.1}, max {max:>8.1}, {} runs)",
                median(t),
                t.len()
            );
            Some(median(t))
        }
        Err(e) => {
            println!("{name:<22} failed: {e}");
            None
        }
    }
}

/// Proportional set size of a process, KiB: (all, the part in memfd
/// mappings, i.e. QEMU's shared guest RAM).
pub fn pss_kib(pid: i32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut all, mut memfd, mut in_memfd) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            all += kib;
            if in_memfd {
                memfd += kib;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            in_memfd = line.contains("/memfd:");
        }
    }
    (all, memfd)
}

/// `pid` and every process descending from it.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if let Some(ppid) = rest.split(' ').nth(1).and_then(|s| s.parse::<i32>().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// A process's name.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// PSS (KiB) of the trees of the containerd shims named `shim_name`
/// serving `ids` (their `-id`) in containerd namespace `namespace`, and
/// that total by process name, with the guest memory the VMMs touched
/// (their memfd mappings) as "guest RAM".
pub fn shim_trees_pss(
    namespace: &str,
    shim_name: &str,
    ids: &[String],
) -> (u64, Vec<(String, u64)>) {
    let mut total = 0;
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with(shim_name)) {
            continue;
        }
        let ns = args
            .windows(2)
            .any(|w| w[0] == "-namespace" && w[1] == namespace);
        let ours = args
            .windows(2)
            .any(|w| w[0] == "-id" && ids.contains(&w[1]));
        if !(ns && ours) {
            continue;
        }
        for p in tree(pid) {
            let (pss, guest) = pss_kib(p);
            total += pss;
            *by_name.entry(comm(p)).or_default() += pss - guest;
            if guest > 0 {
                *by_name.entry("guest RAM".into()).or_default() += guest;
            }
        }
    }
    (total, by_name.into_iter().collect())
}

/// The `task timings` lines the husk shim logged into the containerd log
/// of the daemon whose directory is `containerd_dir`: (task ID, timings).
pub fn shim_timings(containerd_dir: &std::path::Path) -> Vec<(String, serde_json::Value)> {
    let log = std::fs::read_to_string(containerd_dir.join("containerd.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let start = l.find("task timings ")? + "task timings ".len();
            let rest = &l[start..];
            let end = rest.rfind('}')? + 1;
            let json = rest[..end].replace("\\\"", "\"");
            let v: serde_json::Value = serde_json::from_str(&json).ok()?;
            Some((v["id"].as_str()?.to_string(), v["timings"].clone()))
        })
        .collect()
}

/// Prints one line of idle memory for `name`: the PSS of the shim trees
/// serving `ids`, per `unit` (task, pod), with the share of each process.
pub fn print_idle_memory(name: &str, unit: &str, namespace: &str, shim: &str, ids: &[String]) {
    let (total, parts) = shim_trees_pss(namespace, shim, ids);
    let n = ids.len().max(1) as f64;
    let detail: Vec<String> = parts
        .iter()
        .map(|(p, k)| format!("{p} {:.1}", mib(*k) / n))
        .collect();
    println!(
        "  {name}: {:>7.1} MiB per {unit} ({})",
        mib(total) / n,
        detail.join(", ")
    );
}

/// Copies the host program `bin` and the libraries it loads (as `ldd`
/// lists them) into `rootfs`, at the same paths.
pub fn add_program(bin: &str, rootfs: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let mut files = vec![bin.to_string()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so => /lib/…/libx.so (0x…)" or "/lib64/ld-linux….so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    for f in files {
        let dst = rootfs.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap_or(rootfs)).map_err(|e| e.to_string())?;
        std::fs::copy(&f, &dst).map_err(|e| format!("{f}: {e}"))?;
    }
    Ok(())
}

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

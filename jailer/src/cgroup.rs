//! The jail's cgroup: cpu, memory and pids, on cgroup v2 where the host
//! has it, else on the v1 hierarchies of those controllers.

use std::path::{Path, PathBuf};

use crate::config::Limits;

/// Where cgroup file systems are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// Period of the CPU quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {shown}: {what}: {source}", shown = .path.display())]
pub struct CgroupError {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { path, what, source }
}

/// The jail's cgroup directories (one on v2, one per controller on v1).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str, what: &'static str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path, what))
}

impl Cgroup {
    /// Makes `<parent>/<id>` and sets `limits` on it.
    pub fn create(parent: &str, id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            Self::create_v2(root, parent, id, limits)
        } else {
            Self::create_v1(root, parent, id, limits)
        }
    }

    fn create_v2(
        root: &Path,
        parent: &str,
        id: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        // Enable the controllers on the way down to the jail's cgroup.
        let mut dir = root.to_path_buf();
        for part in Path::new(parent).components() {
            let sub = dir.join("cgroup.subtree_control");
            write(&sub, "+cpu +memory +pids", "enable cpu, memory and pids")?;
            dir.push(part);
            std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
        }
        write(
            &dir.join("cgroup.subtree_control"),
            "+cpu +memory +pids",
            "enable cpu, memory and pids",
        )?;
        let dir = dir.join(id);
        std::fs::create_dir(&dir).map_err(io(&dir, "create"))?;
        let cg = Cgroup {
            dirs: vec![dir.clone()],
        };
        let set = || -> Result<(), CgroupError> {
            if let Some(cpus) = limits.cpus {
                let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
                write(
                    &dir.join("cpu.max"),
                    &format!("{quota} {CPU_PERIOD_US}"),
                    "set cpu.max",
                )?;
            }
            if let Some(bytes) = limits.memory_bytes {
                write(
                    &dir.join("memory.max"),
                    &bytes.to_string(),
                    "set memory.max",
                )?;
                // Memory over the limit is not moved to swap either.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0", "set memory.swap.max")?;
                }
            }
            if let Some(pids) = limits.pids {
                write(&dir.join("pids.max"), &pids.to_string(), "set pids.max")?;
            }
            Ok(())
        };
        set().inspect_err(|_| cg.remove())?;
        Ok(cg)
    }

    fn create_v1(
        root: &Path,
        parent: &str,
        id: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        let mut cg = Cgroup { dirs: Vec::new() };
        for controller in ["cpu", "memory", "pids"] {
            let dir = root.join(controller).join(parent).join(id);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                cg.remove();
                return Err(io(&dir, "create")(e));
            }
            cg.dirs.push(dir.clone());
            let set = || -> Result<(), CgroupError> {
                match controller {
                    "cpu" => {
                        if let Some(cpus) = limits.cpus {
                            let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
                            write(
                                &dir.join("cpu.cfs_period_us"),
                                &CPU_PERIOD_US.to_string(),
                                "set cpu.cfs_period_us",
                            )?;
                            write(
                                &dir.join("cpu.cfs_quota_us"),
                                &quota.to_string(),
                                "set cpu.cfs_quota_us",
                            )?;
                        }
                    }
                    "memory" => {
                        if let Some(bytes) = limits.memory_bytes {
                            write(
                                &dir.join("memory.limit_in_bytes"),
                                &bytes.to_string(),
                                "set memory.limit_in_bytes",
                            )?;
                        }
                    }
                    _ => {
                        if let Some(pids) = limits.pids {
                            write(&dir.join("pids.max"), &pids.to_string(), "set pids.max")?;
                        }
                    }
                }
                Ok(())
            };
            if let Err(e) = set() {
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Moves the calling process into the cgroup.
    pub fn join(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), "0", "join")?;
        }
        Ok(())
    }

    /// The directories (for tests and messages).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroup (its processes have ended).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

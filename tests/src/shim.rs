//! Helpers for tests of `containerd-shim-husk-v2`: a private containerd
//! whose `PATH` finds the built shim, with husk's configuration and
//! runtime root in the test's scratch directory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::cli::{Husk, processes_mentioning, text};
use crate::containerd::Containerd;
use crate::host::bin_dir;

/// containerd's name for the husk runtime.
pub const RUNTIME: &str = "io.containerd.husk.v2";

/// A private containerd running tasks with the husk shim.
#[derive(Debug)]
pub struct ShimEnv {
    /// The containerd daemon (dropped first: it stops the tasks).
    pub containerd: Containerd,
    /// husk's configuration and root.
    pub husk: Husk,
}

impl ShimEnv {
    /// Starts containerd with the shim on its `PATH`.
    pub fn start(name: &str) -> ShimEnv {
        ShimEnv::launch(name, false)
    }

    /// Like [`ShimEnv::start`], with containerd's CRI plugin serving the
    /// `husk` runtime handler (see [`Containerd::start_cri`]).
    pub fn start_cri(name: &str) -> ShimEnv {
        ShimEnv::launch(name, true)
    }

    fn launch(name: &str, cri: bool) -> ShimEnv {
        let husk = Husk::new(name);
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = [
            ("PATH", Path::new(&path)),
            ("HUSK_CONFIG", husk.config.as_path()),
            ("HUSK_ROOT", husk.root.as_path()),
        ];
        let containerd = if cri {
            Containerd::start_cri(name, &env)
        } else {
            Containerd::start(name, &env)
        };
        ShimEnv { containerd, husk }
    }

    /// The shim's task directories.
    pub fn task_root(&self) -> PathBuf {
        self.husk.root.join("containerd")
    }

    /// `ctr run --runtime io.containerd.husk.v2 FLAGS IMAGE ID ARGS`.
    pub fn run(&self, flags: &[&str], id: &str, args: &[&str]) -> Output {
        self.run_with(RUNTIME, flags, id, args)
    }

    /// `ctr run --runtime RUNTIME FLAGS IMAGE ID ARGS`.
    pub fn run_with(&self, runtime: &str, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let image = self.containerd.image().to_string();
        let mut all = vec!["run", "--runtime", runtime];
        all.extend_from_slice(flags);
        all.push(&image);
        all.push(id);
        all.extend_from_slice(args);
        self.containerd.ctr(&all)
    }

    /// The line of `ctr task ls` for `id`, if listed.
    pub fn task_line(&self, id: &str) -> Option<String> {
        let ls = text(&self.containerd.ctr(&["task", "ls"]).stdout);
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(str::to_string)
    }

    /// Waits until `ctr task ls` shows `id` with `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self.task_line(id);
            if line.as_deref().is_some_and(|l| l.contains(status)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {status}: {line:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills task `id` with SIGKILL, waits for it to stop, deletes the task
    /// and the container.
    pub fn remove(&self, id: &str) {
        let c = &self.containerd;
        let out = c.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        assert!(out.status.success(), "kill {id}: {}", text(&out.stderr));
        self.wait_status(id, "STOPPED");
        let out = c.ctr(&["task", "delete", id]);
        assert!(out.status.success(), "delete {id}: {}", text(&out.stderr));
        let out = c.ctr(&["container", "delete", id]);
        assert!(
            out.status.success(),
            "container delete {id}: {}",
            text(&out.stderr)
        );
    }

    /// Asserts that the shim left nothing: no task directory, no process
    /// naming one, no mount below the husk root.
    pub fn assert_clean(&self) {
        let root = self.task_root();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let dirs: Vec<_> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            let procs = processes_mentioning(&root);
            if dirs.is_empty() && procs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind in {}: {dirs:?}, processes {procs:?}",
                root.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let state = self.containerd.dir().join("state");
        let left: Vec<_> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&*state.to_string_lossy()) && m.ends_with("/rootfs"))
            .collect();
        assert!(left.is_empty(), "rootfs mounts left: {left:?}");
    }

    /// PIDs of shim processes serving `id`.
    pub fn shim_pids(&self, id: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-husk-v2"));
            let ns = args
                .windows(2)
                .any(|w| w[0] == "-namespace" && w[1] == self.containerd.namespace());
            let ident = args.windows(2).any(|w| w[0] == "-id" && w[1] == id);
            if is_shim && ns && ident {
                found.push(pid);
            }
        }
        found
    }
}

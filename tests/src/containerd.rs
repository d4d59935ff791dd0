//! A private containerd daemon for integration tests (Debian's containerd
//! 1.6, no systemd): its own configuration, root, state and sockets in a
//! temporary directory, its own namespace, and the busybox image imported
//! from a locally built OCI archive. Driven with `ctr`.
//!
//! What containerd still puts outside the directory: the runc shim's state
//! under `/run/containerd/runc/<namespace>` and shim sockets under
//! `/run/containerd/s/`; the namespace is unique to the test, except with
//! the CRI plugin, which serves only `k8s.io`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::host::TempDir;
use crate::image::{IMAGE, PAUSE_IMAGE, busybox_oci_archive, cri_oci_archive};

/// The CRI runtime handler that selects the husk shim.
pub const CRI_HANDLER: &str = "husk";

/// A running private containerd; stopped (tasks and containers of its
/// namespace removed first) on drop.
#[derive(Debug)]
pub struct Containerd {
    dir: TempDir,
    daemon: Child,
    namespace: String,
}

impl Containerd {
    /// Starts containerd with `env` added to its environment (its shims
    /// and their runtimes inherit it) and imports the busybox image as
    /// [`IMAGE`]. Panics naming the step that failed.
    pub fn start(name: &str, env: &[(&str, &Path)]) -> Containerd {
        Containerd::launch(name, env, false)
    }

    /// Like [`Containerd::start`], with the CRI plugin serving on the same
    /// socket: runtime handlers `runc` (the default) and [`CRI_HANDLER`],
    /// sandbox image [`PAUSE_IMAGE`], CNI from Debian's plugins with a
    /// configuration directory of its own (empty: pods use the node's
    /// network). `ctr` then works in `k8s.io`, the CRI's namespace.
    pub fn start_cri(name: &str, env: &[(&str, &Path)]) -> Containerd {
        Containerd::launch(name, env, true)
    }

    fn launch(name: &str, env: &[(&str, &Path)], cri: bool) -> Containerd {
        let dir = TempDir::new(&format!("containerd-{name}"));
        for d in ["root", "state", "opt", "image", "cni"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // Top-level keys first: TOML puts anything after a table header
        // into that table.
        let (top, plugins) = if cri {
            let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
            let tables = format!(
                "[{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  \
                 restrict_oom_score_adj = true\n\
                 [{cri}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n\
                 [{cri}.containerd]\n  default_runtime_name = \"runc\"\n\
                 [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [{cri}.containerd.runtimes.{CRI_HANDLER}]\n  \
                 runtime_type = \"{runtime}\"\n  \
                 pod_annotations = [\"io.husk.*\"]\n  \
                 container_annotations = [\"io.husk.*\"]\n",
                cni = dir.join("cni").display(),
                runtime = crate::shim::RUNTIME,
            );
            (String::new(), tables)
        } else {
            let off = "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";
            (off.to_string(), String::new())
        };
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {top}\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             {plugins}",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("containerd.sock").display(),
            opt = dir.join("opt").display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let daemon = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start containerd (apt-get install containerd): {e}")
        });
        let namespace = if cri {
            "k8s.io".to_string()
        } else {
            format!("husk-test-{}-{name}", std::process::id())
        };
        let c = Containerd {
            dir,
            daemon,
            namespace,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let archive = if cri {
            cri_oci_archive(&c.dir.join("image"))
        } else {
            busybox_oci_archive(&c.dir.join("image"))
        };
        let out = c.ctr(&["image", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(c.dir.join("image"));
        c
    }

    /// A `ctr` command against this daemon and namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.namespace)
            // No ctr command may hang a test.
            .arg("--timeout")
            .arg("4m")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr ARGS`; returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ctr")
    }

    /// `ctr task exec --exec-id EXEC_ID ID ARGS`; its output.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Output {
        let mut all = vec!["task", "exec", "--exec-id", exec_id, id];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// The namespace the tests use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its gRPC socket (containerd's API and, when enabled, the CRI).
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Its scratch directory (config, root, state, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The image's name.
    pub fn image(&self) -> &str {
        IMAGE
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let out = self.ctr(&["task", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
        }
        let out = self.ctr(&["container", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.ctr(&["container", "delete", id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // What it left mounted (overlays, snapshots).
        crate::host::unmount_below(&self.dir.0);
    }
}

//! A private, throw-away podman for integration tests: its own storage,
//! run and temporary directories, configuration files and file-based locks
//! in one temporary directory, with a busybox image (Debian's
//! busybox-static) loaded from a locally built OCI archive, so no registry
//! is needed. Tests run e.g.
//! `podman --runtime /path/to/husk run --rm IMAGE echo hello` through
//! [`Podman::command`].
//!
//! Settings this host needs: the cgroupfs cgroup manager and file events
//! (no systemd), default rlimits no higher than the current ones (root
//! lacks CAP_SYS_RESOURCE) and no container network (`netns = "none"`, an
//! empty network namespace: the default bridge adds iptables rules and
//! hundreds of milliseconds). Locks are files, not the `/dev/shm` segment
//! every root podman shares. Outside its directory podman 4.3 still uses
//! `/var/lib/containers/cache` (blob info cache) and, while loading,
//! `/var/tmp/oci*`; containers get cgroups under `libpod_parent`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::host::TempDir;
use crate::image::{IMAGE, busybox_oci_archive, run};

/// A private podman instance; everything it creates lives in a temporary
/// directory that is cleaned up (containers removed, mounts unmounted,
/// files deleted) on drop.
#[derive(Debug)]
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// A private podman: its own root (graphroot), runroot, tmpdir,
    /// containers.conf and storage.conf in a fresh temporary directory
    /// (`/tmp/husk-test-podman-<name>-…`), with the busybox image loaded as
    /// [`IMAGE`]. Panics naming the step that failed.
    pub fn new(name: &str) -> Podman {
        let dir = TempDir::new(&format!("podman-{name}"));
        for d in ["root", "runroot", "tmp", "net", "image"] {
            std::fs::create_dir_all(dir.join(d))
                .unwrap_or_else(|e| panic!("cannot create podman dir {d}: {e}"));
        }
        let p = |d: &str| dir.join(d).display().to_string();
        let containers_conf = format!(
            "[containers]\n\
             netns = \"none\"\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             log_driver = \"k8s-file\"\n\
             \n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{events}\"\n\
             lock_type = \"file\"\n\
             tmp_dir = \"{tmp}\"\n\
             image_copy_tmp_dir = \"{tmp}\"\n\
             \n\
             [network]\n\
             network_backend = \"cni\"\n\
             network_config_dir = \"{net}\"\n",
            events = dir.join("tmp/events.log").display(),
            tmp = p("tmp"),
            net = p("net"),
        );
        let storage_conf = format!(
            "[storage]\n\
             driver = \"overlay\"\n\
             graphroot = \"{root}\"\n\
             runroot = \"{runroot}\"\n",
            root = p("root"),
            runroot = p("runroot"),
        );
        std::fs::write(dir.join("containers.conf"), containers_conf)
            .unwrap_or_else(|e| panic!("cannot write containers.conf: {e}"));
        std::fs::write(dir.join("storage.conf"), storage_conf)
            .unwrap_or_else(|e| panic!("cannot write storage.conf: {e}"));
        let podman = Podman { dir };
        let archive = busybox_oci_archive(&podman.dir.join("image"));
        let load = run(
            "podman load",
            podman.command().arg("load").arg("-i").arg(&archive),
        );
        let exists = podman
            .command()
            .args(["image", "exists", IMAGE])
            .status()
            .unwrap_or_else(|e| panic!("cannot run podman image exists: {e}"));
        assert!(
            exists.success(),
            "podman load did not name the image {IMAGE}: {}",
            String::from_utf8_lossy(&load.stdout).trim()
        );
        let _ = std::fs::remove_dir_all(podman.dir.join("image"));
        podman
    }

    /// A `Command` for podman with every global flag this instance needs
    /// and `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF` pointing at its
    /// files; add the subcommand and its arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "overlay"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            // Image copies and conmon's console sockets go to TMPDIR.
            .env("TMPDIR", self.dir.join("tmp"))
            .stdin(Stdio::null());
        cmd
    }

    /// The busybox image's name ([`IMAGE`]).
    pub fn image(&self) -> &str {
        IMAGE
    }

    /// The instance's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Not `podman system reset`: it also resets ~/.config/containers.
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // What it left mounted (overlays, snapshots).
        crate::host::unmount_below(&self.dir.0);
    }
}

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

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::host::TempDir;

/// The name the busybox image is loaded under.
pub const IMAGE: &str = "localhost/husk-busybox:latest";

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

/// Builds an OCI image layout of a busybox root file system (Debian's
/// busybox-static: `/bin/busybox` and a symlink per applet, /etc/passwd and
/// /etc/group for root, `PATH=/bin`, command `sh`) in `dir` and archives it
/// as `dir/busybox-oci.tar`, which `podman load -i` accepts (the index names
/// it [`IMAGE`]); `dir/rootfs` and `dir/layout` are scratch space. Returns
/// the archive's path.
pub fn busybox_oci_archive(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    let blobs = layout.join("blobs/sha256");
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d))
            .unwrap_or_else(|e| panic!("cannot create rootfs/{d}: {e}"));
    }
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("cannot create blobs dir: {e}"));
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("cannot copy /bin/busybox (busybox-static): {e}"));
    let list = run("busybox --list", Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .unwrap_or_else(|e| panic!("cannot link applet {applet}: {e}"));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .unwrap_or_else(|e| panic!("cannot write /etc/passwd: {e}"));
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")
        .unwrap_or_else(|e| panic!("cannot write /etc/group: {e}"));
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("cannot chmod rootfs/tmp: {e}"));

    // The layer: a reproducible tar, then gzip; the config names the
    // uncompressed digest, the manifest the compressed one.
    let layer_tar = dir.join("layer.tar");
    run(
        "tar (image layer)",
        Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .args(["--mtime=@0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("."),
    );
    let diff_id = sha256(&layer_tar);
    run(
        "gzip (image layer)",
        Command::new("gzip").args(["-n", "-f"]).arg(&layer_tar),
    );
    let layer_gz = dir.join("layer.tar.gz");
    let hex = sha256(&layer_gz);
    let layer = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &hex,
        &layer_gz,
    );
    std::fs::rename(&layer_gz, blobs.join(&hex))
        .unwrap_or_else(|e| panic!("cannot move the layer blob: {e}"));

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "husk integration tests: busybox-static"}]
    });
    let config = write_blob(&blobs, "application/vnd.oci.image.config.v1+json", &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = write_blob(
        &blobs,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    manifest["annotations"] = serde_json::json!({
        "io.containerd.image.name": IMAGE,
        "org.opencontainers.image.ref.name": "latest",
    });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(layout.join("index.json"), index.to_string())
        .unwrap_or_else(|e| panic!("cannot write index.json: {e}"));
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap_or_else(|e| panic!("cannot write oci-layout: {e}"));

    let archive = dir.join("busybox-oci.tar");
    run(
        "tar (OCI archive)",
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    archive
}

/// Runs `cmd`, panicking with its stderr unless it succeeds.
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// The hex sha256 of a file (`sha256sum`).
fn sha256(path: &Path) -> String {
    let out = run("sha256sum", Command::new("sha256sum").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", path.display()))
        .to_string()
}

/// An OCI descriptor of the file at `path` with the given digest.
fn descriptor(media_type: &str, hex: &str, path: &Path) -> serde_json::Value {
    let size = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .len();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size})
}

/// Stores `value` as a JSON blob and returns its descriptor.
fn write_blob(blobs: &Path, media_type: &str, value: &serde_json::Value) -> serde_json::Value {
    let tmp = blobs.join("new");
    std::fs::write(&tmp, value.to_string())
        .unwrap_or_else(|e| panic!("cannot write a {media_type} blob: {e}"));
    let hex = sha256(&tmp);
    let desc = descriptor(media_type, &hex, &tmp);
    std::fs::rename(&tmp, blobs.join(&hex))
        .unwrap_or_else(|e| panic!("cannot store the {media_type} blob: {e}"));
    desc
}

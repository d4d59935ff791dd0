//! OCI bundles on the host: reading and checking `config.json`, and turning
//! what refers to the host (bind mounts of host files) into what the guest
//! can use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Errors of a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// `config.json` could not be read.
    #[error("bundle {dir}: config.json: {source}")]
    Read {
        /// Bundle directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `config.json` is not a valid runtime spec.
    #[error("bundle {dir}: invalid config.json: {message}")]
    Invalid {
        /// Bundle directory.
        dir: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Something the spec asks for that husk does not do yet.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// A host file named by a mount could not be read.
    #[error("mount {destination}: source {source_path}: {cause}")]
    Source {
        /// Where it was to be mounted.
        destination: String,
        /// The host file.
        source_path: PathBuf,
        /// Cause.
        cause: String,
    },
}

/// A bundle read from disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// `config.json` as JSON.
    pub spec: Value,
    /// The root file system directory on the host.
    pub rootfs: PathBuf,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// The network namespace the spec joins by path (prepared by CNI,
    /// podman or the CRI plugin): its interfaces become the guest's, and the
    /// container shares the guest's network namespace.
    pub netns: Option<PathBuf>,
}

fn invalid(dir: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        dir: dir.to_path_buf(),
        message: message.into(),
    }
}

impl Bundle {
    /// Reads and checks the bundle at `dir`; a spec that joins a host
    /// namespace by path is refused.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        Self::load_with(dir, false)
    }

    /// As [`Bundle::load`] for a container of a pod: namespaces named by a
    /// host path (the pod's, as the CRI plugin sets them) are the VM's to
    /// share, see [`share_vm_namespaces`].
    pub fn load_in_pod(dir: &Path) -> Result<Bundle, BundleError> {
        Self::load_with(dir, true)
    }

    fn load_with(dir: &Path, in_pod: bool) -> Result<Bundle, BundleError> {
        let dir = std::path::absolute(dir).map_err(|source| BundleError::Read {
            dir: dir.to_path_buf(),
            source,
        })?;
        let text = std::fs::read(dir.join("config.json")).map_err(|source| BundleError::Read {
            dir: dir.clone(),
            source,
        })?;
        let mut spec: Value =
            serde_json::from_slice(&text).map_err(|e| invalid(&dir, e.to_string()))?;
        let netns = take_network_namespace(&mut spec);
        if in_pod {
            share_vm_namespaces(&mut spec);
        }
        let typed: oci_spec::runtime::Spec =
            serde_json::from_value(spec.clone()).map_err(|e| invalid(&dir, e.to_string()))?;
        let Some(process) = typed.process() else {
            return Err(invalid(&dir, "process: missing"));
        };
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid(&dir, "process.args: empty"));
        }
        let Some(root) = typed.root() else {
            return Err(invalid(&dir, "root: missing"));
        };
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(invalid(
                &dir,
                format!("root.path: {} is not a directory", rootfs.display()),
            ));
        }
        super::hooks::check(&spec["hooks"]).map_err(|e| invalid(&dir, e.to_string()))?;
        let namespaces = spec["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(ns) = namespaces.iter().find(|n| {
            n.get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty())
        }) {
            return Err(BundleError::NotImplemented(format!(
                "joining a host namespace ({} at {})",
                ns["type"].as_str().unwrap_or("?"),
                ns["path"].as_str().unwrap_or("?")
            )));
        }
        let annotations = typed.annotations().clone().unwrap_or_default();
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            annotations,
            netns,
        })
    }

    /// The spec's cpu quota and period, if set.
    pub fn cpu(&self) -> Option<(i64, u64)> {
        let cpu = &self.spec["linux"]["resources"]["cpu"];
        Some((
            cpu["quota"].as_i64()?,
            cpu["period"].as_u64().unwrap_or(100_000),
        ))
    }

    /// The spec's memory limit, if set.
    pub fn memory_limit(&self) -> Option<i64> {
        self.spec["linux"]["resources"]["memory"]["limit"].as_i64()
    }

    /// Whether the spec asks for a read-only root file system.
    pub fn root_readonly(&self) -> bool {
        self.spec["root"]["readonly"].as_bool().unwrap_or(false)
    }

    /// Whether the process asks for a terminal.
    pub fn terminal(&self) -> bool {
        self.spec["process"]["terminal"].as_bool().unwrap_or(false)
    }
}

/// Removes the network namespace a spec joins by host path and returns
/// its path: that namespace's interfaces are copied to the guest, whose own
/// network namespace the container then shares.
pub fn take_network_namespace(spec: &mut Value) -> Option<PathBuf> {
    let list = spec["linux"]["namespaces"].as_array_mut()?;
    let at = list.iter().position(|n| {
        n["type"].as_str() == Some("network") && n["path"].as_str().is_some_and(|p| !p.is_empty())
    })?;
    let entry = list.remove(at);
    entry["path"].as_str().map(PathBuf::from)
}

/// Rewrites the namespaces a spec joins by host path: the network, UTS and
/// IPC namespaces of a pod are the VM's own (every container of the pod
/// shares them, as it would share the pod sandbox's), so those entries go;
/// any other namespace named by path becomes a new one in the guest.
pub fn share_vm_namespaces(spec: &mut Value) {
    let Some(list) = spec["linux"]["namespaces"].as_array_mut() else {
        return;
    };
    let has_path = |n: &Value| n["path"].as_str().is_some_and(|p| !p.is_empty());
    list.retain(|n| {
        !(has_path(n) && matches!(n["type"].as_str(), Some("network" | "uts" | "ipc")))
    });
    for n in list.iter_mut() {
        if let Some(o) = n.as_object_mut() {
            o.remove("path");
        }
    }
}

/// A host file the guest needs, to be written with `write_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Path below the guest's `/run/husk/files/`.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Writes `files` into the guest with `write_file`.
pub fn write_guest_files(
    client: &mut crate::agent::AgentClient,
    files: Vec<GuestFile>,
) -> Result<(), crate::agent::AgentError> {
    for f in files {
        client.call_empty(protocol::Call::WriteFile {
            path: f.path,
            data: f.data,
            mode: f.mode,
        })?;
    }
    Ok(())
}

/// Where the agent keeps files written with `write_file`.
pub const GUEST_FILES: &str = "/run/husk/files";

fn is_bind(m: &Value) -> bool {
    m["type"].as_str() == Some("bind")
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// What the guest needs for a spec's bind mounts.
#[derive(Debug, Default)]
pub struct GuestMounts {
    /// Small host files, copied into guest memory.
    pub files: Vec<GuestFile>,
    /// Host directories (and large files), shared by virtio-fs.
    pub shares: Vec<crate::shares::ShareBind>,
}

/// Rewrites the bind mounts of `spec` (container `id`) for the guest: a
/// small host file becomes a copy written into guest memory; a host
/// directory bound on `/dev/shm` becomes a tmpfs; other host directories
/// (and files too large to copy) become binds of the VM's shared file
/// system, at `<id>/<index of the mount>`.
pub fn guest_mounts(spec: &mut Value, id: &str) -> Result<GuestMounts, BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = GuestMounts::default();
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return Ok(out);
    };
    for (n, m) in mounts.iter_mut().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let destination = m["destination"].as_str().unwrap_or("").to_string();
        let source = PathBuf::from(m["source"].as_str().unwrap_or(""));
        let err = |cause: String| BundleError::Source {
            destination: destination.clone(),
            source_path: source.clone(),
            cause,
        };
        let meta = std::fs::metadata(&source).map_err(|e| err(e.to_string()))?;
        let has_option = |name: &str| {
            m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == name))
        };
        let (read_only, recursive) = (has_option("ro"), has_option("rbind"));
        if meta.is_file() && meta.len() <= protocol::MAX_FILE as u64 {
            let data = std::fs::read(&source).map_err(|e| err(e.to_string()))?;
            let name = source
                .file_name()
                .map(|f| {
                    f.to_string_lossy().replace(
                        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-' && c != '_',
                        "_",
                    )
                })
                .unwrap_or_default();
            let path = format!("{id}/{n}-{}", name.trim_start_matches('.'));
            m["source"] = Value::String(format!("{GUEST_FILES}/{path}"));
            out.files.push(GuestFile {
                path,
                data,
                mode: meta.permissions().mode() & 0o7777,
            });
        } else if meta.is_dir() && destination == "/dev/shm" {
            *m = serde_json::json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            });
        } else if meta.is_dir() || meta.is_file() {
            let name = format!("{id}/{n}");
            if !protocol::is_share_path(&name) {
                return Err(err(format!("container id {id:?} cannot name a share")));
            }
            m["source"] = Value::String(format!("{}/{name}", protocol::SHARED_FS_DIR));
            out.shares.push(crate::shares::ShareBind {
                name,
                source: source.clone(),
                read_only,
                recursive,
            });
        } else {
            return Err(err("not a file or directory".into()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_namespaces_become_the_vms() {
        let mut spec = serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/7/ns/ipc"},
            {"type": "uts", "path": "/proc/7/ns/uts"},
            {"type": "mount"},
            {"type": "cgroup", "path": "/proc/7/ns/cgroup"}
        ]}});
        share_vm_namespaces(&mut spec);
        assert_eq!(
            spec["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}])
        );
    }

    fn bundle_dir(name: &str, config: &Value) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        dir
    }

    fn good() -> Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"}
        })
    }

    #[test]
    fn bundles_are_checked_and_errors_name_the_field() {
        let dir = bundle_dir("good", &good());
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(b.rootfs, dir.join("rootfs"));
        let mut bad = good();
        bad["process"]["args"] = serde_json::json!([]);
        let e = Bundle::load(&bundle_dir("noargs", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("process.args: empty"), "{e}");
        let mut bad = good();
        bad["root"]["path"] = serde_json::json!("nothere");
        let e = Bundle::load(&bundle_dir("noroot", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("root.path"), "{e}");
        let mut bad = good();
        bad["process"]["user"] = serde_json::json!({"uid": "root"});
        let e = Bundle::load(&bundle_dir("baduser", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid config.json"), "{e}");
        let mut hooks = good();
        hooks["hooks"] = serde_json::json!({"poststart": [{"path": "true"}]});
        let e = Bundle::load(&bundle_dir("hooks", &hooks))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("invalid config.json: hooks.poststart[0]: path: \"true\" is not absolute"),
            "{e}"
        );
        let e = Bundle::load(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
        // A network namespace by path is the guest's interfaces; any other
        // host namespace is refused.
        let mut netns = good();
        netns["linux"] = serde_json::json!({"namespaces": [
            {"type": "network", "path": "/run/netns/cni-1"}, {"type": "mount"}
        ]});
        let b = Bundle::load(&bundle_dir("netns", &netns)).unwrap();
        assert_eq!(b.netns, Some(PathBuf::from("/run/netns/cni-1")));
        assert_eq!(
            b.spec["linux"]["namespaces"],
            serde_json::json!([{"type": "mount"}])
        );
        netns["linux"]["namespaces"][1] =
            serde_json::json!({"type": "ipc", "path": "/proc/1/ns/ipc"});
        let e = Bundle::load(&bundle_dir("netns", &netns))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("not implemented: joining a host namespace (ipc"),
            "{e}"
        );
        for n in ["good", "noargs", "noroot", "baduser", "hooks", "netns"] {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("husk-bundle-{n}-{}", std::process::id())),
            );
        }
    }

    #[test]
    fn host_files_are_copied_and_directories_shared() {
        let dir = bundle_dir("mounts", &good());
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": dir.join("hosts"), "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": dir.join("rootfs"), "options": ["bind"]},
            {"destination": "/data", "type": "bind", "source": dir.join("rootfs"), "options": ["rbind", "ro"]},
            {"destination": "/scratch", "source": dir.join("rootfs"), "options": ["bind", "rw"]}
        ]});
        let m = guest_mounts(&mut spec, "c1").unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].path, "c1/1-hosts");
        assert_eq!(m.files[0].data, b"127.0.0.1 localhost\n");
        assert_eq!(spec["mounts"][1]["source"], "/run/husk/files/c1/1-hosts");
        assert_eq!(spec["mounts"][2]["type"], "tmpfs");
        assert_eq!(spec["mounts"][3]["source"], "/run/husk/shared/c1/3");
        assert_eq!(spec["mounts"][4]["source"], "/run/husk/shared/c1/4");
        assert_eq!(
            m.shares,
            vec![
                crate::shares::ShareBind {
                    name: "c1/3".into(),
                    source: dir.join("rootfs"),
                    read_only: true,
                    recursive: true
                },
                crate::shares::ShareBind {
                    name: "c1/4".into(),
                    source: dir.join("rootfs"),
                    read_only: false,
                    recursive: false
                }
            ]
        );
        let mut spec = serde_json::json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": dir.join("nothere")}
        ]});
        let e = guest_mounts(&mut spec, "c1").unwrap_err().to_string();
        assert!(e.starts_with("mount /data: source "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! husk's own configuration: a TOML file with the defaults every sandbox
//! VM gets, overridable per container by OCI annotations.
//!
//! ```toml
//! kernel = "/usr/share/husk/vmlinux"
//! initramfs = "/usr/share/husk/initramfs.cpio"
//! hypervisor = "auto"        # or "husk-vmm", "qemu"
//! vcpus = 1
//! memory_mib = 256
//! overhead_mib = 64          # added to a spec's memory limit
//! rootfs_format = "erofs"    # or "ext4"
//! rootfs = "auto"            # or "block", "virtio-fs"
//!
//! [io_limits]                # per drive / network device; absent or 0: none
//! disk_bytes_per_sec = 104857600
//! disk_ops_per_sec = 5000
//! net_rx_bytes_per_sec = 125000000
//! net_tx_bytes_per_sec = 125000000
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hypervisor::{Choice, IoLimits};
use crate::rootfs::{Delivery, ImageFormat};

/// Where the configuration is read from unless `HUSK_CONFIG` (or the
/// CLI's `--config`) names a file.
pub const DEFAULT_PATH: &str = "/etc/husk/config.toml";

/// The environment variable naming the configuration file.
pub const ENV: &str = "HUSK_CONFIG";

/// Annotation overriding the vCPU count.
pub const ANNOTATION_VCPUS: &str = "io.husk.vcpus";
/// Annotation overriding the guest memory (MiB).
pub const ANNOTATION_MEMORY: &str = "io.husk.memory_mib";
/// Annotation overriding the hypervisor.
pub const ANNOTATION_HYPERVISOR: &str = "io.husk.hypervisor";
/// Annotation overriding how the root file system is delivered.
pub const ANNOTATION_ROOTFS: &str = "io.husk.rootfs";
/// Annotation overriding `io_limits.disk_bytes_per_sec` (0: no limit).
pub const ANNOTATION_DISK_BYTES: &str = "io.husk.disk_bytes_per_sec";
/// Annotation overriding `io_limits.disk_ops_per_sec` (0: no limit).
pub const ANNOTATION_DISK_OPS: &str = "io.husk.disk_ops_per_sec";
/// Annotation overriding `io_limits.net_rx_bytes_per_sec` (0: no limit).
pub const ANNOTATION_NET_RX_BYTES: &str = "io.husk.net_rx_bytes_per_sec";
/// Annotation overriding `io_limits.net_tx_bytes_per_sec` (0: no limit).
pub const ANNOTATION_NET_TX_BYTES: &str = "io.husk.net_tx_bytes_per_sec";

/// Most vCPUs a sandbox gets.
pub const MAX_VCPUS: u8 = 32;
/// Most memory a sandbox gets (MiB).
pub const MAX_MEMORY_MIB: u32 = 64 * 1024;

/// Default runtime root: the CLI's containers, the shim's tasks below
/// `containerd/`.
pub const DEFAULT_ROOT: &str = "/run/husk";

/// The environment variable naming the root when `--root` is not given.
pub const ROOT_ENV: &str = "HUSK_ROOT";

/// The runtime root: `root`, else `$HUSK_ROOT`, else [`DEFAULT_ROOT`]. The
/// variable serves callers that do not pass `--root` on every call (podman
/// 4.3 omits its runtime flags from `delete`) and the shim.
pub fn runtime_root(root: Option<&Path>) -> PathBuf {
    match root {
        Some(r) => r.to_path_buf(),
        None => std::env::var_os(ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from),
    }
}

/// Errors of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (one line).
        message: String,
    },
    /// A value is out of range.
    #[error("{what}: {value:?} {why}")]
    Invalid {
        /// The setting or annotation.
        what: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The configuration file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HuskConfig {
    /// Guest kernel (ELF vmlinux with a PVH note, or bzImage).
    pub kernel: PathBuf,
    /// Initramfs with `husk-agent` as `/init`.
    pub initramfs: PathBuf,
    /// Which hypervisor runs the VMs.
    #[serde(deserialize_with = "choice")]
    pub hypervisor: Choice,
    /// Default vCPUs per sandbox.
    pub vcpus: u8,
    /// Default guest memory per sandbox (MiB).
    pub memory_mib: u32,
    /// Memory added on top of a spec's memory limit for the guest kernel
    /// and agent (MiB).
    pub overhead_mib: u32,
    /// File system of root images.
    #[serde(deserialize_with = "format")]
    pub rootfs_format: ImageFormat,
    /// How root file systems reach the guest.
    #[serde(deserialize_with = "delivery")]
    pub rootfs: Delivery,
    /// Rate limits on every sandbox's drives and network devices.
    pub io_limits: IoLimits,
}

fn choice<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Choice, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ImageFormat, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn delivery<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Delivery, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl Default for HuskConfig {
    fn default() -> Self {
        HuskConfig {
            kernel: PathBuf::from("/usr/share/husk/vmlinux"),
            initramfs: PathBuf::from("/usr/share/husk/initramfs.cpio"),
            hypervisor: Choice::default(),
            vcpus: 1,
            memory_mib: 256,
            overhead_mib: 64,
            rootfs_format: ImageFormat::default(),
            rootfs: Delivery::default(),
            io_limits: IoLimits::default(),
        }
    }
}

impl HuskConfig {
    /// Reads `path`; a missing file at the default location means the
    /// defaults.
    pub fn load(path: &Path) -> Result<HuskConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                return Ok(HuskConfig::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let cfg: HuskConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The file named by `HUSK_CONFIG`, or [`DEFAULT_PATH`].
    pub fn load_default() -> Result<HuskConfig, ConfigError> {
        let path = std::env::var_os(ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        HuskConfig::load(&path)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid("vcpus", self.vcpus, "is not between 1 and 32"));
        }
        if self.memory_mib < 64 || self.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                self.memory_mib,
                "is not between 64 and 65536",
            ));
        }
        Ok(())
    }
}

fn invalid(what: &str, value: impl ToString, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        what: what.to_string(),
        value: value.to_string(),
        why,
    }
}

/// What one sandbox VM gets: the configuration's defaults, sized from the
/// spec's resources, then overridden by annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory (MiB).
    pub memory_mib: u32,
    /// Hypervisor.
    pub hypervisor: Choice,
    /// Root file system delivery.
    pub rootfs: Delivery,
    /// Rate limits on the drives and network devices.
    pub io_limits: IoLimits,
}

/// Sizes a sandbox for a spec with the given cpu quota/period and memory
/// limit (bytes) and annotations.
pub fn sizing(
    cfg: &HuskConfig,
    cpu: Option<(i64, u64)>,
    memory_limit: Option<i64>,
    annotations: &HashMap<String, String>,
) -> Result<Sizing, ConfigError> {
    let mut s = Sizing {
        vcpus: cfg.vcpus,
        memory_mib: cfg.memory_mib,
        hypervisor: cfg.hypervisor,
        rootfs: cfg.rootfs,
        io_limits: cfg.io_limits,
    };
    if let Some((quota, period)) = cpu {
        if quota > 0 && period > 0 {
            let cpus = (quota as u64)
                .div_ceil(period)
                .clamp(1, u64::from(MAX_VCPUS));
            s.vcpus = s.vcpus.max(cpus as u8);
        }
    }
    if let Some(limit) = memory_limit.filter(|l| *l > 0) {
        let mib = (limit as u64).div_ceil(1 << 20) + u64::from(cfg.overhead_mib);
        s.memory_mib = s.memory_mib.max(mib.min(u64::from(MAX_MEMORY_MIB)) as u32);
    }
    if let Some(v) = annotations.get(ANNOTATION_VCPUS) {
        s.vcpus = v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or_else(|| invalid(ANNOTATION_VCPUS, v, "is not between 1 and 32"))?;
    }
    if let Some(v) = annotations.get(ANNOTATION_MEMORY) {
        s.memory_mib = v
            .parse()
            .ok()
            .filter(|n| (64..=MAX_MEMORY_MIB).contains(n))
            .ok_or_else(|| invalid(ANNOTATION_MEMORY, v, "is not between 64 and 65536"))?;
    }
    if let Some(v) = annotations.get(ANNOTATION_HYPERVISOR) {
        s.hypervisor = v
            .parse()
            .map_err(|_| invalid(ANNOTATION_HYPERVISOR, v, "is not auto, husk-vmm or qemu"))?;
    }
    if let Some(v) = annotations.get(ANNOTATION_ROOTFS) {
        s.rootfs = v
            .parse()
            .map_err(|_| invalid(ANNOTATION_ROOTFS, v, "is not auto, block or virtio-fs"))?;
    }
    let limits = &mut s.io_limits;
    for (key, field) in [
        (ANNOTATION_DISK_BYTES, &mut limits.disk_bytes_per_sec),
        (ANNOTATION_DISK_OPS, &mut limits.disk_ops_per_sec),
        (ANNOTATION_NET_RX_BYTES, &mut limits.net_rx_bytes_per_sec),
        (ANNOTATION_NET_TX_BYTES, &mut limits.net_tx_bytes_per_sec),
    ] {
        if let Some(v) = annotations.get(key) {
            let n: u64 = v
                .parse()
                .map_err(|_| invalid(key, v, "is not a whole number (0: no limit)"))?;
            *field = (n > 0).then_some(n);
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse_with_defaults_and_errors_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("husk-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "kernel = \"/k\"\nvcpus = 2\nhypervisor = \"qemu\"\n").unwrap();
        let cfg = HuskConfig::load(&path).unwrap();
        assert_eq!((cfg.kernel.as_path(), cfg.vcpus), (Path::new("/k"), 2));
        assert_eq!(cfg.hypervisor, Choice::Qemu);
        assert_eq!(cfg.memory_mib, 256);
        std::fs::write(&path, "vcpus = 0\n").unwrap();
        let e = HuskConfig::load(&path).unwrap_err().to_string();
        assert_eq!(e, "vcpus: \"0\" is not between 1 and 32");
        std::fs::write(&path, "kernal = \"/k\"\n").unwrap();
        let e = HuskConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("kernal"), "{e}");
        std::fs::write(&path, "hypervisor = \"xen\"\n").unwrap();
        assert!(HuskConfig::load(&path).is_err());
        let e = HuskConfig::load(&dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizing_follows_resources_then_annotations() {
        let cfg = HuskConfig::default();
        let none = HashMap::new();
        let s = sizing(&cfg, None, None, &none).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (1, 256));
        let s = sizing(&cfg, Some((250_000, 100_000)), Some(512 << 20), &none).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (3, 576));
        let mut ann = HashMap::new();
        ann.insert(ANNOTATION_VCPUS.to_string(), "2".to_string());
        ann.insert(ANNOTATION_MEMORY.to_string(), "1024".to_string());
        let s = sizing(&cfg, None, None, &ann).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 1024));
        ann.insert(ANNOTATION_VCPUS.to_string(), "99".to_string());
        let e = sizing(&cfg, None, None, &ann).unwrap_err().to_string();
        assert_eq!(e, "io.husk.vcpus: \"99\" is not between 1 and 32");
        ann.remove(ANNOTATION_VCPUS);
        ann.insert(ANNOTATION_ROOTFS.to_string(), "virtio-fs".to_string());
        let s = sizing(&cfg, None, None, &ann).unwrap();
        assert_eq!(s.rootfs, Delivery::VirtioFs);
        ann.insert(ANNOTATION_ROOTFS.to_string(), "nfs".to_string());
        let e = sizing(&cfg, None, None, &ann).unwrap_err().to_string();
        assert_eq!(e, "io.husk.rootfs: \"nfs\" is not auto, block or virtio-fs");
    }

    #[test]
    fn io_limits_come_from_the_file_then_annotations() {
        let dir = std::env::temp_dir().join(format!("husk-config-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "[io_limits]\ndisk_bytes_per_sec = 1048576\nnet_tx_bytes_per_sec = 500\n",
        )
        .unwrap();
        let cfg = HuskConfig::load(&path).unwrap();
        assert_eq!(cfg.io_limits.disk_bytes_per_sec, Some(1 << 20));
        assert_eq!(cfg.io_limits.disk_ops_per_sec, None);
        std::fs::write(&path, "[io_limits]\ndisk_bps = 1\n").unwrap();
        let e = HuskConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("disk_bps"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let mut ann = HashMap::new();
        ann.insert(ANNOTATION_DISK_BYTES.to_string(), "0".to_string());
        ann.insert(ANNOTATION_DISK_OPS.to_string(), "200".to_string());
        ann.insert(ANNOTATION_NET_RX_BYTES.to_string(), "1000".to_string());
        let s = sizing(&cfg, None, None, &ann).unwrap();
        assert_eq!(
            s.io_limits,
            IoLimits {
                disk_bytes_per_sec: None,
                disk_ops_per_sec: Some(200),
                net_rx_bytes_per_sec: Some(1000),
                net_tx_bytes_per_sec: Some(500),
            }
        );
        ann.insert(ANNOTATION_NET_TX_BYTES.to_string(), "-1".to_string());
        let e = sizing(&cfg, None, None, &ann).unwrap_err().to_string();
        assert_eq!(
            e,
            "io.husk.net_tx_bytes_per_sec: \"-1\" is not a whole number (0: no limit)"
        );
    }
}

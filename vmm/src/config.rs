//! VM configuration: plain data, parsed from Firecracker's JSON schema and
//! validated on its own, before any KVM object exists.
//!
//! ```json
//! {
//!   "boot-source": { "kernel_image_path": "vmlinux", "initrd_path": "initrd.cpio",
//!                    "boot_args": "console=ttyS0 reboot=k panic=-1" },
//!   "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 }
//! }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest vCPU count accepted (APIC IDs and the MP table stay 8-bit).
pub const MAX_VCPUS: u8 = 64;
/// Smallest guest memory accepted, in MiB.
pub const MIN_MEM_MIB: u64 = 8;
/// Largest kernel command line accepted, in bytes (x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Default kernel command line, as Firecracker's.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Errors in a VM configuration; each names the offending field or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not a valid configuration.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// Path of the file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `machine-config.vcpu_count` is out of range.
    #[error("machine-config.vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// `machine-config.mem_size_mib` is out of range.
    #[error("machine-config.mem_size_mib must be between {MIN_MEM_MIB} and {max} MiB, got {got}")]
    MemSize {
        /// Value given.
        got: u64,
        /// Upper bound on this host.
        max: u64,
    },
    /// `boot-source.boot_args` is too long.
    #[error("boot-source.boot_args is {0} bytes, more than the {MAX_CMDLINE_LEN} allowed")]
    BootArgsTooLong(usize),
    /// `boot-source.boot_args` holds a NUL or non-printable byte.
    #[error("boot-source.boot_args contains a control character")]
    BootArgsInvalid,
    /// A path field is empty.
    #[error("{0} is empty")]
    EmptyPath(&'static str),
    /// The configuration asks for a feature husk-vmm does not have yet.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// No boot source was configured.
    #[error("boot-source is missing")]
    MissingBootSource,
    /// A drive ID is empty, too long or has odd characters.
    #[error("drives[].drive_id {0:?} must be 1-20 characters of [A-Za-z0-9_-]")]
    DriveId(String),
    /// Two drives share an ID.
    #[error("drives: drive_id {0:?} is used twice")]
    DuplicateDrive(String),
    /// More than one root device.
    #[error("drives: more than one drive has is_root_device = true")]
    SeveralRoots,
    /// Too many drives.
    #[error("drives: {0} drives, at most {MAX_DRIVES} are supported")]
    TooManyDrives(usize),
    /// A field has a value outside its set.
    #[error("{0} has an unsupported value")]
    BadValue(&'static str),
    /// A rate limiter's refill period is too long.
    #[error("{field}: refill_time must be at most {MAX_REFILL_TIME_MS} ms, got {got}")]
    RefillTime {
        /// The limiter.
        field: &'static str,
        /// Value given.
        got: u64,
    },
}

/// Most drives one VM may have (interrupt lines are shared with other devices).
pub const MAX_DRIVES: usize = 16;

/// `boot-source`: the kernel, initrd and command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Path of the kernel: an ELF `vmlinux` (PVH entry) or a bzImage.
    pub kernel_image_path: PathBuf,
    /// Optional initrd (an uncompressed or compressed cpio archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; defaults to [`DEFAULT_BOOT_ARGS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl BootSourceConfig {
    /// Checks the fields that can be checked without opening files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel_image_path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("boot-source.kernel_image_path"));
        }
        if let Some(p) = &self.initrd_path {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::EmptyPath("boot-source.initrd_path"));
            }
        }
        let args = self.boot_args();
        if args.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::BootArgsTooLong(args.len()));
        }
        if args.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(ConfigError::BootArgsInvalid);
        }
        Ok(())
    }

    /// The command line the guest gets (before devices are appended).
    pub fn boot_args(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}

/// `machine-config`: vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u64,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading; only `false` is supported.
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking; only `false` is supported.
    #[serde(default)]
    pub track_dirty_pages: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
        }
    }
}

impl MachineConfig {
    /// Checks the ranges; `host_mem_mib` bounds the memory size.
    pub fn validate(&self, host_mem_mib: u64) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > u64::from(MAX_VCPUS) {
            return Err(ConfigError::VcpuCount(self.vcpu_count));
        }
        if self.mem_size_mib < MIN_MEM_MIB || self.mem_size_mib > host_mem_mib {
            return Err(ConfigError::MemSize {
                got: self.mem_size_mib,
                max: host_mem_mib,
            });
        }
        if self.smt {
            return Err(ConfigError::NotImplemented("machine-config.smt = true"));
        }
        if self.track_dirty_pages {
            return Err(ConfigError::NotImplemented(
                "machine-config.track_dirty_pages = true",
            ));
        }
        Ok(())
    }

    /// Guest memory size in bytes.
    pub fn mem_size_bytes(&self) -> u64 {
        self.mem_size_mib << 20
    }
}

/// Longest refill period accepted for a token bucket, in milliseconds.
pub const MAX_REFILL_TIME_MS: u64 = 3_600_000;

/// One token bucket of a rate limiter, in Firecracker's schema: `size`
/// tokens (bytes or operations) refilled evenly over `refill_time`
/// milliseconds, plus `one_time_burst` tokens spent first and never
/// refilled. A zero `size` or `refill_time` sets no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens per refill period (and the bucket's capacity).
    pub size: u64,
    /// Extra tokens usable once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Refill period in milliseconds.
    pub refill_time: u64,
}

/// A device's rate limiter: a bandwidth bucket (bytes) and an operations
/// bucket (requests or frames), each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks the refill periods; `field` names the limiter in the error.
    pub fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        for bucket in [&self.bandwidth, &self.ops].into_iter().flatten() {
            if bucket.refill_time > MAX_REFILL_TIME_MS {
                return Err(ConfigError::RefillTime {
                    field,
                    got: bucket.refill_time,
                });
            }
        }
        Ok(())
    }
}

/// Body of `PATCH /drives/{drive_id}`: what may change once the VM runs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive.
    pub drive_id: String,
    /// A new backing file (refused: not implemented).
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    /// New rate limits (all of them: a bucket left out is no longer limited).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Body of `PATCH /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface.
    pub iface_id: String,
    /// New receive limits; left out, they stay.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New transmit limits; left out, they stay.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Longest drive ID (the virtio-blk serial is 20 bytes).
pub const MAX_DRIVE_ID_LEN: usize = 20;

/// One entry of `drives`: a virtio-blk device backed by a file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique name; the guest sees it as the disk's serial (`GET_ID`).
    pub drive_id: String,
    /// Raw image: a regular file or a block device.
    pub path_on_host: PathBuf,
    /// Whether the kernel mounts it as `/` (`root=/dev/vda`).
    pub is_root_device: bool,
    /// Writes fail with an I/O error.
    #[serde(default)]
    pub is_read_only: bool,
    /// Root partition UUID, for a partitioned root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// `Unsafe` or `Writeback`: husk-vmm always honours flushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// `Sync` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Bandwidth and request-rate limits; `PATCH` changes them later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveConfig {
    /// Checks the fields that can be checked without opening the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.drive_id;
        if id.is_empty()
            || id.len() > MAX_DRIVE_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::DriveId(id.clone()));
        }
        if self.path_on_host.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("drives[].path_on_host"));
        }
        match self.cache_type.as_deref() {
            None | Some("Unsafe") | Some("Writeback") => {}
            Some(_) => return Err(ConfigError::BadValue("drives[].cache_type")),
        }
        match self.io_engine.as_deref() {
            None | Some("Sync") => {}
            Some("Async") => return Err(ConfigError::NotImplemented("drives[].io_engine = Async")),
            Some(_) => return Err(ConfigError::BadValue("drives[].io_engine")),
        }
        if let Some(r) = &self.rate_limiter {
            r.validate("drives[].rate_limiter")?;
        }
        Ok(())
    }
}

/// One entry of `network-interfaces`: a virtio-net device on a TAP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Unique name of the interface.
    pub iface_id: String,
    /// An existing TAP device on the host.
    pub host_dev_name: String,
    /// MAC address the guest gets, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on what the guest receives; `PATCH` changes them later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends; `PATCH` changes them later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceConfig {
    /// Checks the fields that can be checked without opening the TAP.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.iface_id.is_empty() || self.iface_id.len() > 64 {
            return Err(ConfigError::BadValue("network-interfaces[].iface_id"));
        }
        if self.host_dev_name.is_empty()
            || self.host_dev_name.len() >= 16
            || self.host_dev_name.contains('/')
        {
            return Err(ConfigError::BadValue("network-interfaces[].host_dev_name"));
        }
        if let Some(mac) = &self.guest_mac {
            if crate::devices::virtio::net::parse_mac(mac).is_none() {
                return Err(ConfigError::BadValue("network-interfaces[].guest_mac"));
            }
        }
        if let Some(r) = &self.rx_rate_limiter {
            r.validate("network-interfaces[].rx_rate_limiter")?;
        }
        if let Some(r) = &self.tx_rate_limiter {
            r.validate("network-interfaces[].tx_rate_limiter")?;
        }
        Ok(())
    }
}

/// `vsock`: a virtio-vsock device with a Unix-socket host side.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
    /// Unix socket for host-initiated connections; guest-initiated ones to
    /// port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Accepted for compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl VsockConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 || self.guest_cid > u64::from(u32::MAX) {
            return Err(ConfigError::BadValue("vsock.guest_cid"));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("vsock.uds_path"));
        }
        // Room for "_<port>" within sockaddr_un's 108 bytes.
        if self.uds_path.as_os_str().len() > 96 {
            return Err(ConfigError::BadValue("vsock.uds_path (too long)"));
        }
        Ok(())
    }
}

/// `entropy`: a virtio-rng device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Not supported yet (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `fs`: a virtio-fs device whose back end is a vhost-user daemon (such as
/// virtiofsd) listening on `socket` (husk's addition to Firecracker's
/// schema, after Cloud Hypervisor's `--fs tag=,socket=`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs <tag>`): 1-36 bytes
    /// of `[A-Za-z0-9_-]`.
    pub tag: String,
    /// The back end's vhost-user socket.
    pub socket: PathBuf,
}

/// Longest virtio-fs tag (the configuration space's field).
pub const FS_TAG_LEN: usize = 36;

impl FsConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok = !self.tag.is_empty()
            && self.tag.len() <= FS_TAG_LEN
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ConfigError::BadValue("fs[].tag"));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("fs[].socket"));
        }
        Ok(())
    }
}

/// The whole configuration file (`--config-file`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    /// Entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// Network interfaces.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
}

impl VmConfig {
    /// Parses a configuration from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Validates everything needed to start the VM.
    pub fn validate(&self, host_mem_mib: u64) -> Result<(), ConfigError> {
        self.boot_source
            .as_ref()
            .ok_or(ConfigError::MissingBootSource)?
            .validate()?;
        self.machine_config.validate(host_mem_mib)?;
        self.validate_devices()
    }

    /// Validates the devices: each one's fields, unique names, one root
    /// drive at most, and the number of MMIO slots (what the API checks
    /// when a device is added before the start).
    pub fn validate_devices(&self) -> Result<(), ConfigError> {
        let mut roots = 0;
        for (i, d) in self.drives.iter().enumerate() {
            d.validate()?;
            if self.drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
                return Err(ConfigError::DuplicateDrive(d.drive_id.clone()));
            }
            roots += usize::from(d.is_root_device);
        }
        if roots > 1 {
            return Err(ConfigError::SeveralRoots);
        }
        if self.drives.len() > MAX_DRIVES {
            return Err(ConfigError::TooManyDrives(self.drives.len()));
        }
        if let Some(e) = &self.entropy {
            if e.rate_limiter.is_some() {
                return Err(ConfigError::NotImplemented("entropy.rate_limiter"));
            }
        }
        for (i, n) in self.network_interfaces.iter().enumerate() {
            n.validate()?;
            let earlier = &self.network_interfaces[..i];
            if earlier.iter().any(|o| o.iface_id == n.iface_id) {
                return Err(ConfigError::BadValue(
                    "network-interfaces[].iface_id (duplicate)",
                ));
            }
            if earlier.iter().any(|o| o.host_dev_name == n.host_dev_name) {
                return Err(ConfigError::BadValue(
                    "network-interfaces[].host_dev_name (duplicate)",
                ));
            }
        }
        if self.drives.len() + self.network_interfaces.len() > MAX_DRIVES {
            return Err(ConfigError::TooManyDrives(
                self.drives.len() + self.network_interfaces.len(),
            ));
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        for (i, f) in self.fs.iter().enumerate() {
            f.validate()?;
            if self.fs[..i].iter().any(|o| o.tag == f.tag) {
                return Err(ConfigError::BadValue("fs[].tag (duplicate)"));
            }
        }
        let devices = self.drives.len() + self.network_interfaces.len() + self.fs.len();
        if devices > MAX_DRIVES {
            return Err(ConfigError::TooManyDrives(devices));
        }
        Ok(())
    }
}

/// Total memory of this host in MiB, the upper bound for guest memory.
pub fn host_mem_mib() -> u64 {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: `info` points to writable memory of the size sysinfo(2) fills;
    // the return value is checked before the struct is read.
    let ret = unsafe { libc::sysinfo(info.as_mut_ptr()) };
    if ret != 0 {
        return u64::MAX >> 20;
    }
    // SAFETY: sysinfo(2) succeeded and filled the struct.
    let info = unsafe { info.assume_init() };
    info.totalram.saturating_mul(u64::from(info.mem_unit)) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 4096;

    fn parse(text: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_json(text)
    }

    #[test]
    fn parses_firecracker_schema() {
        let cfg = parse(
            r#"{"boot-source":{"kernel_image_path":"/k","initrd_path":"/i","boot_args":"console=ttyS0"},
                "machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":false}}"#,
        )
        .unwrap();
        cfg.validate(HOST).unwrap();
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        assert_eq!(cfg.machine_config.mem_size_bytes(), 256 << 20);
        let boot = cfg.boot_source.unwrap();
        assert_eq!(boot.initrd_path.unwrap(), PathBuf::from("/i"));
        assert_eq!(boot.boot_args.unwrap(), "console=ttyS0");
    }

    #[test]
    fn defaults() {
        let cfg = parse(r#"{"boot-source":{"kernel_image_path":"/k"}}"#).unwrap();
        cfg.validate(HOST).unwrap();
        assert_eq!(cfg.machine_config, MachineConfig::default());
        assert_eq!(cfg.boot_source.unwrap().boot_args(), DEFAULT_BOOT_ARGS);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse(r#"{"boot-source":{"kernel_image_path":"/k","bogus":1}}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = parse(r#"{"machine":{}}"#).unwrap_err();
        assert!(err.to_string().contains("machine"), "{err}");
    }

    #[test]
    fn not_json() {
        let err = parse("vcpus=2").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid configuration"),
            "{err}"
        );
    }

    #[test]
    fn ranges() {
        let mut m = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        assert!(matches!(m.validate(HOST), Err(ConfigError::VcpuCount(0))));
        m.vcpu_count = 65;
        assert!(matches!(m.validate(HOST), Err(ConfigError::VcpuCount(65))));
        m.vcpu_count = 1;
        m.mem_size_mib = 0;
        assert!(matches!(m.validate(HOST), Err(ConfigError::MemSize { .. })));
        m.mem_size_mib = HOST + 1;
        let err = m.validate(HOST).unwrap_err().to_string();
        assert!(err.contains("mem_size_mib"), "{err}");
        m.mem_size_mib = 128;
        m.smt = true;
        assert!(
            m.validate(HOST)
                .unwrap_err()
                .to_string()
                .starts_with("not implemented")
        );
    }

    #[test]
    fn boot_args_checked() {
        let mut b = BootSourceConfig {
            kernel_image_path: "/k".into(),
            ..Default::default()
        };
        b.boot_args = Some("a".repeat(MAX_CMDLINE_LEN));
        assert!(matches!(b.validate(), Err(ConfigError::BootArgsTooLong(_))));
        b.boot_args = Some("a\nb".into());
        assert!(matches!(b.validate(), Err(ConfigError::BootArgsInvalid)));
        b.boot_args = None;
        b.kernel_image_path = PathBuf::new();
        assert!(matches!(b.validate(), Err(ConfigError::EmptyPath(_))));
    }

    #[test]
    fn devices_not_yet_supported() {
        let cfg = parse(
            r#"{"boot-source":{"kernel_image_path":"/k"},"vsock":{"guest_cid":2,"uds_path":"/v"}}"#,
        )
        .unwrap();
        let err = cfg.validate(HOST).unwrap_err().to_string();
        assert!(err.contains("guest_cid"), "{err}");
        assert!(parse(r#"{"vsock":{"guest_cid":3}}"#).is_err());
        let cfg =
            parse(r#"{"boot-source":{"kernel_image_path":"/k"},"entropy":{"rate_limiter":{}}}"#)
                .unwrap();
        let err = cfg.validate(HOST).unwrap_err().to_string();
        assert_eq!(err, "not implemented: entropy.rate_limiter");
    }

    fn drive(id: &str, root: bool) -> serde_json::Value {
        serde_json::json!({"drive_id": id, "path_on_host": "/d", "is_root_device": root})
    }

    fn with_drives(drives: Vec<serde_json::Value>) -> Result<(), ConfigError> {
        let v = serde_json::json!({"boot-source": {"kernel_image_path": "/k"}, "drives": drives});
        parse(&v.to_string())?.validate(HOST)
    }

    #[test]
    fn drives() {
        with_drives(vec![drive("rootfs", true), drive("data_1", false)]).unwrap();
        assert!(matches!(
            with_drives(vec![drive("a", true), drive("a", false)]),
            Err(ConfigError::DuplicateDrive(_))
        ));
        assert!(matches!(
            with_drives(vec![drive("a", true), drive("b", true)]),
            Err(ConfigError::SeveralRoots)
        ));
        assert!(matches!(
            with_drives(vec![drive("", false)]),
            Err(ConfigError::DriveId(_))
        ));
        assert!(matches!(
            with_drives(vec![drive("x/y", false)]),
            Err(ConfigError::DriveId(_))
        ));
        assert!(matches!(
            with_drives(vec![drive(&"a".repeat(21), false)]),
            Err(ConfigError::DriveId(_))
        ));
        let mut d = drive("a", false);
        d["io_engine"] = "Async".into();
        assert!(matches!(
            with_drives(vec![d]),
            Err(ConfigError::NotImplemented(_))
        ));
        let mut d = drive("a", false);
        d["cache_type"] = "Sometimes".into();
        assert!(matches!(
            with_drives(vec![d]),
            Err(ConfigError::BadValue(_))
        ));
        let mut d = drive("a", false);
        d["bogus"] = 1.into();
        assert!(
            with_drives(vec![d])
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        let many = (0..17).map(|i| drive(&format!("d{i}"), false)).collect();
        assert!(matches!(
            with_drives(many),
            Err(ConfigError::TooManyDrives(17))
        ));
    }

    #[test]
    fn missing_boot_source() {
        let cfg = parse("{}").unwrap();
        assert!(matches!(
            cfg.validate(HOST),
            Err(ConfigError::MissingBootSource)
        ));
    }

    #[test]
    fn fs_devices() {
        let with_fs = |fs: serde_json::Value| {
            let v = serde_json::json!({"boot-source": {"kernel_image_path": "/k"}, "fs": fs});
            parse(&v.to_string())?.validate(HOST)
        };
        with_fs(serde_json::json!([{"tag": "husk", "socket": "/run/fs.sock"}])).unwrap();
        let e = with_fs(serde_json::json!([{"tag": "a b", "socket": "/s"}])).unwrap_err();
        assert_eq!(e.to_string(), "fs[].tag has an unsupported value");
        let long = "t".repeat(FS_TAG_LEN + 1);
        assert!(with_fs(serde_json::json!([{"tag": long, "socket": "/s"}])).is_err());
        let e = with_fs(serde_json::json!([{"tag": "x", "socket": ""}])).unwrap_err();
        assert!(e.to_string().contains("fs[].socket"), "{e}");
        let e = with_fs(serde_json::json!([
            {"tag": "x", "socket": "/a"}, {"tag": "x", "socket": "/b"}
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e = with_fs(serde_json::json!([{"tag": "x", "socket": "/a", "cache": "auto"}]))
            .unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
    }
}

//! Guest-wide settings of a sandbox (pod): host name, DNS, sysctls, network.

use protocol::{ErrorCode, ErrorReply, GuestStats, SandboxConfig};

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

/// Where the guest's resolver configuration is written; containers get it
/// by bind-mounting it (the shim rewrites the host's resolv.conf mount).
pub const RESOLV_CONF: &str = "/run/husk/resolv.conf";

fn valid_sysctl(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key.split(['.', '/']).all(|p| {
            !p.is_empty()
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fn valid_dns_word(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 253
        && !w
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// Applies `cfg`; nothing is changed when a value is invalid.
pub fn create(cfg: &SandboxConfig) -> Result<(), ErrorReply> {
    if cfg.hostname.len() > 64
        || cfg
            .hostname
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid hostname {:?}", cfg.hostname),
        ));
    }
    for w in cfg
        .dns_servers
        .iter()
        .chain(&cfg.dns_searches)
        .chain(&cfg.dns_options)
    {
        if !valid_dns_word(w) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("invalid DNS entry {w:?}"),
            ));
        }
    }
    if cfg.dns_servers.len() > 8 || cfg.dns_searches.len() > 32 || cfg.dns_options.len() > 32 {
        return Err(err(ErrorCode::InvalidArgument, "too many DNS entries"));
    }
    for (k, v) in &cfg.sysctls {
        if !valid_sysctl(k) || v.len() > 4096 {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("invalid sysctl {k:?}"),
            ));
        }
    }
    if cfg.sysctls.len() > 256 {
        return Err(err(ErrorCode::InvalidArgument, "too many sysctls"));
    }
    cfg.network
        .validate()
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("network: {e}")))?;
    if let Some(tag) = &cfg.shared_fs
        && !valid_fs_tag(tag)
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid virtio-fs tag {tag:?}"),
        ));
    }
    if !cfg.hostname.is_empty() {
        crate::init::set_hostname(&cfg.hostname)
            .map_err(|e| err(ErrorCode::Internal, format!("hostname: {e}")))?;
    }
    let mut resolv = String::new();
    for s in &cfg.dns_servers {
        resolv.push_str(&format!("nameserver {s}\n"));
    }
    if !cfg.dns_searches.is_empty() {
        resolv.push_str(&format!("search {}\n", cfg.dns_searches.join(" ")));
    }
    if !cfg.dns_options.is_empty() {
        resolv.push_str(&format!("options {}\n", cfg.dns_options.join(" ")));
    }
    let _ = std::fs::create_dir_all("/run/husk");
    std::fs::write(RESOLV_CONF, resolv)
        .map_err(|e| err(ErrorCode::Internal, format!("{RESOLV_CONF}: {e}")))?;
    for (k, v) in &cfg.sysctls {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v)
            .map_err(|e| err(ErrorCode::InvalidArgument, format!("sysctl {k}: {e}")))?;
    }
    crate::network::configure(&cfg.network).map_err(|e| {
        let code = match e {
            crate::network::NetError::Invalid(_) | crate::network::NetError::NoDevice { .. } => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        };
        err(code, format!("network: {e}"))
    })?;
    if let Some(tag) = &cfg.shared_fs {
        mount_shared_fs(tag)?;
    }
    Ok(())
}

/// A virtio-fs tag: what the device's 36-byte tag field holds.
fn valid_fs_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 36
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Mounts the virtio-fs device tagged `tag` at [`protocol::SHARED_FS_DIR`]
/// (no device nodes: the host's are not the guest's to open).
fn mount_shared_fs(tag: &str) -> Result<(), ErrorReply> {
    let dir = std::path::Path::new(protocol::SHARED_FS_DIR);
    std::fs::create_dir_all(dir)
        .map_err(|e| err(ErrorCode::Internal, format!("{}: {e}", dir.display())))?;
    crate::container::mount(tag, dir, "virtiofs", libc::MS_NODEV, None).map_err(|e| ErrorReply {
        code: e.code,
        message: format!("shared file system: {}", e.message),
    })
}

fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Memory of the guest and of the agent itself.
pub fn guest_stats() -> GuestStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    GuestStats {
        agent_rss_kib: kib(&status, "VmRSS"),
        mem_total_kib: kib(&meminfo, "MemTotal"),
        mem_available_kib: kib(&meminfo, "MemAvailable"),
    }
}

/// Where [`write_file`] puts files.
pub const FILES: &str = "/run/husk/files";

fn valid_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
}

/// Writes a small file below [`FILES`].
pub fn write_file(path: &str, data: &[u8], mode: u32) -> Result<(), ErrorReply> {
    if !valid_relative(path) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("write_file: invalid path {path:?}"),
        ));
    }
    if data.len() > protocol::MAX_FILE || mode > 0o7777 {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "write_file {path}: over {} bytes or bad mode",
                protocol::MAX_FILE
            ),
        ));
    }
    let full = std::path::Path::new(FILES).join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| err(ErrorCode::Internal, format!("write_file {path}: {e}")))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&full, data)
        .and_then(|()| std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| err(ErrorCode::Internal, format!("write_file {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths() {
        assert!(valid_relative("c1/hosts"));
        for bad in ["", "/etc/x", "a/../b", "a//b", "./a", "a b", "a/.."] {
            assert!(!valid_relative(bad), "{bad}");
        }
    }

    #[test]
    fn sysctl_keys() {
        assert!(valid_sysctl("net.ipv4.ip_forward"));
        assert!(!valid_sysctl("net/../../etc"));
        assert!(!valid_sysctl("kernel..x"));
        assert!(!valid_sysctl(""));
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:  1000 kB\nMemAvailable: 700 kB\n";
        assert_eq!(kib(text, "MemTotal"), 1000);
        assert_eq!(kib(text, "MemAvailable"), 700);
        assert_eq!(kib(text, "Nope"), 0);
    }
}

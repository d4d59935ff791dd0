//! Opening an existing TAP interface by name and setting its vnet header
//! size and offloads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// TUN offload flags.
pub const TUN_F_CSUM: u32 = 0x01;
/// TSO for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TSO for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Errors opening or configuring a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty or too long.
    #[error("invalid TAP name {0:?}")]
    Name(String),
    /// No interface of that name exists.
    #[error("TAP {0} does not exist")]
    Missing(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    /// TUNSETIFF failed (no such TAP, or in use).
    #[error("cannot attach to TAP {name}: {source}")]
    Attach {
        /// Interface name.
        name: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another TAP ioctl failed.
    #[error("TAP {name}: {what} failed: {source}")]
    Ioctl {
        /// Interface name.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name` with a 12-byte vnet header.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(TapError::Name(name.to_string()));
        }
        // TUNSETIFF would create a missing interface: only attach to one
        // that exists in this thread's network namespace (asked of the
        // kernel: /sys/class/net shows the namespace sysfs was mounted in).
        let c_name = std::ffi::CString::new(name).map_err(|_| TapError::Name(name.to_string()))?;
        // SAFETY: if_nametoindex reads the NUL-terminated string, which
        // outlives the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` matches in
        // size and layout; the fd is a freshly opened tun device.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let hdr_len: libc::c_int = 12;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: std::io::Error::last_os_error(),
        }
    }

    /// Enables the offloads in `flags` (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its vnet header); `WouldBlock` when none.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

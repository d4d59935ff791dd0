//! Duties of PID 1: mounts, loopback, hostname, starting the reaper,
//! power-off. The only code that assumes it runs as init.

use std::ffi::CString;

/// Errors setting the guest up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("cannot mount {target}: {source}")]
    Mount {
        /// Mount point.
        target: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// What.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn mount(
    source: &str,
    target: &'static str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), InitError> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let (src, tgt, fs, dat) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // Already mounted (the kernel mounts devtmpfs itself with
        // DEVTMPFS_MOUNT on some set-ups) is fine.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(InitError::Mount { target, source: e });
        }
    }
    Ok(())
}

fn loopback_up() -> Result<(), InitError> {
    let sys = |what| move |source| InitError::Sys { what, source };
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket")(std::io::Error::last_os_error()));
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a `struct ifreq`, which
    // `IfReq` matches in size and layout.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    let r = if r == 0 {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: as above.
        unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req) }
    } else {
        r
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(sys("bringing up lo")(err));
    }
    Ok(())
}

/// Everything init does before serving.
pub fn setup() -> Result<(), InitError> {
    const NOSUID: libc::c_ulong = libc::MS_NOSUID;
    const NODEV: libc::c_ulong = libc::MS_NODEV;
    const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755")?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID | NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777")?;
    mount("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755")?;
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID | NODEV | NOEXEC,
        "",
    )?;
    loopback_up()?;
    set_hostname("husk").map_err(|source| InitError::Sys {
        what: "sethostname",
        source,
    })?;
    crate::reaper::reaper()
        .start()
        .map_err(|source| InitError::Sys {
            what: "starting the reaper",
            source,
        })
}

/// Sets the guest's host name.
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Sets the wall clock.
pub fn set_time(secs: i64, nanos: u32) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    // SAFETY: `ts` is a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Syncs and ends the VM (a restart, which both VMMs treat as the end).
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot only returns on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}

//! AF_VSOCK stream sockets (the guest end of the host–agent channel).

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: RawFd,
}

impl VsockListener {
    /// Listens on `port` for any CID.
    pub fn bind(port: u32) -> std::io::Result<VsockListener> {
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_vm is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes; fd is ours.
        let r = unsafe { libc::bind(fd, (&raw const addr).cast(), len) };
        // SAFETY: fd is ours.
        if r != 0 || unsafe { libc::listen(fd, 64) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: fd is ours and not used afterwards.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(VsockListener { fd })
    }

    /// Accepts one connection.
    pub fn accept(&self) -> std::io::Result<File> {
        loop {
            // SAFETY: null address pointers are allowed; fd is ours.
            let c = unsafe {
                libc::accept4(
                    self.fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                return Ok(unsafe { File::from_raw_fd(c) });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        // SAFETY: fd is ours.
        unsafe { libc::close(self.fd) };
    }
}

//! Terminals on the host for containers with `process.terminal`: a pty
//! pair whose master goes to the caller over its console socket (as runc
//! sends it, with `SCM_RIGHTS`) and whose slave the monitor relays to the
//! guest's terminal.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

/// Errors setting up a terminal.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// The pty could not be opened or configured.
    #[error("terminal: {0}")]
    Pty(nix::Error),
    /// The console socket could not be reached.
    #[error("console socket {path}: {source}")]
    Socket {
        /// The socket.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Opens a pty, sends its master to the console socket at `socket`, and
/// returns the slave in raw mode (the guest's terminal does the line
/// discipline).
pub fn open_for_console(socket: &Path) -> Result<File, TtyError> {
    let pty = nix::pty::openpty(None, None).map_err(TtyError::Pty)?;
    let mut attrs = tcgetattr(&pty.slave).map_err(TtyError::Pty)?;
    cfmakeraw(&mut attrs);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).map_err(TtyError::Pty)?;
    let name = nix::unistd::ttyname(&pty.slave)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    send_fd(socket, &pty.master, name.as_bytes())?;
    Ok(File::from(pty.slave))
}

fn send_fd(socket: &Path, fd: &OwnedFd, name: &[u8]) -> Result<(), TtyError> {
    let err = |source| TtyError::Socket {
        path: socket.display().to_string(),
        source,
    };
    let conn = UnixStream::connect(socket).map_err(err)?;
    let fds = [fd.as_raw_fd()];
    let payload = if name.is_empty() {
        b"pty".as_slice()
    } else {
        name
    };
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(payload)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err(e.into()))?;
    Ok(())
}

/// Makes `tty` the controlling terminal of this process (a session
/// leader), so that resizes of the master raise SIGWINCH here.
pub fn make_controlling(tty: &File) {
    // SAFETY: TIOCSCTTY on a descriptor we own; failure only means no
    // SIGWINCH, which the caller tolerates.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
}

/// The window size of `tty` as (rows, cols), if set.
pub fn window_size(tty: &File) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

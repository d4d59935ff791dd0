//! A foreground `husk run` of a terminal process without
//! `--console-socket`: as runc does, husk takes the pty master itself and
//! connects it to the caller's terminal (raw mode while it runs).

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::CliError;

/// A console socket this process listens on, and the master once received.
pub struct OwnConsole {
    path: PathBuf,
    receiver: Option<JoinHandle<Result<File, String>>>,
}

impl OwnConsole {
    /// Listens on a fresh socket in `dir`.
    pub fn listen(dir: &Path) -> Result<OwnConsole, CliError> {
        std::fs::create_dir_all(dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
        let path = dir.join(format!(".console-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| CliError(format!("console socket {}: {e}", path.display())))?;
        let receiver = std::thread::spawn(move || receive_master(&listener));
        Ok(OwnConsole {
            path,
            receiver: Some(receiver),
        })
    }

    /// The socket's path, for `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the master (sent during `create`) and starts relaying it
    /// to this process's stdin and stdout.
    pub fn attach(&mut self) -> Result<Relay, CliError> {
        let master = self
            .receiver
            .take()
            .ok_or_else(|| CliError("console: already attached".into()))?
            .join()
            .map_err(|_| CliError("console: receiver failed".into()))?
            .map_err(CliError)?;
        let _ = std::fs::remove_file(&self.path);
        Relay::start(master)
    }
}

impl Drop for OwnConsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_master(listener: &UnixListener) -> Result<File, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("console: {e}"))?;
    let mut data = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("console: {e}"))?;
    for cmsg in msg.cmsgs().map_err(|e| format!("console: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the descriptor just arrived with SCM_RIGHTS and
                // belongs to nothing else in this process.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err("console: no terminal arrived".into())
}

/// Copies between this process's terminal and the container's.
pub struct Relay {
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(master: File) -> Result<Relay, CliError> {
        let stdin = std::io::stdin();
        // Raw mode on our own terminal: the guest's does the line
        // discipline.
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
            copy_window_size(stdin.as_raw_fd(), master.as_raw_fd());
        }
        let mut input = master
            .try_clone()
            .map_err(|e| CliError(format!("console: {e}")))?;
        // Input: ends with this process (a blocked read of stdin may
        // outlive the container).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || input.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut master = master;
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = std::io::stdout();
            // EIO once the guest side closes.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        });
        Ok(Relay {
            saved,
            output: Some(output),
        })
    }

    /// Waits for the output to end and restores the terminal.
    pub fn finish(mut self) {
        if let Some(o) = self.output.take() {
            let _ = o.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

fn copy_window_size(from: i32, to: i32) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize on descriptors
    // this process holds.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

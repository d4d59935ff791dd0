//! Listening Unix sockets that appear only once they accept connections.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Binds a listening socket at `path`, atomically: it is bound and
/// listening under a temporary name in the same directory, then renamed.
/// A client that sees the file can connect at once (a plain `bind` leaves a
/// window in which the file exists but connections are refused). The socket
/// is 0600: only its owner may connect.
pub fn bind_ready(path: &Path) -> std::io::Result<UnixListener> {
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?
        .to_os_string();
    name.push(format!(".{}.binding", std::process::id()));
    let tmp: PathBuf = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let private = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = private {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_accepts_as_soon_as_it_exists() {
        let dir = std::env::temp_dir().join(format!("husk-uds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let listener = bind_ready(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(listener);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the socket itself");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = bind_ready(Path::new("/nonexistent-dir/x.sock")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}

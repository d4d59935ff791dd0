//! The API thread: accepts connections on the Unix socket, reads requests,
//! forwards actions to the VMM thread and writes the answers.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::http::{HttpError, RequestReader, write_response};
use super::{ActionError, ApiRequest, VmmData, routes};

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The socket path already exists.
    #[error("API socket {0} already exists")]
    Exists(PathBuf),
    /// Binding failed.
    #[error("cannot bind API socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the API thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How long a connection may stay idle mid-request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn serve_connection(mut stream: UnixStream, to_vmm: &Sender<ApiRequest>, wake: &EventFd) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut reader = RequestReader::new();
    loop {
        let req = match reader.read_request(&mut stream) {
            Ok(r) => r,
            Err(HttpError::Closed) => return,
            Err(HttpError::TooLarge) => {
                let body = serde_json::json!({"fault_message": "request too large"});
                let _ = write_response(&mut stream, 413, Some(&body));
                drain(&mut stream);
                return;
            }
            Err(e) => {
                let body = serde_json::json!({"fault_message": e.to_string()});
                let _ = write_response(&mut stream, 400, Some(&body));
                return;
            }
        };
        let result = routes::parse(&req.method, &req.path, &req.body).and_then(|action| {
            let (tx, rx) = channel();
            to_vmm
                .send(ApiRequest { action, reply: tx })
                .map_err(|_| ActionError::bad_request("the VMM is shutting down"))?;
            let _ = wake.write(1);
            rx.recv()
                .map_err(|_| ActionError::bad_request("the VMM is shutting down"))?
        });
        let written = match result {
            Ok(VmmData::Empty) => write_response(&mut stream, 204, None),
            Ok(VmmData::Json(v)) => write_response(&mut stream, 200, Some(&v)),
            Err(e) => {
                log::info!("API {} {}: {}", req.method, req.path, e.message);
                let body = serde_json::json!({"fault_message": e.message});
                write_response(&mut stream, e.status, Some(&body))
            }
        };
        if written.is_err() || req.close {
            return;
        }
    }
}

/// Reads and drops what the client still sends (bounded), so that closing
/// the connection does not reset it before the client read the answer.
fn drain(stream: &mut UnixStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    let mut left = 4 * super::http::MAX_BODY;
    while left > 0 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Binds `path` and serves it on a new thread. Returns a guard that removes
/// the socket file.
pub fn start(
    path: &Path,
    to_vmm: Sender<ApiRequest>,
    wake: Arc<EventFd>,
) -> Result<SocketGuard, ApiServerError> {
    if path.exists() {
        return Err(ApiServerError::Exists(path.to_path_buf()));
    }
    let listener = crate::uds::bind_ready(path).map_err(|source| ApiServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let guard = SocketGuard(path.to_path_buf());
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Api);
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => serve_connection(s, &to_vmm, &wake),
                    Err(e) => log::warn!("API accept failed: {e}"),
                }
            }
        })
        .map_err(ApiServerError::Spawn)?;
    Ok(guard)
}

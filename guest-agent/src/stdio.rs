//! Container stdio over vsock: the host opens one connection per stream on
//! [`protocol::STDIO_PORT`], sends a [`protocol::StdioAttach`] frame, reads
//! one [`protocol::Response`] frame, then the connection carries raw bytes.
//! Connections wait here until the container they name is created.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Mutex, OnceLock};

use protocol::{StdioAttach, StdioStream};

use crate::vsock::VsockListener;

type Key = (String, String, StdioStream);

fn pending() -> &'static Mutex<HashMap<Key, File>> {
    static PENDING: OnceLock<Mutex<HashMap<Key, File>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// Most attached streams waiting for their container.
const MAX_PENDING: usize = 256;

/// Takes the attached connection for a process's stream, if any
/// (`exec_id` empty for the container's own process).
pub fn take(container_id: &str, exec_id: &str, stream: StdioStream) -> Option<File> {
    pending()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(container_id.to_string(), exec_id.to_string(), stream))
}

/// Drops every stream still waiting for `container_id` (its create failed,
/// or it was removed), so no connection is left open.
pub fn forget(container_id: &str) {
    pending()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(id, _, _), _| id != container_id);
}

/// Drops the streams still waiting for one process (its exec failed).
pub fn forget_process(container_id: &str, exec_id: &str) {
    pending()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(id, x, _), _| !(id == container_id && x == exec_id));
}

fn attach(mut conn: File) {
    let hello = match protocol::read_message::<_, StdioAttach>(&mut conn) {
        Ok(h) => h,
        Err(e) => {
            let _ = protocol::write_message(&mut conn, &answer(Err(e.to_string())));
            return;
        }
    };
    let mut map = pending().lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_PENDING {
        drop(map);
        let _ = protocol::write_message(&mut conn, &answer(Err("too many streams".into())));
        return;
    }
    // Registered before the answer: a create sent after it finds the stream.
    let reply = conn.try_clone();
    map.insert((hello.container_id, hello.exec_id, hello.stream), conn);
    drop(map);
    if let Ok(mut reply) = reply {
        let _ = protocol::write_message(&mut reply, &answer(Ok(())));
    }
}

fn answer(result: Result<(), String>) -> protocol::Response {
    protocol::Response {
        id: 0,
        result: result
            .map(|()| protocol::Reply::Empty)
            .map_err(|message| protocol::ErrorReply {
                code: protocol::ErrorCode::InvalidArgument,
                message,
            }),
    }
}

/// Accepts stdio connections forever.
pub fn serve(listener: VsockListener) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let _ = std::thread::Builder::new()
                    .name("stdio-attach".into())
                    .spawn(move || attach(conn));
            }
            Err(e) => {
                crate::log(&format!("stdio accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

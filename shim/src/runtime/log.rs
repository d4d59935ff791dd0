//! The runtime's log, as runc writes it: `--log FILE` with
//! `--log-format text|json` (one `{"level", "msg"}` object per line, which
//! podman and containerd read back for error messages), `--debug` adding
//! debug lines. Errors always go to stderr as well.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The global log flags of one `husk` invocation.
#[derive(Debug, Clone, Default)]
pub struct LogOpts {
    /// `--log`.
    pub path: Option<PathBuf>,
    /// `--log-format json`.
    pub json: bool,
    /// `--debug`.
    pub debug: bool,
}

static OPTS: OnceLock<LogOpts> = OnceLock::new();

/// Sets the flags for this process (once, at start).
pub fn init(opts: LogOpts) {
    let _ = OPTS.set(opts);
}

fn opts() -> &'static LogOpts {
    OPTS.get_or_init(LogOpts::default)
}

/// The same flags, for a `husk` child process.
pub fn child_args() -> Vec<OsString> {
    let o = opts();
    let mut args = Vec::new();
    if let Some(p) = &o.path {
        args.push("--log".into());
        args.push(p.into());
    }
    if o.json {
        args.push("--log-format".into());
        args.push("json".into());
    }
    if o.debug {
        args.push("--debug".into());
    }
    args
}

/// Whether debug lines are written.
pub fn debug_enabled() -> bool {
    let o = opts();
    o.debug && o.path.is_some()
}

fn write(level: &str, msg: &str, fields: &serde_json::Map<String, serde_json::Value>) {
    let o = opts();
    let Some(path) = &o.path else { return };
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let line = if o.json {
        let mut obj = fields.clone();
        obj.insert("level".into(), level.into());
        obj.insert("msg".into(), msg.into());
        serde_json::Value::Object(obj).to_string()
    } else {
        let mut line = format!("level={level} msg={msg:?}");
        for (k, v) in fields {
            line.push_str(&format!(" {k}={v}"));
        }
        line
    };
    // One write per line: concurrent husk processes share the file.
    let _ = f.write_all(format!("{line}\n").as_bytes());
}

/// An error: on stderr, and in the log.
pub fn error(msg: &str) {
    eprintln!("husk: {msg}");
    write("error", msg, &serde_json::Map::new());
}

/// A debug line with fields (only with `--debug` and `--log`).
pub fn debug(msg: &str, fields: serde_json::Value) {
    if !debug_enabled() {
        return;
    }
    let fields = match fields {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    write("debug", msg, &fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_args_repeat_the_flags() {
        // OPTS is process-wide: only this test sets it.
        init(LogOpts {
            path: Some("/tmp/x.log".into()),
            json: true,
            debug: true,
        });
        let args: Vec<String> = child_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            ["--log", "/tmp/x.log", "--log-format", "json", "--debug"]
        );
        assert!(debug_enabled());
    }
}

//! The runtime's log, as runc writes it: `--log FILE` with `--log-format
//! text|json` (one `{"level", "msg", …}` object per line, which podman and
//! containerd read back for error messages), `--debug` adding debug lines.
//! It is the `log` crate's logger of the `husk` process (the host library
//! logs through the `log` macros, with key-value fields). A command's own
//! failure also goes to stderr ([`error`]); nothing else does, as a
//! monitor's stderr is its container's.

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

/// The logger behind the `log` macros.
struct FileLog;

static LOGGER: FileLog = FileLog;

/// Sets the flags for this process (once, at start) and installs the
/// logger.
pub fn init(opts: LogOpts) {
    let level = match (&opts.path, opts.debug) {
        (None, _) => log::LevelFilter::Off,
        (Some(_), true) => log::LevelFilter::Debug,
        (Some(_), false) => log::LevelFilter::Warn,
    };
    let _ = OPTS.set(opts);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
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

/// Collects a record's key-value fields.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_f64().filter(|_| value.to_u64().is_none()) {
            serde_json::json!(n)
        } else if let Some(n) = value.to_u64() {
            serde_json::json!(n)
        } else if let Some(n) = value.to_i64() {
            serde_json::json!(n)
        } else {
            serde_json::Value::String(value.to_string())
        };
        self.0.insert(key.to_string(), v);
        Ok(())
    }
}

/// One log line in the configured format.
fn line(level: &str, msg: &str, fields: serde_json::Map<String, serde_json::Value>) -> String {
    if opts().json {
        let mut obj = fields;
        obj.insert("level".into(), level.into());
        obj.insert("msg".into(), msg.into());
        serde_json::Value::Object(obj).to_string()
    } else {
        let mut line = format!("level={level} msg={msg:?}");
        for (k, v) in fields {
            line.push_str(&format!(" {k}={v}"));
        }
        line
    }
}

fn write(text: &str) {
    let Some(path) = &opts().path else { return };
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    // One write per line: concurrent husk processes share the file.
    let _ = f.write_all(format!("{text}\n").as_bytes());
}

impl log::Log for FileLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut fields = Fields(serde_json::Map::new());
        let _ = record.key_values().visit(&mut fields);
        let level = record.level().as_str().to_ascii_lowercase();
        write(&line(&level, &record.args().to_string(), fields.0));
    }

    fn flush(&self) {}
}

/// A command's failure: on stderr, and in the log.
pub fn error(msg: &str) {
    eprintln!("husk: {msg}");
    write(&line("error", msg, serde_json::Map::new()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_repeat_for_children_and_lines_carry_fields() {
        // OPTS is process-wide: only this test sets it.
        let path = std::env::temp_dir().join(format!("husk-log-{}.log", std::process::id()));
        init(LogOpts {
            path: Some(path.clone()),
            json: true,
            debug: true,
        });
        let args: Vec<String> = child_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--log",
                path.to_str().unwrap(),
                "--log-format",
                "json",
                "--debug"
            ]
        );
        log::debug!(id = "c1", created_ms = 12.5; "container created");
        error("it failed");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["msg"], "container created");
        assert_eq!(lines[0]["level"], "debug");
        assert_eq!(lines[0]["id"], "c1");
        assert_eq!(lines[0]["created_ms"], 12.5);
        assert_eq!(lines[1]["level"], "error");
        std::fs::remove_file(&path).unwrap();
    }
}

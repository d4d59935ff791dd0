//! OCI lifecycle hooks. They run on the host, in husk's own namespaces,
//! with the container's state on their stdin. The container's namespaces
//! exist only inside the guest, so `createContainer` and `startContainer`
//! hooks (which the spec places in the container's namespaces) also run on
//! the host, at the point of the lifecycle the spec gives them.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Errors of a hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook list in `config.json` is malformed.
    #[error("hooks.{kind}[{index}]: {message}")]
    Invalid {
        /// Which hook list.
        kind: &'static str,
        /// Position in the list.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The hook could not be run, failed, or timed out.
    #[error("{kind} hook {path}: {message}")]
    Failed {
        /// Which hook list.
        kind: &'static str,
        /// The hook's program.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

/// The hook lists of the runtime spec, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// During `create`, after the runtime environment exists.
    CreateRuntime,
    /// During `create`, after `createRuntime`.
    CreateContainer,
    /// Deprecated: during `start`, before the user process.
    Prestart,
    /// During `start`, before the user process.
    StartContainer,
    /// After the user process started, before `start` returns.
    Poststart,
    /// After the container is deleted, before `delete` returns.
    Poststop,
}

impl HookKind {
    /// The key in `config.json`'s `hooks`.
    pub fn key(self) -> &'static str {
        match self {
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::Prestart => "prestart",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Every kind.
    pub const ALL: [HookKind; 6] = [
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::Prestart,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];
}

/// One hook, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hook {
    path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
}

fn parse(kind: HookKind, index: usize, v: &Value) -> Result<Hook, HookError> {
    let bad = |message: String| HookError::Invalid {
        kind: kind.key(),
        index,
        message,
    };
    let path = v["path"]
        .as_str()
        .ok_or_else(|| bad("path: missing".into()))?;
    if !path.starts_with('/') {
        return Err(bad(format!("path: {path:?} is not absolute")));
    }
    let strings = |field: &str| -> Result<Vec<String>, HookError> {
        match &v[field] {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{field}: not a list of strings")))
                })
                .collect(),
            _ => Err(bad(format!("{field}: not a list of strings"))),
        }
    };
    let args = strings("args")?;
    let env = strings("env")?
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad(format!("env: {e:?} is not KEY=VALUE"))),
        })
        .collect::<Result<_, _>>()?;
    let timeout = match &v["timeout"] {
        Value::Null => None,
        t => match t.as_u64() {
            Some(s) if s > 0 => Some(Duration::from_secs(s)),
            _ => return Err(bad("timeout: must be a positive number of seconds".into())),
        },
    };
    Ok(Hook {
        path: PathBuf::from(path),
        args,
        env,
        timeout,
    })
}

fn list(hooks: &Value, kind: HookKind) -> Result<Vec<Hook>, HookError> {
    match &hooks[kind.key()] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, h)| parse(kind, i, h))
            .collect(),
        _ => Err(HookError::Invalid {
            kind: kind.key(),
            index: 0,
            message: "not a list".into(),
        }),
    }
}

/// Checks every hook of `hooks` (the spec's `hooks`, or null).
pub fn check(hooks: &Value) -> Result<(), HookError> {
    if !hooks.is_null() && !hooks.is_object() {
        return Err(HookError::Invalid {
            kind: "*",
            index: 0,
            message: "hooks is not an object".into(),
        });
    }
    for kind in HookKind::ALL {
        list(hooks, kind)?;
    }
    Ok(())
}

/// Whether `hooks` has hooks of `kind`.
pub fn has(hooks: &Value, kind: HookKind) -> bool {
    hooks[kind.key()].as_array().is_some_and(|a| !a.is_empty())
}

/// How much of a failed hook's output goes into the error.
const OUTPUT_LIMIT: usize = 512;

/// Runs the hooks of `kind` in order, each with `state` (the OCI state
/// JSON) on its stdin; stops at the first failure.
pub fn run(hooks: &Value, kind: HookKind, state: &Value) -> Result<(), HookError> {
    let input = state.to_string();
    for hook in list(hooks, kind)? {
        run_one(kind, &hook, &input)?;
    }
    Ok(())
}

/// Runs the hooks of `kind` and reports failures as warnings on stderr
/// (`poststart` and `poststop` failures do not change the lifecycle).
pub fn run_warning(hooks: &Value, kind: HookKind, state: &Value) {
    if let Err(e) = run(hooks, kind, state) {
        eprintln!("husk: warning: {e}");
    }
}

fn run_one(kind: HookKind, hook: &Hook, input: &str) -> Result<(), HookError> {
    let failed = |message: String| HookError::Failed {
        kind: kind.key(),
        path: hook.path.clone(),
        message,
    };
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    // stdout and stderr share one pipe: what a failing hook said goes
    // into the error.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| failed(format!("pipe: {e}")))?;
    let mut reader = std::fs::File::from(reader);
    let writer2 = writer.try_clone().map_err(|e| failed(e.to_string()))?;
    cmd.env_clear()
        .envs(hook.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(writer2)
        // Its own process group, so that a timeout ends its children too.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    // The writers' copies in `cmd` must go, or the reader never sees EOF.
    drop(cmd);
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    let input = input.to_string();
    std::thread::spawn(move || {
        // A hook that does not read its stdin is not an error.
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
        drop(stdin);
        let mut output = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if output.len() < OUTPUT_LIMIT {
                output.extend_from_slice(&buf[..n]);
            }
        }
        let _ = tx.send((child.wait(), output));
    });
    let received = match hook.timeout {
        Some(t) => rx.recv_timeout(t).ok(),
        None => rx.recv().ok(),
    };
    let Some((status, output)) = received else {
        // SAFETY: kill(2) on the hook's own process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let secs = hook.timeout.map_or(0, |t| t.as_secs());
        return Err(failed(format!("timed out after {secs} s")));
    };
    let status = status.map_err(|e| failed(e.to_string()))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output);
    let text: String = text.trim().chars().take(OUTPUT_LIMIT).collect();
    let text = text.replace('\n', " ");
    let what = match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("killed by signal {}", {
            use std::os::unix::process::ExitStatusExt;
            status.signal().unwrap_or(0)
        }),
    };
    Err(failed(if text.is_empty() {
        what
    } else {
        format!("{what}: {text}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-hooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn spec(kind: &str, hooks: Value) -> Value {
        serde_json::json!({kind: hooks})
    }

    #[test]
    fn hooks_get_the_state_args_and_env_in_order() {
        let dir = scratch("order");
        let out = dir.join("out");
        let script = format!(
            "echo \"$0 $1 $FOO\" >> {o}; cat >> {o}; echo >> {o}",
            o = out.display()
        );
        let s = spec(
            "poststart",
            serde_json::json!([
                {"path": "/bin/sh", "args": ["sh", "-c", script.clone(), "first", "arg1"], "env": ["FOO=bar"]},
                {"path": "/bin/sh", "args": ["sh", "-c", script, "second", "arg2"]},
            ]),
        );
        check(&s).unwrap();
        assert!(has(&s, HookKind::Poststart));
        assert!(!has(&s, HookKind::Poststop));
        run(&s, HookKind::Poststart, &serde_json::json!({"id": "c"})).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got,
            "first arg1 bar\n{\"id\":\"c\"}\nsecond arg2 \n{\"id\":\"c\"}\n"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failures_name_the_hook_and_stop_the_list() {
        let dir = scratch("fail");
        let marker = dir.join("ran");
        let s = spec(
            "createRuntime",
            serde_json::json!([
                {"path": "/bin/sh", "args": ["sh", "-c", "echo no good >&2; exit 7"]},
                {"path": "/bin/touch", "args": ["touch", marker.to_str().unwrap()]},
            ]),
        );
        let e = run(&s, HookKind::CreateRuntime, &Value::Null)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "createRuntime hook /bin/sh: exited with status 7: no good"
        );
        assert!(!marker.exists());
        let _ = std::fs::remove_dir_all(dir);

        let s = spec(
            "poststop",
            serde_json::json!([{"path": "/nonexistent/hook"}]),
        );
        let e = run(&s, HookKind::Poststop, &Value::Null)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("poststop hook /nonexistent/hook: "), "{e}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let s = spec(
            "prestart",
            serde_json::json!([{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]),
        );
        let t = std::time::Instant::now();
        let e = run(&s, HookKind::Prestart, &Value::Null)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "prestart hook /bin/sleep: timed out after 1 s");
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn malformed_hooks_name_the_field() {
        for (hooks, want) in [
            (
                serde_json::json!([{"path": "rel"}]),
                "hooks.poststop[0]: path: \"rel\" is not absolute",
            ),
            (
                serde_json::json!([{"path": "/bin/true"}, {"args": []}]),
                "hooks.poststop[1]: path: missing",
            ),
            (
                serde_json::json!([{"path": "/bin/true", "env": ["NOEQUALS"]}]),
                "hooks.poststop[0]: env: \"NOEQUALS\" is not KEY=VALUE",
            ),
            (
                serde_json::json!([{"path": "/bin/true", "timeout": 0}]),
                "hooks.poststop[0]: timeout: must be a positive number of seconds",
            ),
            (
                serde_json::json!({"path": "/bin/true"}),
                "hooks.poststop[0]: not a list",
            ),
        ] {
            assert_eq!(
                check(&spec("poststop", hooks)).unwrap_err().to_string(),
                want
            );
        }
    }
}

//! The OCI runtime state (runtime-spec `state`): what `husk state` prints
//! and what every hook reads on its stdin, for both front ends.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The OCI version of the state husk reports.
pub const OCI_VERSION: &str = "1.0.2";

/// The OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (what `createRuntime` and `createContainer` hooks see).
    Creating,
    /// Created, process not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The process exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state document of container `id` with `status`; `pid` is the
/// process that stands for the container on the host (reported as 0 once
/// it stopped).
pub fn state_json(
    id: &str,
    status: Status,
    pid: i32,
    bundle: &Path,
    annotations: &HashMap<String, String>,
) -> serde_json::Value {
    let pid = if status == Status::Stopped { 0 } else { pid };
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": id,
        "status": status.to_string(),
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_container_has_no_pid() {
        let ann = HashMap::from([("a".to_string(), "b".to_string())]);
        let s = state_json("c", Status::Running, 42, Path::new("/b"), &ann);
        assert_eq!(s["pid"], 42);
        assert_eq!(s["status"], "running");
        assert_eq!(s["annotations"]["a"], "b");
        let s = state_json("c", Status::Stopped, 42, Path::new("/b"), &ann);
        assert_eq!(s["pid"], 0);
        assert_eq!(s["ociVersion"], OCI_VERSION);
    }
}

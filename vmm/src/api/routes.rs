//! Maps HTTP requests onto [`VmmAction`]s (Firecracker's paths and bodies).

use serde::Deserialize;

use super::{ActionError, VmmAction};
use crate::config::{BootSourceConfig, MachineConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: String,
}

fn json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, ActionError> {
    if body.is_empty() {
        return Err(ActionError::bad_request(format!(
            "{what}: request body is empty"
        )));
    }
    serde_json::from_slice(body).map_err(|e| ActionError::bad_request(format!("{what}: {e}")))
}

/// Turns a request into an action, or a 400 naming what was wrong.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, ActionError> {
    let path = path.trim_end_matches('/');
    match (method, path) {
        ("GET", "") => Ok(VmmAction::GetInstanceInfo),
        ("GET", "/machine-config") => Ok(VmmAction::GetMachineConfig),
        ("GET", "/vm/config") => Ok(VmmAction::GetVmConfig),
        ("PUT", "/machine-config") => Ok(VmmAction::PutMachineConfig(json::<MachineConfig>(
            "machine-config",
            body,
        )?)),
        ("PUT", "/boot-source") => Ok(VmmAction::PutBootSource(json::<BootSourceConfig>(
            "boot-source",
            body,
        )?)),
        ("PUT", "/actions") => {
            let a: ActionBody = json("actions", body)?;
            match a.action_type.as_str() {
                "InstanceStart" => Ok(VmmAction::InstanceStart),
                "SendCtrlAltDel" => Ok(VmmAction::SendCtrlAltDel),
                "FlushMetrics" => Err(ActionError::bad_request(
                    "not implemented: FlushMetrics (no metrics are configured)",
                )),
                other => Err(ActionError::bad_request(format!(
                    "actions: unknown action_type {other:?}"
                ))),
            }
        }
        ("PATCH", "/vm") => {
            let s: VmStateBody = json("vm", body)?;
            match s.state.as_str() {
                "Paused" => Ok(VmmAction::Pause),
                "Resumed" => Ok(VmmAction::Resume),
                other => Err(ActionError::bad_request(format!(
                    "vm: unknown state {other:?}"
                ))),
            }
        }
        (
            "PUT" | "PATCH",
            "/drives"
            | "/network-interfaces"
            | "/vsock"
            | "/logger"
            | "/metrics"
            | "/mmds"
            | "/balloon"
            | "/snapshot/create"
            | "/snapshot/load"
            | "/entropy"
            | "/fs"
            | "/cpu-config",
        ) => Err(ActionError::bad_request(format!(
            "not implemented: {method} {path}"
        ))),
        _ if path.starts_with("/drives/")
            || path.starts_with("/network-interfaces/")
            || path.starts_with("/fs/") =>
        {
            Err(ActionError::bad_request(format!(
                "not implemented: {method} {path}"
            )))
        }
        _ => Err(ActionError::bad_request(format!(
            "invalid request method and/or path: {method} {}",
            if path.is_empty() { "/" } else { path }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse("GET", "/", b"").unwrap(), VmmAction::GetInstanceInfo);
        assert_eq!(
            parse("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#).unwrap(),
            VmmAction::InstanceStart
        );
        assert_eq!(
            parse("PATCH", "/vm", br#"{"state":"Paused"}"#).unwrap(),
            VmmAction::Pause
        );
        assert_eq!(
            parse("PATCH", "/vm", br#"{"state":"Resumed"}"#).unwrap(),
            VmmAction::Resume
        );
        match parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count":2,"mem_size_mib":64}"#,
        )
        .unwrap()
        {
            VmmAction::PutMachineConfig(m) => assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 64)),
            other => panic!("{other:?}"),
        }
        match parse("PUT", "/boot-source", br#"{"kernel_image_path":"/k"}"#).unwrap() {
            VmmAction::PutBootSource(b) => assert_eq!(b.kernel_image_path.to_str(), Some("/k")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("GET", "/nope", b"").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("GET /nope"), "{}", e.message);
        let e = parse("PUT", "/actions", br#"{"action_type":"Explode"}"#).unwrap_err();
        assert!(e.message.contains("Explode"));
        let e = parse("PUT", "/actions", b"").unwrap_err();
        assert!(e.message.contains("empty"));
        let e = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count":1,"mem_size_mib":8,"x":1}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `x`"), "{}", e.message);
        let e = parse("PATCH", "/vm", br#"{"state":"Frozen"}"#).unwrap_err();
        assert!(e.message.contains("Frozen"));
        let e = parse("PUT", "/fs/vol0", b"{}").unwrap_err();
        assert_eq!(e.message, "not implemented: PUT /fs/vol0");
        let e = parse("PUT", "/drives/rootfs", b"{}").unwrap_err();
        assert!(e.message.starts_with("not implemented"));
        let e = parse("PUT", "/boot-source", b"{not json").unwrap_err();
        assert!(e.message.starts_with("boot-source:"));
    }
}

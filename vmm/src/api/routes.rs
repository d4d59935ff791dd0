//! Maps HTTP requests onto [`VmmAction`]s (Firecracker's paths and bodies).

use serde::Deserialize;

use super::{ActionError, VmmAction};
use crate::config::{
    BootSourceConfig, DriveConfig, DriveUpdate, EntropyConfig, FsConfig, MachineConfig,
    NetworkInterfaceConfig, NetworkInterfaceUpdate, VsockConfig,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsBody {
    metrics_path: std::path::PathBuf,
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

/// The body of `PUT /<what>/<id>`, whose name field must be `id`.
fn named<'a, T: Deserialize<'a>>(
    what: &str,
    id: &str,
    body: &'a [u8],
    name: impl Fn(&T) -> &str,
) -> Result<T, ActionError> {
    let value: T = json(what, body)?;
    if name(&value) != id {
        return Err(ActionError::bad_request(format!(
            "{what}: the body names {:?} but the path names {id:?}",
            name(&value)
        )));
    }
    Ok(value)
}

/// Turns a request into an action, or a 400 naming what was wrong.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, ActionError> {
    let path = path.trim_end_matches('/');
    match (method, path) {
        ("GET", "") => Ok(VmmAction::GetInstanceInfo),
        ("GET", "/machine-config") => Ok(VmmAction::GetMachineConfig),
        ("GET", "/vm/config") => Ok(VmmAction::GetVmConfig),
        ("GET", "/devices") => Ok(VmmAction::GetDevices),
        ("GET", "/metrics") => Ok(VmmAction::GetMetrics),
        ("PUT", "/metrics") => {
            let m: MetricsBody = json("metrics", body)?;
            Ok(VmmAction::PutMetrics(m.metrics_path))
        }
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
                "FlushMetrics" => Ok(VmmAction::FlushMetrics),
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
        ("PUT", "/vsock") => Ok(VmmAction::PutVsock(json::<VsockConfig>("vsock", body)?)),
        ("PUT", "/entropy") => Ok(VmmAction::PutEntropy(json::<EntropyConfig>(
            "entropy", body,
        )?)),
        ("PUT", _) if path.starts_with("/drives/") => {
            let id = &path["/drives/".len()..];
            Ok(VmmAction::PutDrive(named(
                "drives",
                id,
                body,
                |d: &DriveConfig| &d.drive_id,
            )?))
        }
        ("PUT", _) if path.starts_with("/network-interfaces/") => {
            let id = &path["/network-interfaces/".len()..];
            Ok(VmmAction::PutNetworkInterface(named(
                "network-interfaces",
                id,
                body,
                |n: &NetworkInterfaceConfig| &n.iface_id,
            )?))
        }
        ("PUT", _) if path.starts_with("/fs/") => {
            let tag = &path["/fs/".len()..];
            Ok(VmmAction::PutFs(named("fs", tag, body, |f: &FsConfig| {
                &f.tag
            })?))
        }
        ("PATCH", _) if path.starts_with("/drives/") => {
            let id = &path["/drives/".len()..];
            Ok(VmmAction::PatchDrive(named(
                "drives",
                id,
                body,
                |d: &DriveUpdate| &d.drive_id,
            )?))
        }
        ("PATCH", _) if path.starts_with("/network-interfaces/") => {
            let id = &path["/network-interfaces/".len()..];
            Ok(VmmAction::PatchNetworkInterface(named(
                "network-interfaces",
                id,
                body,
                |n: &NetworkInterfaceUpdate| &n.iface_id,
            )?))
        }
        ("PUT", "/drives" | "/network-interfaces" | "/fs") => {
            Err(ActionError::bad_request(format!(
                "{}: the path must name the device: PUT {path}/<id>",
                &path[1..]
            )))
        }
        (
            "PUT" | "PATCH",
            "/logger" | "/mmds" | "/balloon" | "/snapshot/create" | "/snapshot/load"
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
        let drive = br#"{"drive_id":"rootfs","path_on_host":"/d","is_root_device":true}"#;
        match parse("PUT", "/drives/rootfs", drive).unwrap() {
            VmmAction::PutDrive(d) => {
                assert_eq!((d.drive_id.as_str(), d.is_root_device), ("rootfs", true))
            }
            other => panic!("{other:?}"),
        }
        let nic = br#"{"iface_id":"eth0","host_dev_name":"tap0"}"#;
        match parse("PUT", "/network-interfaces/eth0", nic).unwrap() {
            VmmAction::PutNetworkInterface(n) => assert_eq!(n.host_dev_name, "tap0"),
            other => panic!("{other:?}"),
        }
        match parse("PUT", "/vsock", br#"{"guest_cid":3,"uds_path":"/v"}"#).unwrap() {
            VmmAction::PutVsock(v) => assert_eq!(v.guest_cid, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("PUT", "/entropy", b"{}").unwrap(),
            VmmAction::PutEntropy(EntropyConfig::default())
        );
        match parse("PUT", "/fs/husk", br#"{"tag":"husk","socket":"/f"}"#).unwrap() {
            VmmAction::PutFs(f) => assert_eq!(f.socket.to_str(), Some("/f")),
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
        assert!(e.message.contains("missing field `tag`"), "{}", e.message);
        let e = parse("PUT", "/fs/vol0", br#"{"tag":"vol1","socket":"/s"}"#).unwrap_err();
        assert_eq!(
            e.message,
            "fs: the body names \"vol1\" but the path names \"vol0\""
        );
        let e = parse("PUT", "/drives", br#"{"drive_id":"x"}"#).unwrap_err();
        assert!(e.message.contains("PUT /drives/<id>"), "{}", e.message);
        let e = parse("PATCH", "/drives/rootfs", b"{}").unwrap_err();
        assert!(e.message.contains("drive_id"), "{}", e.message);
        let e = parse("PATCH", "/fs/vol0", b"{}").unwrap_err();
        assert_eq!(e.message, "not implemented: PATCH /fs/vol0");
        assert!(matches!(
            parse(
                "PATCH",
                "/network-interfaces/eth0",
                br#"{"iface_id":"eth0","tx_rate_limiter":{"ops":{"size":5,"refill_time":100}}}"#
            ),
            Ok(VmmAction::PatchNetworkInterface(_))
        ));
        let e = parse("PUT", "/balloon", b"{}").unwrap_err();
        assert!(e.message.starts_with("not implemented"));
        let e = parse("PUT", "/boot-source", b"{not json").unwrap_err();
        assert!(e.message.starts_with("boot-source:"));
    }
}

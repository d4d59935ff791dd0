//! The control API: HTTP/JSON over a Unix socket in Firecracker's schema.
//!
//! An API thread ([`server`]) parses requests into [`VmmAction`]s and hands
//! them to the VMM thread over a channel plus an eventfd; the VMM thread
//! answers on a per-request channel. Parsing ([`http`], [`routes`]) never
//! touches VM state.

pub mod http;
pub mod routes;
pub mod server;

use std::sync::mpsc::Sender;

use crate::config::{
    BootSourceConfig, DriveConfig, DriveUpdate, EntropyConfig, FsConfig, MachineConfig,
    NetworkInterfaceConfig, NetworkInterfaceUpdate, VsockConfig,
};

/// What a client asks of the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`
    GetInstanceInfo,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `GET /vm/config`
    GetVmConfig,
    /// `GET /metrics` (husk's addition): the counters now.
    GetMetrics,
    /// `PUT /metrics`: where `FlushMetrics` and the end of the VM write
    /// the counters (one JSON line each).
    PutMetrics(std::path::PathBuf),
    /// `PUT /actions` `FlushMetrics`.
    FlushMetrics,
    /// `GET /devices` (husk's addition): the VM's virtio devices as the
    /// registry holds them, with their transport state (empty before the
    /// start).
    GetDevices,
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfig),
    /// `PUT /boot-source`
    PutBootSource(BootSourceConfig),
    /// `PUT /drives/{drive_id}` (before the start): adds or replaces.
    PutDrive(DriveConfig),
    /// `PUT /network-interfaces/{iface_id}` (before the start).
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PUT /vsock` (before the start).
    PutVsock(VsockConfig),
    /// `PUT /entropy` (before the start).
    PutEntropy(EntropyConfig),
    /// `PUT /fs/{tag}` (before the start; husk's addition).
    PutFs(FsConfig),
    /// `PATCH /drives/{drive_id}`: new rate limits, before or after the
    /// start.
    PatchDrive(DriveUpdate),
    /// `PATCH /network-interfaces/{iface_id}`: new rate limits, before or
    /// after the start.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /actions` `InstanceStart`
    InstanceStart,
    /// `PUT /actions` `SendCtrlAltDel`
    SendCtrlAltDel,
    /// `PATCH /vm` `Paused`
    Pause,
    /// `PATCH /vm` `Resumed`
    Resume,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    /// 200 with a JSON body.
    Json(serde_json::Value),
}

/// A failed request: HTTP status and Firecracker's `fault_message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// HTTP status (400 for client errors).
    pub status: u16,
    /// Human-readable reason.
    pub message: String,
}

impl ActionError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ActionError {
            status: 400,
            message: message.into(),
        }
    }
}

/// The answer to one action.
pub type ActionResult = Result<VmmData, ActionError>;

/// One request in flight from the API thread to the VMM thread.
#[derive(Debug)]
pub struct ApiRequest {
    /// What to do.
    pub action: VmmAction,
    /// Where to answer.
    pub reply: Sender<ActionResult>,
}

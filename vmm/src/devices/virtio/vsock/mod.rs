//! virtio-vsock with Firecracker's hybrid host side: the host end of every
//! guest connection is a Unix socket.
//!
//! - Host-initiated: a client connects to `uds_path`, writes
//!   `CONNECT <port>\n`, and once the guest accepts gets `OK <host_port>\n`,
//!   then a byte stream to the guest's listener on `<port>`.
//! - Guest-initiated to host port P: the VMM connects to `<uds_path>_P`.
//!
//! Flow control is the spec's credit scheme per connection, so a peer that
//! stops reading stalls only its own connection.

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;

pub use device::{Vsock, VsockError};
pub use packet::{HEADER_LEN, PacketHeader};

/// The host's CID.
pub const HOST_CID: u64 = 2;

//! virtio-net over a TAP device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`): the
//! virtio-net header (12 bytes with VERSION_1) and the TAP's vnet header
//! have the same layout, so frames pass through unchanged, and checksum and
//! TSO offloads are enabled on the TAP when the driver accepts them.

mod device;
mod event_handler;
mod tap;

pub use device::{MAX_FRAME, Net, NetError, parse_mac};
pub use tap::{Tap, TapError};

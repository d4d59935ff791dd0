//! Devices the guest reaches through port I/O or MMIO exits.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

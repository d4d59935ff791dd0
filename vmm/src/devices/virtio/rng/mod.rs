//! virtio-rng: entropy for the guest from the host's getrandom(2), so a
//! guest has randomness at boot without waiting.

mod device;
mod event_handler;

pub use device::{MAX_REQUEST_BYTES, Rng, RngError};

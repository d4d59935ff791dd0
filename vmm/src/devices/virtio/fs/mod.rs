//! virtio-fs through a vhost-user back end (such as virtiofsd).
//!
//! The VMM keeps the transport and the configuration space (tag, one
//! request queue); the back end maps guest memory (a shared memfd) and
//! serves the queues itself. The queues' notifications go straight to it:
//! the kick eventfds handed over are the ioeventfds KVM signals on
//! `QueueNotify`. Its completions come back on call eventfds that the VMM
//! thread watches to raise the device interrupt (which also sets the
//! interrupt status register the driver reads).

mod device;
mod event_handler;

pub use device::{Fs, FsError, NUM_QUEUES, QUEUE_SIZE};

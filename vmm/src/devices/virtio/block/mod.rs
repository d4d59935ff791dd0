//! virtio-blk backed by a raw image file or block device: read, write
//! (refused on read-only drives), flush (fsync) and the drive ID.

mod device;
mod event_handler;
mod request;

pub use device::{Block, BlockError};
pub use request::{MAX_REQUEST_BYTES, Request, RequestError, RequestType, SECTOR_SIZE};

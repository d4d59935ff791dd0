//! virtio-vsock: packet header decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::PacketHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = PacketHeader::decode(data) {
        // What decodes must encode back to the same header.
        assert_eq!(PacketHeader::decode(&h.encode()), Ok(h));
    }
});

//! The agent's message decoder: frames and requests from the host.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cursor = data;
    while let Ok(frame) = protocol::read_frame(&mut cursor) {
        if let Ok(req) = serde_json::from_slice::<protocol::Request>(&frame) {
            // What decodes must encode and decode to the same request.
            let mut buf = Vec::new();
            protocol::write_message(&mut buf, &req).unwrap();
            let back: protocol::Request = protocol::read_message(&mut buf.as_slice()).unwrap();
            assert_eq!(back, req);
        }
    }
});

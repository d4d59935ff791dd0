//! The API socket: HTTP parsing and request routing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::http::RequestReader;
use vmm::api::routes;

fuzz_target!(|data: &[u8]| {
    let mut reader = RequestReader::new();
    let mut cursor = std::io::Cursor::new(data.to_vec());
    while let Ok(req) = reader.read_request(&mut cursor) {
        let _ = routes::parse(&req.method, &req.path, &req.body);
    }
});

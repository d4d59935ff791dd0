//! virtio-rng: arbitrary descriptor tables and rings.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::VirtioDevice;
use vmm::devices::virtio::rng::Rng;

fuzz_target!(|data: &[u8]| {
    let Ok(mut dev) = Rng::new() else { return };
    let Some(ctx) = common::context(data, 1) else {
        return;
    };
    if dev.activate(ctx).is_ok() {
        dev.process_queue();
    }
});

//! virtio-blk: arbitrary descriptor tables, rings and request headers.
#![no_main]

mod common;

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vmm::config::DriveConfig;
use vmm::devices::virtio::VirtioDevice;
use vmm::devices::virtio::block::Block;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("husk-fuzz-blk-{}", std::process::id()));
    if !path.exists() {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![0u8; 64 * 1024]).unwrap();
    }
    let cfg = DriveConfig {
        drive_id: "fuzz".into(),
        path_on_host: path,
        is_root_device: false,
        is_read_only: data.first().is_some_and(|b| b & 1 == 1),
        partuuid: None,
        cache_type: None,
        io_engine: None,
        rate_limiter: None,
    };
    let Ok(mut dev) = Block::new(&cfg) else {
        return;
    };
    let Some(ctx) = common::context(data, 1) else {
        return;
    };
    if dev.activate(ctx).is_ok() {
        dev.process_queue();
    }
});

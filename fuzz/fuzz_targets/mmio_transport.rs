//! virtio-mmio: arbitrary register reads and writes against a block device.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::config::DriveConfig;
use vmm::devices::BusDevice;
use vmm::devices::virtio::Interrupt;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::MmioTransport;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("husk-fuzz-mmio-{}", std::process::id()));
    if !path.exists() {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
    }
    let cfg = DriveConfig {
        drive_id: "fuzz".into(),
        path_on_host: path,
        is_root_device: false,
        is_read_only: false,
        partuuid: None,
        cache_type: None,
        io_engine: None,
        rate_limiter: None,
    };
    let Ok(dev) = Block::new(&cfg) else { return };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]) else {
        return;
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let Ok(mut t) = MmioTransport::new(
        Arc::new(Mutex::new(dev)),
        mem,
        Arc::new(Interrupt::new(irq)),
    ) else {
        return;
    };
    // Each 7-byte record: op, offset (2), value (4).
    for rec in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([rec[1], rec[2]]) & 0x1ff);
        let value = [rec[3], rec[4], rec[5], rec[6]];
        let size = [1usize, 2, 4, 8][usize::from(rec[0] >> 6)].min(4);
        if rec[0] & 1 == 0 {
            t.write(offset, &value[..size]);
        } else {
            let mut out = [0u8; 4];
            t.read(offset, &mut out[..size]);
        }
    }
});

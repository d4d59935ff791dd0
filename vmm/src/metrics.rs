//! husk-vmm's counters: why the vCPUs left the guest, by reason and, for
//! port I/O and MMIO, by what they touched. Every exit to user space costs
//! a round trip through KVM (and, nested, through the outer hypervisor
//! too), so these say what is worth removing. Lock-free static counters
//! (one VM per process), read by `GET /metrics`, written as one JSON line
//! to the metrics file (`--metrics-path` or `PUT /metrics`) on
//! `FlushMetrics` and when the VM ends.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// vCPU exits to user space, by reason.
#[derive(Debug, Default)]
pub struct VcpuExits {
    /// Port reads and writes of COM1.
    pub io_serial: Counter,
    /// Port reads and writes of the i8042.
    pub io_i8042: Counter,
    /// Port reads and writes of anything else (nothing is there: they read
    /// as all ones).
    pub io_other: Counter,
    /// MMIO reads and writes of virtio-mmio registers (queue notifications
    /// are ioeventfds and never exit).
    pub mmio_virtio: Counter,
    /// MMIO outside every device.
    pub mmio_other: Counter,
    /// HLT handled in user space (the in-kernel irqchip handles it in KVM;
    /// counted should that change).
    pub hlt: Counter,
    /// KVM_RUN interrupted by a signal (kicks for pause, finish).
    pub interrupted: Counter,
    /// Exits that ended the VM (shutdown, system events, errors).
    pub fatal: Counter,
    /// Anything else.
    pub other: Counter,
}

/// The counters of this process's VM.
pub static VCPU_EXITS: VcpuExits = VcpuExits {
    io_serial: Counter::new(),
    io_i8042: Counter::new(),
    io_other: Counter::new(),
    mmio_virtio: Counter::new(),
    mmio_other: Counter::new(),
    hlt: Counter::new(),
    interrupted: Counter::new(),
    fatal: Counter::new(),
    other: Counter::new(),
};

impl VcpuExits {
    /// Counts a port I/O exit at `port`.
    pub fn port(&self, port: u16) {
        let base = crate::devices::legacy::serial::COM1_BASE;
        let serial = base..base + crate::devices::legacy::serial::COM1_LEN;
        let port = u64::from(port);
        if serial.contains(&port) {
            self.io_serial.inc();
        } else if port == crate::devices::legacy::i8042::DATA_PORT
            || port == crate::devices::legacy::i8042::DATA_PORT + 4
        {
            self.io_i8042.inc();
        } else {
            self.io_other.inc();
        }
    }

    /// Counts an MMIO exit at `addr`.
    pub fn mmio(&self, addr: u64) {
        let virtio = crate::arch::x86_64::layout::MMIO_DEVICES_START
            ..crate::arch::x86_64::layout::MMIO_DEVICES_START
                + u64::from(crate::device_manager::LAST_IRQ) * 0x1000;
        if virtio.contains(&addr) {
            self.mmio_virtio.inc();
        } else {
            self.mmio_other.inc();
        }
    }

    /// The counts as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "io_serial": self.io_serial.get(),
            "io_i8042": self.io_i8042.get(),
            "io_other": self.io_other.get(),
            "mmio_virtio": self.mmio_virtio.get(),
            "mmio_other": self.mmio_other.get(),
            "hlt": self.hlt.get(),
            "interrupted": self.interrupted.get(),
            "fatal": self.fatal.get(),
            "other": self.other.get(),
        })
    }
}

/// Every metric of this process, as JSON.
pub fn snapshot() -> serde_json::Value {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    serde_json::json!({
        "utc_timestamp_ms": since_epoch.as_millis() as u64,
        "vcpu_exits": VCPU_EXITS.json(),
    })
}

/// Where `FlushMetrics` and the end of the VM write the metrics: opened
/// once, before the VM runs (a filtered VMM thread opens no files).
static METRICS_FILE: Mutex<Option<File>> = Mutex::new(None);

/// Sets the metrics file (created if missing, appended to).
pub fn set_path(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *METRICS_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Whether a metrics file is set.
pub fn has_path() -> bool {
    METRICS_FILE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
}

/// Appends one JSON line of [`snapshot`] to the metrics file, if one is
/// set.
pub fn flush() -> std::io::Result<()> {
    let mut file = METRICS_FILE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(f) = file.as_mut() else {
        return Ok(());
    };
    f.write_all(format!("{}\n", snapshot()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_sorted_by_what_they_touched() {
        let c = VcpuExits::default();
        c.port(0x3f8);
        c.port(0x3fd);
        c.port(0x64);
        c.port(0x80);
        c.mmio(crate::arch::x86_64::layout::MMIO_DEVICES_START + 0x70);
        c.mmio(0xfee0_0000);
        let j = c.json();
        assert_eq!(j["io_serial"], 2);
        assert_eq!(j["io_i8042"], 1);
        assert_eq!(j["io_other"], 1);
        assert_eq!(j["mmio_virtio"], 1);
        assert_eq!(j["mmio_other"], 1);
    }
}

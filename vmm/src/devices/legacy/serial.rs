//! The 8250 UART on COM1 (vm-superio), writing the guest console to stdout
//! or a file, taking input from the host, and noticing a guest kernel panic
//! or halt.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::BusDevice;
use crate::vstate::exit::{ExitReason, ExitSignal};

/// I/O port base of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports.
pub const COM1_LEN: u64 = 8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// The line Linux prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// The lines Linux prints as its last before it stops every CPU for good:
/// `halt`, and `poweroff` on a machine it cannot switch off (husk's have no
/// ACPI). The VM is over then; husk-vmm ends as for a power-off.
const HALT_MARKERS: [&[u8]; 2] = [b"reboot: System halted", b"reboot: Power down"];
/// Longest line kept for the panic check; longer lines are cut.
const LINE_CAP: usize = 256;

/// Where the console goes; shared so that it survives a failed start.
pub type ConsoleSink = Arc<std::sync::Mutex<Box<dyn Write + Send>>>;

/// Console output sink that also watches for the panic and halt markers.
pub struct ConsoleOut {
    out: ConsoleSink,
    line: Vec<u8>,
    panicked: Arc<AtomicBool>,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOut").finish_non_exhaustive()
    }
}

impl ConsoleOut {
    /// Wraps `out`; `panicked` is set when the guest prints a kernel panic,
    /// and a power-off is reported to `exit` when it prints that it halted.
    pub fn new(out: ConsoleSink, panicked: Arc<AtomicBool>, exit: Arc<ExitSignal>) -> Self {
        ConsoleOut {
            out,
            line: Vec::with_capacity(LINE_CAP),
            panicked,
            exit,
        }
    }

    fn holds(&self, marker: &[u8]) -> bool {
        self.line.windows(marker.len()).any(|w| w == marker)
    }

    fn watch(&mut self, byte: u8) {
        if byte == b'\n' {
            if self.holds(PANIC_MARKER) {
                self.panicked.store(true, Ordering::SeqCst);
            }
            if HALT_MARKERS.iter().any(|m| self.holds(m)) {
                self.exit.report(ExitReason::PowerOff);
            }
            self.line.clear();
        } else if self.line.len() < LINE_CAP {
            self.line.push(byte);
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.watch(b);
        }
        // Console output is best effort: a closed or full sink must not stop
        // the guest.
        let _ = crate::devices::bus::lock(&self.out).write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = crate::devices::bus::lock(&self.out).flush();
        Ok(())
    }
}

/// COM1 as a bus device.
#[derive(Debug)]
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: ConsoleOut) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        let n = input.len().min(room);
        if n == 0 {
            return 0;
        }
        self.serial.enqueue_raw_bytes(&input[..n]).unwrap_or(0)
    }

    /// Flushes console output (best effort).
    pub fn flush_output(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }

    /// Free space in the input FIFO.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        // The only error is a failed interrupt trigger; the byte is written.
        let _ = self.serial.write(offset as u8, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device_with_exit() -> (SerialDevice, Sink, Arc<AtomicBool>, Arc<ExitSignal>) {
        let sink = Sink::default();
        let flag = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(ExitSignal::new().unwrap());
        let out = ConsoleOut::new(
            Arc::new(Mutex::new(Box::new(sink.clone()))),
            flag.clone(),
            exit.clone(),
        );
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (SerialDevice::new(irq, out), sink, flag, exit)
    }

    fn device() -> (SerialDevice, Sink, Arc<AtomicBool>) {
        let (dev, sink, flag, _) = device_with_exit();
        (dev, sink, flag)
    }

    #[test]
    fn a_halt_ends_the_vm_as_a_power_off() {
        let (mut dev, _sink, _flag, exit) = device_with_exit();
        for b in b"[ 2.0] reboot: Restarting system\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(exit.reason(), None);
        for b in b"[ 2.5] reboot: System halted\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn output_reaches_sink() {
        let (mut dev, sink, flag) = device();
        for b in b"hello\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[test]
    fn panic_is_noticed() {
        let (mut dev, _sink, flag) = device();
        for b in b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n" {
            dev.write(0, &[*b]);
        }
        assert!(flag.load(Ordering::SeqCst));
    }

    #[test]
    fn long_lines_are_bounded() {
        let (mut dev, _sink, flag) = device();
        for _ in 0..100_000 {
            dev.write(0, b"x");
        }
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[test]
    fn input_and_bad_sizes() {
        let (mut dev, _sink, _flag) = device();
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'a');
        let mut w = [0u8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
    }
}

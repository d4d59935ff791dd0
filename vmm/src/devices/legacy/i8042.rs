//! A minimal i8042 keyboard controller: enough for Linux's driver to find it,
//! the CPU reset command (which ends the VM) and Ctrl+Alt+Del injection.
//!
//! vm-superio's i8042 handles only the reset command; this one also keeps an
//! output buffer so that a key sequence can be delivered to the guest.

use std::collections::VecDeque;

use vm_superio::Trigger;

use std::sync::Arc;

use super::EventFdTrigger;
use crate::devices::BusDevice;
use crate::vstate::exit::{ExitReason, ExitSignal};

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Status/command port.
pub const COMMAND_PORT: u64 = 0x64;
/// ISA IRQ of the keyboard.
pub const KBD_IRQ: u32 = 1;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;
const CTR_KBD_INT: u8 = 0x01;

/// Bound on queued output bytes; further bytes are dropped.
const BUF_CAP: usize = 16;

/// Scancodes (set 1) of Ctrl+Alt+Del pressed and released.
const CTRL_ALT_DEL: [u8; 10] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d, 0x00, 0x00];

/// Errors of the i8042 device.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The output buffer is full.
    #[error("i8042 output buffer is full")]
    BufferFull,
    /// The interrupt could not be raised.
    #[error("cannot raise the keyboard interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
}

/// The controller.
#[derive(Debug)]
pub struct I8042Device {
    exit: Arc<ExitSignal>,
    kbd_irq: EventFdTrigger,
    status: u8,
    control: u8,
    outp: u8,
    pending_cmd: Option<u8>,
    buf: VecDeque<u8>,
}

impl I8042Device {
    /// A controller reporting a CPU reset to `exit` (at once, on the vCPU
    /// that asked: that vCPU runs no further guest code) and raising
    /// `kbd_irq` for input.
    pub fn new(exit: Arc<ExitSignal>, kbd_irq: EventFdTrigger) -> Self {
        I8042Device {
            exit,
            kbd_irq,
            status: SB_KBD_ENABLED,
            control: CTR_KBD_INT,
            outp: 0,
            pending_cmd: None,
            buf: VecDeque::with_capacity(BUF_CAP),
        }
    }

    fn push(&mut self, byte: u8) -> Result<(), I8042Error> {
        if self.buf.len() >= BUF_CAP {
            return Err(I8042Error::BufferFull);
        }
        self.buf.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        Ok(())
    }

    /// Queues the Ctrl+Alt+Del key sequence and raises the keyboard interrupt.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        let codes = &CTRL_ALT_DEL[..8];
        if self.buf.len() + codes.len() > BUF_CAP {
            return Err(I8042Error::BufferFull);
        }
        for &c in codes {
            self.push(c)?;
        }
        self.kbd_irq.trigger().map_err(I8042Error::Interrupt)
    }

    fn pop(&mut self) -> u8 {
        let byte = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else if self.control & CTR_KBD_INT != 0 {
            // One interrupt per byte, as the real controller does.
            let _ = self.kbd_irq.trigger();
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_I8042_CMD_DATA;
        match cmd {
            CMD_READ_CTR => {
                let _ = self.push(self.control);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => {
                let _ = self.push(self.outp);
            }
            CMD_SELF_TEST => {
                let _ = self.push(0x55);
            }
            CMD_RESET_CPU => self.exit.report(ExitReason::Reset),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_I8042_CMD_DATA;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            _ => {
                // A command to the keyboard itself: acknowledge it.
                let _ = self.push(0xfa);
            }
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            0 => self.pop(),
            4 => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            0 => self.data(data[0]),
            4 => self.command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042Device, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042Device::new(exit.clone(), EventFdTrigger(irq.try_clone().unwrap()));
        (dev, exit, irq)
    }

    fn rd(dev: &mut I8042Device, off: u64) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command() {
        let (mut dev, exit, _) = device();
        dev.write(4, &[0x01]);
        assert!(!exit.ended());
        dev.write(4, &[CMD_RESET_CPU]);
        assert!(exit.ended());
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn control_register_and_self_test() {
        let (mut dev, _, _) = device();
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[0x47]);
        dev.write(4, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut dev, 4) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!(rd(&mut dev, 0), 0x47);
        dev.write(4, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut dev, 0), 0x55);
        assert_eq!(rd(&mut dev, 4) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn ctrl_alt_del() {
        let (mut dev, _, irq) = device();
        dev.trigger_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1);
        let codes: Vec<u8> = (0..8).map(|_| rd(&mut dev, 0)).collect();
        assert_eq!(codes, CTRL_ALT_DEL[..8]);
        // Bounded: a second and third injection without reads fill the buffer.
        dev.trigger_ctrl_alt_del().unwrap();
        dev.trigger_ctrl_alt_del().unwrap();
        assert!(matches!(
            dev.trigger_ctrl_alt_del(),
            Err(I8042Error::BufferFull)
        ));
    }

    #[test]
    fn odd_accesses() {
        let (mut dev, _, _) = device();
        let mut w = [0u8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0xff; 2]);
        dev.write(4, &[1, 2]);
        assert_eq!(rd(&mut dev, 2), 0xff);
    }
}

//! How a VM ends: the reasons, and the signal through which vCPUs, the
//! reset line and the console report the first one to the VMM thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset or a KVM reset event).
    Reset,
    /// The guest powered the machine off.
    PowerOff,
    /// The guest kernel printed a panic and then reset.
    GuestPanic,
    /// A vCPU triple-faulted.
    TripleFault {
        /// vCPU index.
        vcpu: u8,
    },
    /// KVM could not emulate a guest instruction.
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// KVM's suberror code.
        suberror: u32,
        /// Whether the host KVM is PVM.
        pvm: bool,
    },
    /// KVM failed to enter the guest.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware reason.
        hardware_reason: u64,
    },
    /// The guest reported a crash through a KVM system event.
    Crash {
        /// vCPU index.
        vcpu: u8,
    },
    /// A KVM_RUN error.
    RunError {
        /// vCPU index.
        vcpu: u8,
        /// The error.
        error: String,
    },
}

impl ExitReason {
    /// Process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => crate::EXIT_OK,
            ExitReason::GuestPanic => crate::EXIT_GUEST_PANIC,
            ExitReason::TripleFault { .. } => crate::EXIT_TRIPLE_FAULT,
            ExitReason::InternalError { .. } => crate::EXIT_INTERNAL_ERROR,
            ExitReason::FailEntry { .. } | ExitReason::Crash { .. } => crate::EXIT_GUEST_CRASH,
            ExitReason::RunError { .. } => crate::EXIT_VMM_ERROR,
        }
    }

    /// Whether this is an orderly end of the guest.
    pub fn is_clean(&self) -> bool {
        self.exit_code() == crate::EXIT_OK
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset the machine"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::GuestPanic => write!(f, "guest kernel panicked"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            ExitReason::InternalError {
                vcpu,
                suberror,
                pvm,
            } => {
                write!(
                    f,
                    "vCPU {vcpu}: KVM internal error (suberror {suberror}): \
                     a guest instruction could not be emulated"
                )?;
                if *pvm {
                    write!(
                        f,
                        "; this host's KVM is PVM, which runs only PVM-enlightened \
                         guest kernels natively and emulates everything else"
                    )?;
                }
                Ok(())
            }
            ExitReason::FailEntry {
                vcpu,
                hardware_reason,
            } => write!(
                f,
                "vCPU {vcpu}: KVM failed to enter the guest (hardware reason {hardware_reason:#x})"
            ),
            ExitReason::Crash { vcpu } => write!(f, "vCPU {vcpu}: guest reported a crash"),
            ExitReason::RunError { vcpu, error } => {
                write!(f, "vCPU {vcpu}: KVM_RUN failed: {error}")
            }
        }
    }
}

/// Where vCPUs (and the reset line) report the end of the VM. The first
/// reason reported wins.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    ended: AtomicBool,
}

impl ExitSignal {
    /// A new signal with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            ended: AtomicBool::new(false),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the VMM thread.
    pub fn report(&self, reason: ExitReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        self.ended.store(true, Ordering::Release);
        // The eventfd counter cannot overflow with one write per exit.
        let _ = self.evt.write(1);
    }

    /// Whether the VM has ended: cheap enough for a vCPU to ask after every
    /// exit, so that no vCPU runs guest code once the VM is over (a guest
    /// that asked for a reset would otherwise go on to its fallbacks, such
    /// as a triple fault).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// The eventfd the VMM thread polls.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

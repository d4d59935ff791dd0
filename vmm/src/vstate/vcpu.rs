//! vCPU threads. Each vCPU runs on its own thread with an explicit state
//! machine (Paused, Running, Exited) driven by [`VcpuEvent`]s on a channel;
//! a real-time signal kicks the thread out of `KVM_RUN` so that it sees
//! them. A vCPU only serves its own exits (port I/O and MMIO through the
//! buses); anything that ends the VM is reported through an [`ExitSignal`].

use std::cell::Cell;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

pub use super::exit::{ExitReason, ExitSignal};
use crate::devices::Bus;
use crate::logger::RateLimiter;

/// Offset from SIGRTMIN of the signal that kicks vCPUs.
const VCPU_KICK_SIGNAL_OFFSET: i32 = 0;

/// Requests to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Stop running guest code.
    Pause,
    /// Run guest code.
    Resume,
    /// End the thread.
    Finish,
}

/// Answers from a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuResponse {
    /// The vCPU is paused.
    Paused,
    /// The vCPU is running.
    Resumed,
    /// The vCPU has stopped for good (its exit was reported).
    Exited,
    /// The thread is ending (answer to Finish).
    Finished,
}

/// Errors while controlling vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The thread could not be started.
    #[error("cannot start vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread did not answer in time.
    #[error("vCPU {0} did not answer")]
    NoResponse(u8),
    /// The thread answered something unexpected.
    #[error("vCPU {id} answered {got:?} to {sent:?}")]
    Unexpected {
        /// vCPU index.
        id: u8,
        /// The request.
        sent: VcpuEvent,
        /// The answer.
        got: VcpuResponse,
    },
}

/// Life-cycle state of one vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuState {
    Paused,
    Running,
    Exited,
}

thread_local! {
    /// This thread's `kvm_run` area, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: the pointer was set by this thread's vCPU loop to its own
            // kvm_run mapping, which outlives the loop (the VcpuFd is owned by the
            // same stack frame and the pointer is cleared before it is dropped).
            // A volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*ptr).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET, kick_handler)
        .map_err(VcpuError::Signal)
}

/// What a vCPU needs to run.
#[derive(Debug)]
pub struct Vcpu {
    /// vCPU index (also its APIC ID).
    pub id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    pvm: bool,
}

enum Step {
    Continue,
    Interrupted,
    Stop(ExitReason),
    /// The VM ended (a device reported it): run no more guest code.
    Ended,
}

impl Vcpu {
    /// Wraps a configured vCPU.
    pub fn new(
        id: u8,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
        pvm: bool,
    ) -> Self {
        Vcpu {
            id,
            fd,
            pio,
            mmio,
            exit,
            pvm,
        }
    }

    fn run_once(&mut self, unhandled: &mut RateLimiter) -> Step {
        let id = self.id;
        let exits = &crate::metrics::VCPU_EXITS;
        let step = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    exits.port(port);
                    self.pio.write(u64::from(port), data);
                    Step::Continue
                }
                VcpuExit::IoIn(port, data) => {
                    exits.port(port);
                    self.pio.read(u64::from(port), data);
                    Step::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    exits.mmio(addr);
                    if !self.mmio.read(addr, data) && unhandled.allow() {
                        log::warn!("vCPU {id}: MMIO read of unmapped address {addr:#x}");
                    }
                    Step::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    exits.mmio(addr);
                    if !self.mmio.write(addr, data) && unhandled.allow() {
                        log::warn!("vCPU {id}: MMIO write to unmapped address {addr:#x}");
                    }
                    Step::Continue
                }
                VcpuExit::Hlt => {
                    exits.hlt.inc();
                    Step::Continue
                }
                VcpuExit::Shutdown => Step::Stop(ExitReason::TripleFault { vcpu: id }),
                VcpuExit::FailEntry(hardware_reason, _) => Step::Stop(ExitReason::FailEntry {
                    vcpu: id,
                    hardware_reason,
                }),
                VcpuExit::InternalError => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the exit union
                    // because the exit reason is KVM_EXIT_INTERNAL_ERROR.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    Step::Stop(ExitReason::InternalError {
                        vcpu: id,
                        suberror,
                        pvm: self.pvm,
                    })
                }
                VcpuExit::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(ExitReason::PowerOff),
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::Reset),
                    _ => Step::Stop(ExitReason::Crash { vcpu: id }),
                },
                VcpuExit::Intr => Step::Interrupted,
                other => {
                    exits.other.inc();
                    if unhandled.allow() {
                        log::warn!("vCPU {id}: unexpected exit {other:?}");
                    }
                    Step::Continue
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
            Err(e) => Step::Stop(ExitReason::RunError {
                vcpu: id,
                error: e.to_string(),
            }),
        };
        match step {
            Step::Interrupted => exits.interrupted.inc(),
            Step::Stop(_) => exits.fatal.inc(),
            Step::Continue if self.exit.ended() => return Step::Ended,
            Step::Continue | Step::Ended => {}
        }
        step
    }

    fn thread_main(mut self, events: Receiver<VcpuEvent>, responses: Sender<VcpuResponse>) {
        // Paused until the first Resume: filtered before any guest code runs.
        crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Vcpu);
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        let mut unhandled = RateLimiter::new(10, Duration::from_secs(5));
        let mut state = VcpuState::Paused;
        loop {
            match state {
                VcpuState::Paused | VcpuState::Exited => {
                    let Ok(event) = events.recv() else { break };
                    let reply = match (state, event) {
                        (_, VcpuEvent::Finish) => break,
                        (VcpuState::Exited, _) => VcpuResponse::Exited,
                        (_, VcpuEvent::Pause) => VcpuResponse::Paused,
                        (_, VcpuEvent::Resume) => {
                            state = VcpuState::Running;
                            VcpuResponse::Resumed
                        }
                    };
                    if responses.send(reply).is_err() {
                        break;
                    }
                }
                VcpuState::Running => {
                    match events.try_recv() {
                        Ok(VcpuEvent::Finish) | Err(TryRecvError::Disconnected) => break,
                        Ok(VcpuEvent::Pause) => {
                            state = VcpuState::Paused;
                            if responses.send(VcpuResponse::Paused).is_err() {
                                break;
                            }
                            continue;
                        }
                        Ok(VcpuEvent::Resume) => {
                            if responses.send(VcpuResponse::Resumed).is_err() {
                                break;
                            }
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    match self.run_once(&mut unhandled) {
                        Step::Continue => {}
                        Step::Interrupted => self.fd.set_kvm_immediate_exit(0),
                        Step::Stop(reason) => {
                            self.exit.report(reason);
                            state = VcpuState::Exited;
                        }
                        Step::Ended => state = VcpuState::Exited,
                    }
                }
            }
        }
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        let _ = responses.send(VcpuResponse::Finished);
    }

    /// Starts the vCPU thread, paused.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        let (event_tx, event_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.thread_main(event_rx, resp_tx))
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle {
            id,
            events: event_tx,
            responses: resp_rx,
            thread: Some(thread),
        })
    }
}

/// The VMM thread's end of a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u8,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
    thread: Option<JoinHandle<()>>,
}

/// How long the VMM waits for a vCPU to answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandle {
    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sends `event` and kicks the thread out of KVM_RUN.
    pub fn send(&self, event: VcpuEvent) -> Result<(), VcpuError> {
        self.events
            .send(event)
            .map_err(|_| VcpuError::NoResponse(self.id))?;
        if let Some(t) = &self.thread {
            // The thread may already have ended; nothing to kick then.
            let _ = t.kill(SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET);
        }
        Ok(())
    }

    /// Waits for the answer to the last request.
    pub fn response(&self) -> Result<VcpuResponse, VcpuError> {
        self.responses
            .recv_timeout(RESPONSE_TIMEOUT)
            .map_err(|e| match e {
                RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected => {
                    VcpuError::NoResponse(self.id)
                }
            })
    }

    /// Sends `event` and checks the answer is `expected` (or Exited).
    pub fn request(&self, event: VcpuEvent, expected: VcpuResponse) -> Result<(), VcpuError> {
        self.send(event)?;
        match self.response()? {
            r if r == expected || r == VcpuResponse::Exited => Ok(()),
            got => Err(VcpuError::Unexpected {
                id: self.id,
                sent: event,
                got,
            }),
        }
    }

    /// Ends the thread and waits for it. A vCPU blocked in KVM_RUN (an
    /// application processor still waiting for SIPI, say) returns on the
    /// kick; one that does not answer in time is left to the process exit.
    pub fn finish(&mut self) {
        let Some(t) = self.thread.take() else { return };
        if self.events.send(VcpuEvent::Finish).is_ok() {
            let _ = t.kill(SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET);
            let deadline = std::time::Instant::now() + RESPONSE_TIMEOUT;
            loop {
                match self.responses.recv_timeout(Duration::from_millis(10)) {
                    Ok(VcpuResponse::Finished) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        if std::time::Instant::now() > deadline {
                            log::error!(
                                "vCPU {} did not stop; leaving it to process exit",
                                self.id
                            );
                            return;
                        }
                        // The kick may have raced with a state change: again.
                        let _ = t.kill(SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET);
                    }
                }
            }
        }
        let _ = t.join();
    }
}

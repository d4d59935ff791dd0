//! What single-queue devices (block, rng) share: their queue once
//! activated, and the event-loop half of activate-then-register.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, ActivateError, Interrupt};

/// The queue of an activated single-queue device.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queue.
    pub queue: Queue,
    /// Written by KVM when the driver notifies the queue.
    pub evt: EventFd,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

impl ActiveQueue {
    /// Takes the one queue of `ctx`.
    pub fn from_context(mut ctx: ActivateContext) -> Result<Self, ActivateError> {
        if ctx.queues.len() != 1 || ctx.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: ctx.queues.len(),
            });
        }
        Ok(ActiveQueue {
            mem: ctx.mem,
            queue: ctx.queues.remove(0),
            evt: ctx.queue_evts.remove(0),
            interrupt: ctx.interrupt,
        })
    }

    /// Interrupts the driver unless it asked not to be (event index).
    pub fn notify_used(&mut self) {
        if !matches!(self.queue.needs_notification(&self.mem), Ok(false)) {
            self.interrupt.signal_used_queue();
        }
    }
}

/// A device with one queue served on the event loop.
pub trait SingleQueueDevice {
    /// Name for log lines.
    fn label(&self) -> String;
    /// Written on activation and reset.
    fn activate_evt(&self) -> &EventFd;
    /// The queue, while active.
    fn active_queue(&self) -> Option<&ActiveQueue>;
    /// Whether the queue eventfd is registered with the event loop.
    fn queue_registered(&mut self) -> &mut bool;
    /// Serves the queue; returns whether anything was completed.
    fn process_queue(&mut self) -> bool;
    /// The device's rate limiter, if it has one: its timer is watched
    /// with the queue, and the queue served again when it fires.
    fn rate_limiter(&mut self) -> Option<&mut crate::rate_limiter::RateLimiter> {
        None
    }
}

const ACTIVATE: u32 = 0;
const QUEUE: u32 = 1;
const LIMITER: u32 = 2;

/// `MutEventSubscriber::process` of a single-queue device.
pub fn process<D: SingleQueueDevice>(dev: &mut D, events: Events, ops: &mut EventOps) {
    match events.data() {
        ACTIVATE => {
            let _ = dev.activate_evt().read();
            let Some(evt) = dev.active_queue().map(|a| a.evt.as_raw_fd()) else {
                return;
            };
            if !*dev.queue_registered() {
                let timer = dev.rate_limiter().map(|l| l.as_raw_fd());
                let added = ops
                    .add(Events::with_data_raw(evt, QUEUE, EventSet::IN))
                    .and_then(|()| match timer {
                        Some(fd) => ops.add(Events::with_data_raw(fd, LIMITER, EventSet::IN)),
                        None => Ok(()),
                    });
                match added {
                    Ok(()) => *dev.queue_registered() = true,
                    Err(e) => log::error!("{}: cannot watch the queue: {e:?}", dev.label()),
                }
            }
            // Requests may have been queued before registration.
            dev.process_queue();
        }
        QUEUE => {
            if let Some(active) = dev.active_queue() {
                let _ = active.evt.read();
                dev.process_queue();
            }
        }
        LIMITER => {
            if let Some(limiter) = dev.rate_limiter() {
                limiter.on_timer();
            }
            if dev.active_queue().is_some() {
                dev.process_queue();
            }
        }
        _ => {}
    }
}

/// `MutEventSubscriber::init` of a single-queue device.
pub fn init<D: SingleQueueDevice>(dev: &mut D, ops: &mut EventOps) {
    if let Err(e) = ops.add(Events::with_data(
        dev.activate_evt(),
        ACTIVATE,
        EventSet::IN,
    )) {
        log::error!("{}: cannot watch the activate event: {e:?}", dev.label());
    }
}

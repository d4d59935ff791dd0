//! The block device on the event loop (activate, then register the queue).

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::Block;
use crate::devices::virtio::single_queue::{self, ActiveQueue, SingleQueueDevice};

impl SingleQueueDevice for Block {
    fn label(&self) -> String {
        format!("virtio-blk {}", self.id())
    }
    fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }
    fn active_queue(&self) -> Option<&ActiveQueue> {
        self.active.as_ref()
    }
    fn queue_registered(&mut self) -> &mut bool {
        &mut self.queue_registered
    }
    fn process_queue(&mut self) -> bool {
        Block::process_queue(self)
    }
    fn rate_limiter(&mut self) -> Option<&mut crate::rate_limiter::RateLimiter> {
        Some(&mut self.limiter)
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        single_queue::process(self, events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        single_queue::init(self, ops);
    }
}

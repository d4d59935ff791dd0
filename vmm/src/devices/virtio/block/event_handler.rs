//! The block device on the event loop: registers its queue once activated,
//! then serves it on every notification.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;

const ACTIVATE: u32 = 0;
const QUEUE: u32 = 1;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                if let Some(active) = &self.active {
                    if !self.queue_registered {
                        match ops.add(Events::with_data(&active.queue_evt, QUEUE, EventSet::IN)) {
                            Ok(()) => self.queue_registered = true,
                            Err(e) => log::error!(
                                "virtio-blk {}: cannot watch the queue: {e:?}",
                                self.id()
                            ),
                        }
                    }
                    self.process_queue();
                }
            }
            QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evt.read();
                    self.process_queue();
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            log::error!(
                "virtio-blk {}: cannot watch the activate event: {e:?}",
                self.id()
            );
        }
    }
}

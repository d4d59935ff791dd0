//! The virtio-fs device on the event loop: once active, each queue's call
//! eventfd (signalled by the back end) raises the device interrupt.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Fs;

const ACTIVATE: u32 = 0;
/// Call eventfd of queue `n` is `CALL + n`.
const CALL: u32 = 1;

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                if self.interrupt.is_none() || self.registered {
                    return;
                }
                let mut added = Ok(());
                for (n, call) in self.calls.iter().enumerate() {
                    added = added.and_then(|()| {
                        ops.add(Events::with_data(call, CALL + n as u32, EventSet::IN))
                    });
                }
                match added {
                    Ok(()) => self.registered = true,
                    Err(e) => log::error!(
                        "virtio-fs {}: cannot watch the back end's calls: {e:?}",
                        self.tag()
                    ),
                }
            }
            n if n >= CALL && ((n - CALL) as usize) < self.calls.len() => {
                let _ = self.calls[(n - CALL) as usize].read();
                if let Some(interrupt) = &self.interrupt {
                    interrupt.signal_used_queue();
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
            log::error!("virtio-fs {}: cannot watch activation: {e:?}", self.tag());
        }
    }
}

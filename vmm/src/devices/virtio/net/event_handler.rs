//! The network device on the event loop: queues and the TAP are registered
//! once activated; the TAP is watched only while the guest has receive
//! buffers, so a full receive queue does not spin the loop.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Net;

const ACTIVATE: u32 = 0;
const RX_QUEUE: u32 = 1;
const TX_QUEUE: u32 = 2;
const TAP: u32 = 3;
const RX_LIMITER: u32 = 4;
const TX_LIMITER: u32 = 5;

impl Net {
    fn watch_tap(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.tap_watched {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        let ev = Events::with_data_raw(self.tap.as_raw_fd(), TAP, set);
        if ops.modify(ev).is_ok() {
            self.tap_watched = on;
        }
    }

    fn rx(&mut self, ops: &mut EventOps) {
        let have_buffers = self.process_rx();
        self.watch_tap(ops, have_buffers);
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                let Some(active) = &self.active else { return };
                if !self.registered {
                    let added = ops
                        .add(Events::with_data(&active.rx_evt, RX_QUEUE, EventSet::IN))
                        .and_then(|_| {
                            ops.add(Events::with_data(&active.tx_evt, TX_QUEUE, EventSet::IN))
                        })
                        .and_then(|_| {
                            ops.add(Events::with_data_raw(
                                self.tap.as_raw_fd(),
                                TAP,
                                EventSet::IN,
                            ))
                        })
                        .and_then(|_| {
                            ops.add(Events::with_data_raw(
                                self.rx_limiter.as_raw_fd(),
                                RX_LIMITER,
                                EventSet::IN,
                            ))
                        })
                        .and_then(|_| {
                            ops.add(Events::with_data_raw(
                                self.tx_limiter.as_raw_fd(),
                                TX_LIMITER,
                                EventSet::IN,
                            ))
                        });
                    match added {
                        Ok(()) => {
                            self.registered = true;
                            self.tap_watched = true;
                        }
                        Err(e) => {
                            log::error!("virtio-net {}: cannot watch the queues: {e:?}", self.iface)
                        }
                    }
                }
                self.process_tx();
                self.rx(ops);
            }
            RX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.rx_evt.read();
                    self.rx(ops);
                }
            }
            TX_QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.tx_evt.read();
                    self.process_tx();
                }
            }
            RX_LIMITER => {
                self.rx_limiter.on_timer();
                if self.active.is_some() {
                    self.rx(ops);
                }
            }
            TX_LIMITER => {
                self.tx_limiter.on_timer();
                self.process_tx();
            }
            TAP => {
                if self.active.is_some() {
                    self.rx(ops);
                } else {
                    // Not active (reset): stop watching until reactivated.
                    self.watch_tap(ops, false);
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
                "virtio-net {}: cannot watch the activate event: {e:?}",
                self.iface
            );
        }
    }
}

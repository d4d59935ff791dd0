//! The vsock device on the event loop: queues, the listening socket, host
//! clients in their handshake and connected streams.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Vsock;
use super::muxer::{HANDSHAKE, STREAM};

const ACTIVATE: u32 = 0;
const RX: u32 = 1;
const TX: u32 = 2;
const EV: u32 = 3;
const LISTENER: u32 = 4;

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                let Some(active) = &self.active else {
                    // Reset by the driver: drop all connections.
                    self.muxer.clear(ops);
                    return;
                };
                if !self.registered {
                    let added = ops
                        .add(Events::with_data(&active.evts[0], RX, EventSet::IN))
                        .and_then(|_| ops.add(Events::with_data(&active.evts[1], TX, EventSet::IN)))
                        .and_then(|_| ops.add(Events::with_data(&active.evts[2], EV, EventSet::IN)))
                        .and_then(|_| {
                            ops.add(Events::with_data_raw(
                                self.muxer.listener_fd(),
                                LISTENER,
                                EventSet::IN,
                            ))
                        });
                    match added {
                        Ok(()) => self.registered = true,
                        Err(e) => log::error!("vsock: cannot watch the device: {e:?}"),
                    }
                }
                self.process_tx(ops);
                self.process_rx(ops);
            }
            RX => {
                if let Some(active) = &self.active {
                    let _ = active.evts[0].read();
                    self.muxer.rx_starved = false;
                    self.process_rx(ops);
                }
            }
            TX => {
                if let Some(active) = &self.active {
                    let _ = active.evts[1].read();
                    self.process_tx(ops);
                    self.process_rx(ops);
                }
            }
            EV => {
                if let Some(active) = &self.active {
                    let _ = active.evts[2].read();
                    // Event buffers are only used for transport resets, which
                    // this device does not send.
                    let _ = &active.ev;
                }
            }
            LISTENER => {
                if self.active.is_some() {
                    self.muxer.accept(ops);
                } else {
                    // Drain clients while no driver is active: they are refused.
                    self.muxer.accept(ops);
                    self.muxer.clear(ops);
                }
            }
            HANDSHAKE => {
                self.muxer.handshake_event(events.fd(), ops);
                self.process_rx(ops);
            }
            STREAM => {
                self.muxer
                    .stream_event(events.fd(), events.event_set(), ops);
                self.process_rx(ops);
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
            log::error!("vsock: cannot watch the activate event: {e:?}");
        }
    }
}

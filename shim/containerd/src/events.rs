//! Task events for containerd, published in the order they happen: every
//! event goes through one channel to one publishing thread, so a slow
//! containerd never holds up a task call and a TaskExit never overtakes
//! the TaskStart before it.

use std::sync::mpsc::{Receiver, Sender, channel};

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// One event: its topic and message.
type Event = (&'static str, Box<dyn MessageDyn>);

/// Where task events are sent.
#[derive(Debug, Clone)]
pub struct Events {
    tx: Sender<Event>,
}

impl Events {
    /// Starts the publishing thread for `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, rx) = channel::<Event>();
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || publish_all(&publisher, &namespace, &rx));
        Events { tx }
    }

    /// Queues `event` on `topic`.
    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        let _ = self.tx.send((topic, Box::new(event)));
    }
}

fn publish_all(publisher: &RemotePublisher, namespace: &str, rx: &Receiver<Event>) {
    while let Ok((topic, event)) = rx.recv() {
        // containerd may be restarting: try a few times, then drop it
        // (containerd re-reads task state on reconnect).
        for attempt in 0..5 {
            match publisher.publish(Context::default(), topic, namespace, event.clone_box()) {
                Ok(()) => break,
                Err(e) => {
                    log::warn!("publish {topic}: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
                }
            }
        }
    }
}

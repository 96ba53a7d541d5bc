//! The runtime's one "stop now" signal, a leaf module: every task (admin, leader election,
//! sources, webhooks, discovery streams) imports it from here and nothing here imports them, so
//! the wiring module ([`crate::runtime`]) depends on the tasks and never the other way round.

use tokio::sync::watch;

/// A cloneable "stop now" signal shared by every task of the runtime.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// A new signal and the trigger that fires it.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// True once shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been requested (or the trigger was dropped).
    pub async fn triggered(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// An owned future that resolves on shutdown, for `serve_with_shutdown`-style APIs.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut this = self.clone();
        async move { this.triggered().await }
    }
}

impl ShutdownTrigger {
    /// Asks every task holding a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A new receiver of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

//! One shutdown signal for every background worker.

use tokio::sync::watch;

/// Sends the shutdown signal; dropping it also signals.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Listens for the shutdown signal. Cheap to clone; one per worker.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been signalled (at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

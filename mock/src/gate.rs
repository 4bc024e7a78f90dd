//! The release gate behind [`MockUpstream::hold_streams`](crate::MockUpstream::hold_streams).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

/// Holds stream events while on; each release lets one waiting (or the next) event through.
#[derive(Debug)]
pub(crate) struct ReleaseGate {
    holding: watch::Sender<bool>,
    releases: Semaphore,
}

/// What a held event waits on.
pub(crate) type Held = Pin<Box<dyn Future<Output = ()> + Send>>;

impl ReleaseGate {
    pub(crate) fn new() -> Self {
        Self {
            holding: watch::Sender::new(false),
            releases: Semaphore::new(0),
        }
    }

    pub(crate) fn is_holding(&self) -> bool {
        *self.holding.borrow()
    }

    pub(crate) fn set_holding(&self, on: bool) {
        if on {
            // A fresh hold starts with no releases left over from an earlier one.
            self.releases
                .forget_permits(self.releases.available_permits());
        }
        self.holding.send_replace(on);
    }

    pub(crate) fn release(&self, count: usize) {
        self.releases.add_permits(count);
    }

    /// Resolves when a release is granted (first come, first served) or holding is turned off.
    /// Dropping it before then consumes nothing.
    pub(crate) fn wait(self: &Arc<Self>) -> Held {
        let gate = Arc::clone(self);
        Box::pin(async move {
            let mut holding = gate.holding.subscribe();
            tokio::select! {
                permit = gate.releases.acquire() => {
                    if let Ok(permit) = permit {
                        permit.forget();
                    }
                }
                _ = holding.wait_for(|on| !*on) => {}
            }
        })
    }
}

//! The gateway's own middleware, one file per layer. [`crate::stack`] puts them in order.
//!
//! Layers that tower-http already has (catch-panic, request ids, sensitive headers) are used from
//! there; these are the ones that are ours.

pub mod access_log;
pub mod affinity;
pub mod auth;
pub mod body_model;
pub mod buffer_body;
pub mod client_limit;
pub mod client_stats;
pub mod compression;
pub mod error_response;
pub mod failover;
pub mod key_balance;
pub mod live;
pub mod metrics;
pub mod model_list;
pub mod overrides;
pub mod request_id;
pub mod response_cache;
pub mod route;
pub mod trace;
pub mod usage;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The future of a layer that either answers at once (a rejection) or calls the service
    /// inside it. No allocation either way.
    #[project = ShortCircuitProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields

    pub enum ShortCircuit<F, R> {
        /// Answered by the layer itself.
        Ready { result: Option<R> },
        /// The inner service's future.
        Inner { #[pin] future: F },
    }
}

impl<F, R> ShortCircuit<F, R> {
    /// A future that resolves to `result` without calling the inner service.
    pub fn ready(result: R) -> Self {
        ShortCircuit::Ready {
            result: Some(result),
        }
    }

    /// A future that waits for the inner service.
    pub fn inner(future: F) -> Self {
        ShortCircuit::Inner { future }
    }
}

impl<F, R> Future for ShortCircuit<F, R>
where
    F: Future<Output = R>,
{
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        match self.project() {
            ShortCircuitProj::Ready { result } => {
                Poll::Ready(result.take().expect("ShortCircuit polled after completion"))
            }
            ShortCircuitProj::Inner { future } => future.poll(cx),
        }
    }
}

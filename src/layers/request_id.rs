//! Request ids for tower-http's `SetRequestIdLayer`: `x-request-id`, kept when the client sent
//! one, otherwise `<process prefix>-<counter>` (unique per process start, no randomness per
//! request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes request ids from a per-process prefix and a counter.
#[derive(Debug, Clone)]
pub struct CounterRequestId {
    prefix: String,
    next: std::sync::Arc<AtomicU64>,
}

impl Default for CounterRequestId {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Start time and pid tell processes (and replicas) apart.
        let prefix = format!("{:x}{:x}", (nanos as u64) & 0xffff_ffff, std::process::id());
        Self {
            prefix,
            next: Default::default(),
        }
    }
}

impl MakeRequestId for CounterRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let mut m = CounterRequestId::default();
        let req = Request::new(());
        let a = m.make_request_id(&req).unwrap();
        let b = m.make_request_id(&req).unwrap();
        assert_ne!(a.header_value(), b.header_value());
    }
}

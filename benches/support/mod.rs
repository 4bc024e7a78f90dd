//! What the criterion benches share.

use std::fmt::Debug;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, Bencher};
use tower::Service;

/// Benches calling `service` with a request from `make`, for a service that answers at once
/// (its future is ready on the first poll).
pub(crate) fn bench_ready_service<S, R, M>(b: &mut Bencher<'_>, service: &mut S, make: M)
where
    S: Service<R>,
    S::Error: Debug,
    M: FnMut() -> R,
{
    let mut cx = Context::from_waker(Waker::noop());
    b.iter_batched(
        make,
        |req| {
            assert!(service.poll_ready(&mut cx).is_ready());
            let mut fut = std::pin::pin!(service.call(req));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(res) => res.unwrap(),
                Poll::Pending => unreachable!("answers at once"),
            }
        },
        BatchSize::SmallInput,
    )
}

//! One client connection's life: how long it may sit idle, and how it ends.
//!
//! A connection is *idle* while no request on it is in progress — before its first request
//! arrives (a client that connects and says nothing), between requests on a kept-alive
//! connection, and on an HTTP/2 connection that only answers pings. After
//! `server.idle_connection_timeout_seconds` of that it is closed: gracefully first (HTTP/2
//! `GOAWAY`, HTTP/1.1 close), then, if the client holds it open anyway (half a request's
//! headers, a slowloris), cut after [`CLOSE_GRACE`].
//!
//! A request is in progress from the moment its headers are in until its response body has been
//! sent (or dropped): a long stream never counts as idle.
//!
//! A request the gateway answers without reading its body (a refused token, a client limit, a bad
//! path) would end an HTTP/1.1 connection: the next request can only be read once this one's
//! body is off the wire. [`Drained`] reads such a body in the background instead, when it is
//! short ([`DRAIN_LIMIT`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a connection asked to close (idle, or the server shutting down an idle one) may take
/// before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The requests in progress on one connection: counted with atomics, so a request begins and
/// ends without waking anything; the idle watcher looks at them when its timer fires.
#[derive(Debug)]
pub struct Activity {
    in_progress: AtomicUsize,
    /// When the last request ended (or the connection began), as time since `origin`.
    last_end_nanos: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_progress: AtomicUsize::new(0),
            last_end_nanos: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Activity {
    /// A new connection's activity: idle.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A request has begun; it is in progress until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }

    /// Resolves once no request has been in progress for `timeout`.
    ///
    /// It wakes at most once per `timeout` while requests come and go: when a request is in
    /// progress it looks again a whole `timeout` later, which is never after the moment that
    /// request's end plus `timeout` would be (it ended after the look), so the close is exact.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let now = Instant::now();
            if self.in_progress.load(Ordering::Acquire) > 0 {
                tokio::time::sleep_until(crate::deadline::after(now, timeout)).await;
                continue;
            }
            let last_end = self.last_end_nanos.load(Ordering::Acquire);
            let idle_since = self.origin + Duration::from_nanos(last_end);
            let deadline = crate::deadline::after(idle_since, timeout);
            if now >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in progress (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let a = &self.0;
        let since = Instant::now().saturating_duration_since(a.origin);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        a.last_end_nanos.fetch_max(nanos, Ordering::AcqRel);
        a.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body that keeps its request in progress until it is sent or dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _request: InProgress,
    }
}

impl<B> Tracked<B> {
    /// `inner`, counted as in progress by `request`.
    pub fn new(inner: B, request: InProgress) -> Self {
        Self {
            inner,
            _request: request,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub use crate::body::DRAIN_LIMIT;

/// How long the gateway waits for the rest of a body it drains.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, is read to its end in the background (up to
/// [`DRAIN_LIMIT`] within [`DRAIN_TIME`]) instead of ending the connection: HTTP/1.1 can only
/// read the next request once this one's body is off the wire, and hyper closes a connection
/// whose request body was dropped unread. A refusal then keeps its connection, as at nginx.
#[derive(Debug)]
pub struct Drained<B: Body + Send + Unpin + 'static> {
    inner: Option<B>,
    /// Read to its end (`poll_frame` said so).
    ended: bool,
}

impl<B: Body + Send + Unpin + 'static> Drained<B> {
    /// Wraps a request body.
    pub fn new(inner: B) -> Self {
        Self {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl<B: Body + Send + Unpin + 'static> Body for Drained<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
        if frame.is_none() {
            self.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for Drained<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        // Announced longer than the limit: not worth reading.
        let too_long = body
            .size_hint()
            .exact()
            .is_some_and(|n| n > DRAIN_LIMIT as u64);
        if self.ended || body.is_end_stream() || too_long {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(DRAIN_TIME, drain(body)).await;
            });
        }
    }
}

/// Reads `body` to its end, or gives up past [`DRAIN_LIMIT`] bytes or on an error.
async fn drain<B: Body + Unpin>(mut body: B) {
    let mut read = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(frame) = frame else { return };
        if let Some(data) = frame.data_ref() {
            read += bytes::Buf::remaining(data);
            if read > DRAIN_LIMIT {
                return;
            }
        }
    }
}

/// Drives `conn` to its end: asks it to close (`graceful`) when `shutdown` turns true or when it
/// has been idle for `idle_timeout`, and cuts it [`CLOSE_GRACE`] after an idle close if it has
/// not ended by then. (After a shutdown, the server's own grace period applies instead.)
pub async fn drive<C, E, F>(
    conn: C,
    mut graceful: F,
    activity: &Activity,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
    F: FnMut(Pin<&mut C>),
{
    tokio::pin!(conn);
    let idle = activity.idle_for(idle_timeout);
    tokio::pin!(idle);
    let cut = tokio::time::sleep(Duration::MAX);
    tokio::pin!(cut);
    let (mut shutting_down, mut idle_closed) = (false, false);
    loop {
        tokio::select! {
            res = conn.as_mut() => return res,
            _ = shutdown.wait_for(|stop| *stop), if !shutting_down => {
                shutting_down = true;
                graceful(conn.as_mut());
            }
            () = &mut idle, if !idle_closed => {
                idle_closed = true;
                graceful(conn.as_mut());
                cut.as_mut().reset(crate::deadline::after(tokio::time::Instant::now(), CLOSE_GRACE));
            }
            () = &mut cut, if idle_closed => {
                tracing::debug!("idle connection did not close when asked: cut");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_in_progress_for_the_whole_timeout() {
        let activity = Activity::new();
        let t = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        activity.idle_for(t).await;
        assert_eq!(
            started.elapsed(),
            t,
            "a connection with no request is idle from the start"
        );

        // A request in progress keeps it busy however long it runs; the clock restarts when
        // it ends.
        let request = activity.begin();
        let watcher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                activity.idle_for(t).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(request);
        // Another short request 5 s later restarts the clock again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(activity.begin());
        assert_eq!(watcher.await.unwrap(), Duration::from_secs(100 + 5 + 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ignores_the_close_is_cut() {
        let activity = Activity::new();
        let (_tx, rx) = watch::channel(false);
        let mut asked = 0;
        let started = tokio::time::Instant::now();
        let res: Result<(), ()> = drive(
            std::future::pending(),
            |_| asked += 1,
            &activity,
            Duration::from_secs(3),
            rx,
        )
        .await;
        assert!(res.is_ok());
        assert_eq!(asked, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(3) + CLOSE_GRACE);
    }
}

//! Response bodies: either a small one the gateway made, or the upstream's, passed through frame by
//! frame (never buffered) with an idle timeout between frames.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::conn_pool::PooledBody;
use crate::heartbeat::{Beat, Heartbeat};

/// How much of a request body the gateway reads and throws away when it answered without reading
/// it (a refused token, a client limit, a bad path), so that an HTTP/1.1 connection can take the
/// client's next request (`crate::connection::Drained`); a body announced longer, or sent in
/// chunks, gets `Connection: close` with the refusal instead.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// Errors of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream fell silent for longer than `gemini.stream_idle_timeout_seconds` mid-body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} (gemini.stream_idle_timeout_seconds)")]
pub struct StreamIdle(pub Duration);

pin_project! {
    /// The body of every response the gateway sends.
    #[project = GatewayBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields

    pub enum GatewayBody {
        /// A body the gateway built (errors, health).
        Full { #[pin] inner: Full<Bytes> },
        /// The upstream's body, streamed through. Boxed: a response is moved through every layer
        /// on its way out, and this keeps it small.
        Upstream { inner: Pin<Box<UpstreamBody>> },
    }
}

/// What [`GatewayBody::Upstream`] holds: the upstream's body, its idle timeout, its observers and
/// heartbeats.
type UpstreamBody = Heartbeat<Observed<IdleTimeout<PooledBody>, Box<dyn BodyObserver + Send>>>;

impl GatewayBody {
    /// A body made of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full {
            inner: Full::new(bytes.into()),
        }
    }

    /// The upstream's body, ended with [`StreamIdle`] if no frame arrives within `idle`.
    pub fn upstream(inner: impl Into<PooledBody>, idle: Duration) -> Self {
        GatewayBody::Upstream {
            inner: Box::pin(Heartbeat::new(
                Observed::new(IdleTimeout::new(inner.into(), idle), None),
                None,
            )),
        }
    }

    /// Writes `beat` into an upstream body while the upstream is silent (an event stream; see
    /// [`crate::heartbeat`]). Observers never see the beats. A body the gateway built gets none.
    pub fn heartbeat(&mut self, beat: Beat) {
        if let GatewayBody::Upstream { inner } = self {
            inner.as_mut().set_beat(beat);
        }
    }

    /// Has `observer` watch an upstream body (the usage layer reads token counts this way, the
    /// response cache keeps answers), after any observer it already has; a body the gateway
    /// built has nothing to observe, and `observer` is dropped.
    pub fn tap(&mut self, observer: Box<dyn BodyObserver + Send>) {
        if let GatewayBody::Upstream { inner } = self {
            let mut body = inner.as_mut().inner();
            let observer = match body.as_mut().take_observer() {
                Some(first) => Box::new(Both(first, observer)),
                None => observer,
            };
            body.observe(observer);
        }
    }
}

/// Two observers of one body, in order.
struct Both(Box<dyn BodyObserver + Send>, Box<dyn BodyObserver + Send>);

impl BodyObserver for Both {
    fn on_data(&mut self, data: &Bytes) {
        self.0.on_data(data);
        self.1.on_data(data);
    }

    fn on_end(&mut self, end: BodyEnd) {
        self.0.on_end(end);
        self.1.on_end(end);
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GatewayBodyProj::Full { inner } => inner.poll_frame(cx).map_err(|never| match never {}),
            GatewayBodyProj::Upstream { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full { inner } => inner.is_end_stream(),
            GatewayBody::Upstream { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full { inner } => inner.size_hint(),
            GatewayBody::Upstream { inner } => inner.size_hint(),
        }
    }
}

pin_project! {
    /// A body with an idle timer that restarts on every frame: a body that falls silent for
    /// longer than the timeout ends with [`StreamIdle`] (an abnormal end, never a clean one).
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, idle_timeout: Duration) -> Self {
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle
                    .reset(crate::deadline::after(Instant::now(), *this.idle_timeout));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.poll(cx));
                Poll::Ready(Some(Err(StreamIdle(*this.idle_timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended, as a [`BodyObserver`] learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every frame was sent.
    Complete,
    /// The body failed mid-way (the upstream broke off, or went silent): the client's stream
    /// ends abnormally.
    Error,
}

/// Watches a response body go by: the layers that act when an answer is over (access log,
/// metrics, trace, usage) observe it this way instead of each wrapping the body.
///
/// [`on_end`](Self::on_end) is called once, as soon as the end is known; the observer is dropped
/// right after. An observer dropped without that call saw its client go away first.
pub trait BodyObserver {
    /// A data frame is passing.
    fn on_data(&mut self, _data: &Bytes) {}
    /// The body ended.
    fn on_end(&mut self, end: BodyEnd);
}

impl<O: BodyObserver + ?Sized> BodyObserver for Box<O> {
    fn on_data(&mut self, data: &Bytes) {
        (**self).on_data(data);
    }

    fn on_end(&mut self, end: BodyEnd) {
        (**self).on_end(end);
    }
}

pin_project! {
    /// A body with an observer (see [`BodyObserver`]). Frames pass through unchanged.
    pub struct Observed<B, O> {
        #[pin]
        inner: B,
        observer: Option<O>,
    }
}

impl<B: Body, O: BodyObserver> Observed<B, O> {
    /// `inner`, watched by `observer` (if any). A body that is already over (empty) ends at once.
    pub fn new(inner: B, observer: Option<O>) -> Self {
        let mut observer = observer;
        if inner.is_end_stream()
            && let Some(mut o) = observer.take()
        {
            o.on_end(BodyEnd::Complete);
        }
        Self { inner, observer }
    }

    /// Starts watching a body (in place of any observer it had).
    pub fn observe(self: Pin<&mut Self>, observer: O) {
        let this = self.project();
        if this.inner.is_end_stream() {
            let mut o = observer;
            o.on_end(BodyEnd::Complete);
        } else {
            *this.observer = Some(observer);
        }
    }

    /// Takes the body's observer away.
    pub fn take_observer(self: Pin<&mut Self>) -> Option<O> {
        self.project().observer.take()
    }
}

impl<B, O> Body for Observed<B, O>
where
    B: Body<Data = Bytes>,
    O: BodyObserver,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(o) = this.observer.as_mut() {
            let end = match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        o.on_data(data);
                    }
                    // hyper stops polling once a body says it has ended.
                    this.inner.is_end_stream().then_some(BodyEnd::Complete)
                }
                Some(Err(_)) => Some(BodyEnd::Error),
                None => Some(BodyEnd::Complete),
            };
            if let Some(end) = end {
                o.on_end(end);
                *this.observer = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream_shim::ReceiverStream;

    mod tokio_stream_shim {
        use super::*;
        /// A minimal `Stream` over an mpsc receiver (avoids a dependency for one test).
        pub(super) struct ReceiverStream(pub(super) mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);
        impl futures_core::Stream for ReceiverStream {
            type Item = Result<Frame<Bytes>, BoxError>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                self.0.poll_recv(cx)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_restarts_on_each_frame_and_ends_a_silent_body_with_an_error() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = std::pin::pin!(IdleTimeout::new(
            StreamBody::new(ReceiverStream(rx)),
            Duration::from_secs(10)
        ));

        tokio::time::advance(Duration::from_secs(9)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(body.as_mut().frame().await.unwrap().unwrap().is_data());

        // 9 s more: 18 s since start but only 9 s since the last frame, so still open.
        tokio::time::advance(Duration::from_secs(9)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        assert!(body.as_mut().frame().await.unwrap().unwrap().is_data());

        // Then silence: the body ends with StreamIdle, not a clean end.
        let err = body.as_mut().frame().await.unwrap().unwrap_err();
        assert!(err.is::<StreamIdle>(), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_too_large_for_the_clock_re_arms_without_panicking() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = std::pin::pin!(IdleTimeout::new(
            StreamBody::new(ReceiverStream(rx)),
            Duration::from_secs(u64::MAX)
        ));
        for chunk in [&b"a"[..], b"b"] {
            tx.send(Ok(Frame::data(Bytes::from_static(chunk))))
                .await
                .unwrap();
            assert!(body.as_mut().frame().await.unwrap().unwrap().is_data());
        }
        drop(tx);
        assert!(body.as_mut().frame().await.is_none());
    }
}

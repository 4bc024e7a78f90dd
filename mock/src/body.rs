//! The response body: a pre-built buffer, or stream events written as separate frames.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::gate::{Held, ReleaseGate};

/// Every response body the mock sends.
pub(crate) struct MockBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Events(Box<EventStream>),
}

impl MockBody {
    /// A body sent whole, with a `content-length`.
    pub(crate) fn full(bytes: Bytes) -> Self {
        MockBody(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        MockBody(Kind::Full(None))
    }

    /// A streamed body, one frame per event.
    pub(crate) fn events(events: EventStream) -> Self {
        MockBody(Kind::Events(Box::new(events)))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        match &mut self.0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Events(events) => events
                .poll_event(cx)
                .map(|event| event.map(|e| e.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Events(_) => SizeHint::default(),
        }
    }
}

/// The error a stream ends with under `x-mock-fail-after-chunks`: hyper then aborts the
/// response (HTTP/1.1 closes the connection before the last chunk, HTTP/2 resets the stream).
#[derive(Debug)]
pub(crate) struct StreamAborted;

impl fmt::Display for StreamAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream aborted by x-mock-fail-after-chunks")
    }
}

impl Error for StreamAborted {}

/// Pre-built events played one per frame: the first at once, each later one after the delay
/// and, while the gate holds, after a release.
pub(crate) struct EventStream {
    events: Arc<[Bytes]>,
    next: usize,
    /// Index at which the stream fails instead of sending an event (may equal `events.len()`).
    abort_at: Option<usize>,
    delay: Duration,
    gate: Arc<ReleaseGate>,
    wait: Wait,
}

enum Wait {
    None,
    Delay(Pin<Box<Sleep>>),
    Gate,
    Held(Held),
    /// Fail at the next poll (after hyper has flushed).
    Abort,
    Done,
}

impl EventStream {
    pub(crate) fn new(
        events: Arc<[Bytes]>,
        delay: Duration,
        fail_after: Option<usize>,
        gate: Arc<ReleaseGate>,
    ) -> Self {
        let abort_at = fail_after.map(|n| n.min(events.len()));
        EventStream {
            events,
            next: 0,
            abort_at,
            delay,
            gate,
            wait: Wait::None,
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamAborted>>> {
        loop {
            match &mut self.wait {
                Wait::Done => return Poll::Ready(None),
                Wait::Abort => {
                    self.wait = Wait::Done;
                    return Poll::Ready(Some(Err(StreamAborted)));
                }
                Wait::None => {
                    if self.abort_at == Some(self.next) {
                        // hyper drops what it has buffered when a body fails, so give it one
                        // turn to flush the events already produced before failing.
                        self.wait = Wait::Abort;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if self.next == self.events.len() {
                        self.wait = Wait::Done;
                        return Poll::Ready(None);
                    }
                    if self.next == 0 {
                        return Poll::Ready(Some(Ok(self.emit())));
                    }
                    self.wait = if self.delay.is_zero() {
                        Wait::Gate
                    } else {
                        Wait::Delay(Box::pin(tokio::time::sleep(self.delay)))
                    };
                }
                Wait::Delay(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.wait = Wait::Gate;
                }
                Wait::Gate => {
                    if !self.gate.is_holding() {
                        return Poll::Ready(Some(Ok(self.emit())));
                    }
                    self.wait = Wait::Held(self.gate.wait());
                }
                Wait::Held(held) => {
                    ready!(held.as_mut().poll(cx));
                    return Poll::Ready(Some(Ok(self.emit())));
                }
            }
        }
    }

    fn emit(&mut self) -> Bytes {
        let event = self.events[self.next].clone();
        self.next += 1;
        self.wait = Wait::None;
        event
    }
}

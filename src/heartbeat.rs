//! Stream heartbeats: while a server-sent-events answer is open and the upstream silent (a
//! thinking model can say nothing for a minute), a few bytes every period keep the idle timers
//! of load balancers and CDNs on the way from cutting it.
//!
//! A beat is written only at an event boundary — when the last bytes sent ended with a blank line
//! (or nothing was sent yet) — never inside an event, and never once the upstream's body has
//! ended. The timer restarts on every piece of the upstream's body; the body itself is passed on
//! frame by frame, never buffered. What a beat is (an empty line, or an SSE comment) is the
//! caller's choice.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How often, what, and who hears of each beat.
#[derive(Clone)]
pub struct Beat {
    /// Silence after which a beat is written (and between beats).
    pub every: Duration,
    /// The bytes of one beat: `"\n"` (an empty line, a no-op between events) or a comment
    /// (`": keep-alive\n\n"`).
    pub bytes: Bytes,
    /// Called once per beat written (a metrics counter).
    pub on_beat: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("every", &self.every)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// `inner` with heartbeats (none when `beat` is `None`: frames pass through untouched).
    pub struct Heartbeat<B> {
        #[pin]
        inner: B,
        beat: Option<Beat>,
        timer: Option<Pin<Box<Sleep>>>,
        // The last bytes sent (up to 4), to tell an event boundary.
        tail: [u8; 4],
        tail_len: u8,
        ended: bool,
    }
}

impl<B> Heartbeat<B> {
    /// Wraps `inner`; with `beat`, beats start after `beat.every` of silence.
    pub fn new(inner: B, beat: Option<Beat>) -> Self {
        let timer = beat.as_ref().map(|b| Box::pin(tokio::time::sleep(b.every)));
        Self {
            inner,
            beat,
            timer,
            tail: [0; 4],
            tail_len: 0,
            ended: false,
        }
    }

    /// Turns beats on (a body that had none).
    pub fn set_beat(self: Pin<&mut Self>, beat: Beat) {
        let this = self.project();
        *this.timer = Some(Box::pin(tokio::time::sleep(beat.every)));
        *this.beat = Some(beat);
    }

    /// The wrapped body.
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut B> {
        self.project().inner
    }
}

/// Whether bytes ending in `tail` end an SSE event (a blank line), or nothing was sent yet.
fn at_boundary(tail: &[u8]) -> bool {
    tail.is_empty()
        || tail.ends_with(b"\n\n")
        || tail.ends_with(b"\r\r")
        || tail.ends_with(b"\r\n\r\n")
}

/// `tail` (its first `len` bytes) followed by `data`, cut to its last 4 bytes (no allocation:
/// this runs on every frame of every answer).
fn push_tail(tail: &mut [u8; 4], len: &mut u8, data: &[u8]) {
    if data.len() >= 4 {
        tail.copy_from_slice(&data[data.len() - 4..]);
        *len = 4;
        return;
    }
    let old = *len as usize;
    let total = old + data.len();
    let keep_old = old.min(4 - data.len());
    let mut out = [0u8; 4];
    out[..keep_old].copy_from_slice(&tail[old - keep_old..old]);
    out[keep_old..keep_old + data.len()].copy_from_slice(data);
    *tail = out;
    *len = total.min(4) as u8;
}

impl<B> Body for Heartbeat<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    push_tail(this.tail, this.tail_len, data);
                }
                if let (Some(beat), Some(timer)) = (this.beat.as_ref(), this.timer.as_mut()) {
                    timer.as_mut().reset(Instant::now() + beat.every);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                *this.ended = true;
                *this.timer = None;
                Poll::Ready(other)
            }
            Poll::Pending => {
                let (Some(beat), Some(timer)) = (this.beat.as_ref(), this.timer.as_mut()) else {
                    return Poll::Pending;
                };
                // Inside an event: no beat until the upstream finishes it (its next frame
                // restarts the timer).
                if *this.ended || !at_boundary(&this.tail[..*this.tail_len as usize]) {
                    return Poll::Pending;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                timer.as_mut().reset(Instant::now() + beat.every);
                (beat.on_beat)();
                Poll::Ready(Some(Ok(Frame::data(beat.bytes.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Beats add bytes: no exact size.
        match self.beat {
            None => self.inner.size_hint(),
            Some(_) => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.inner.size_hint().lower());
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    type Tx = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

    struct Rx(mpsc::Receiver<Result<Frame<Bytes>, std::convert::Infallible>>);
    impl futures_core::Stream for Rx {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }

    fn body(bytes: &'static [u8]) -> (Tx, Heartbeat<StreamBody<Rx>>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel(8);
        let beats = Arc::new(AtomicUsize::new(0));
        let counted = beats.clone();
        let beat = Beat {
            every: Duration::from_secs(1),
            bytes: Bytes::from_static(bytes),
            on_beat: Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            }),
        };
        (
            tx,
            Heartbeat::new(StreamBody::new(Rx(rx)), Some(beat)),
            beats,
        )
    }

    async fn send(tx: &Tx, data: &'static [u8]) {
        tx.send(Ok(Frame::data(Bytes::from_static(data))))
            .await
            .unwrap();
    }

    /// The next frame's bytes, or `None` if none comes within `secs` of (paused) time.
    async fn next_within<B: Body<Data = Bytes> + Unpin>(b: &mut B, secs: u64) -> Option<Bytes>
    where
        B::Error: std::fmt::Debug,
    {
        tokio::time::timeout(Duration::from_secs(secs), b.frame())
            .await
            .ok()
            .flatten()
            .map(|f| f.unwrap().into_data().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn beats_fill_silences_between_events_only() {
        let (tx, body, beats) = body(b"\n");
        let mut body = Box::pin(body);
        // Silent from the start: a beat a second.
        assert_eq!(next_within(&mut body, 5).await.as_deref(), Some(&b"\n"[..]));
        assert_eq!(next_within(&mut body, 5).await.as_deref(), Some(&b"\n"[..]));
        // An event, then silence: beats again.
        send(&tx, b"data: {\"a\":1}\r\n\r\n").await;
        assert_eq!(
            next_within(&mut body, 1).await.as_deref(),
            Some(&b"data: {\"a\":1}\r\n\r\n"[..])
        );
        assert_eq!(next_within(&mut body, 5).await.as_deref(), Some(&b"\n"[..]));
        // Half an event: no beat however long the silence, until it is finished.
        send(&tx, b"data: {\"b\":").await;
        assert_eq!(
            next_within(&mut body, 1).await.as_deref(),
            Some(&b"data: {\"b\":"[..])
        );
        assert_eq!(next_within(&mut body, 60).await, None);
        send(&tx, b"2}\n").await;
        send(&tx, b"\n").await;
        assert_eq!(
            next_within(&mut body, 1).await.as_deref(),
            Some(&b"2}\n"[..])
        );
        assert_eq!(next_within(&mut body, 1).await.as_deref(), Some(&b"\n"[..]));
        assert_eq!(beats.load(Ordering::Relaxed), 3);
        assert_eq!(next_within(&mut body, 5).await.as_deref(), Some(&b"\n"[..]));
        // The end: nothing after it.
        drop(tx);
        assert!(body.as_mut().frame().await.is_none());
        assert_eq!(beats.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_gets_no_beats() {
        let (tx, body, beats) = body(b": keep-alive\n\n");
        let mut body = Box::pin(body);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(900)).await;
            send(&tx, b"data: {}\n\n").await;
            assert_eq!(
                next_within(&mut body, 1).await.as_deref(),
                Some(&b"data: {}\n\n"[..])
            );
        }
        assert_eq!(beats.load(Ordering::Relaxed), 0);
        assert_eq!(
            next_within(&mut body, 2).await.as_deref(),
            Some(&b": keep-alive\n\n"[..])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_beat_frames_pass_untouched() {
        let (tx, rx) = mpsc::channel(8);
        let mut body = Box::pin(Heartbeat::new(StreamBody::new(Rx(rx)), None));
        assert_eq!(next_within(&mut body, 60).await, None);
        send(&tx, b"x").await;
        drop(tx);
        assert_eq!(next_within(&mut body, 1).await.as_deref(), Some(&b"x"[..]));
        assert!(body.as_mut().frame().await.is_none());
    }

    #[test]
    fn boundaries_are_blank_lines() {
        let mut tail = [0; 4];
        let mut len = 0;
        assert!(at_boundary(&tail[..len as usize]));
        for (data, boundary) in [
            (&b"data: x\n"[..], false),
            (b"\n", true),
            (b"data: y\r\n", false),
            (b"\r\n", true),
            (b"data: z", false),
            (b"\r\r", true),
        ] {
            push_tail(&mut tail, &mut len, data);
            assert_eq!(at_boundary(&tail[..len as usize]), boundary, "{data:?}");
        }
    }
}

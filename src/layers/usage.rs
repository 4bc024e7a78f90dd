//! Usage: counts the tokens of each answer against its key, read from `usageMetadata` (or the
//! OpenAI-compatible `usage`) at the end of the answer — a plain JSON answer or a stream's last
//! event alike — without buffering it.
//!
//! Sits inside key balance (it needs the key and the model) and above the upstream client. It taps
//! successful answers: the body keeps the last few frames (reference-counted, no copy) and, when it
//! ends, finds the usage in them. Tokens feed the key's `max_tokens_per_minute` budget and its
//! counters, and the answer (with its tokens) goes into the usage history and the client's token
//! budget ([`crate::usage`]). A body that fails mid-stream counts as a server error on the key.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::{BodyEnd, BodyObserver, GatewayBody};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::{KeyOutcome, KeyStateStore, SelectedKey};
use crate::route::Route;
use crate::usage::{RequestUsage, TokenSink, find_usage};

/// How much of an answer's end is kept to find its usage in.
const TAIL_BYTES: usize = 16 * 1024;
/// Frames up to this size are kept as copies, larger ones by reference (see `on_data`).
const COPIED_FRAME_BYTES: usize = 2 * 1024;

/// Applies [`Usage`].
#[derive(Debug, Clone)]
pub struct UsageLayer {
    gateway: Arc<Gateway>,
}

impl UsageLayer {
    /// Reports into the gateway's key state.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for UsageLayer {
    type Service = Usage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Usage {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Taps successful answers for their token usage.
#[derive(Debug, Clone)]
pub struct Usage<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for Usage<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let model = req
            .extensions()
            .get::<Route>()
            .and_then(|r| r.model.clone())
            .unwrap_or_else(|| Arc::from(""));
        let sink = TokenSink::for_request(&self.gateway, &req, &model);
        let default_tpd = self.gateway.live().config.auth.default_tokens_per_day;
        let history = self.gateway.usage().request(&req, &model, default_tpd);
        ResponseFuture {
            future: self.inner.call(req),
            tap: Some((self.gateway.store_handle(), model, sink, history)),
        }
    }
}

/// What a response future needs to tap its answer.
type Tap = (
    Arc<dyn KeyStateStore>,
    Arc<str>,
    Option<TokenSink>,
    Option<RequestUsage>,
);

pin_project! {
    /// Response future of [`Usage`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        tap: Option<Tap>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.future.poll(cx))?;
        if res.status().is_success()
            && let (Some(key), Some((store, model, sink, history))) = (
                res.extensions().get::<SelectedKey>().cloned(),
                this.tap.take(),
            )
        {
            let streamed = res
                .extensions()
                .get::<crate::upstream::StreamedAnswer>()
                .is_some();
            let mut tap = UsageTap::new(store, key, model, sink, history);
            tap.streamed = streamed;
            res.body_mut().tap(Box::new(tap));
        }
        Poll::Ready(Ok(res))
    }
}

/// Keeps the tail of an answer and reports its usage when it ends.
pub struct UsageTap {
    store: Arc<dyn KeyStateStore>,
    key: SelectedKey,
    model: Arc<str>,
    tail: VecDeque<Bytes>,
    tail_len: usize,
    /// A stream: its frames are kept as copies (see `on_data`).
    streamed: bool,
    /// Metrics and the request's span, when on.
    sink: Option<TokenSink>,
    /// The usage history and the client's budget, when on; taken when the answer is reported.
    history: Option<RequestUsage>,
}

impl std::fmt::Debug for UsageTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTap")
            .field("key", &self.key.0.id)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl UsageTap {
    fn new(
        store: Arc<dyn KeyStateStore>,
        key: SelectedKey,
        model: Arc<str>,
        sink: Option<TokenSink>,
        history: Option<RequestUsage>,
    ) -> Self {
        Self {
            store,
            key,
            model,
            tail: VecDeque::new(),
            tail_len: 0,
            streamed: false,
            sink,
            history,
        }
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        // Dropped before its end: the client went away during the answer.
        if let Some(h) = self.history.take() {
            h.cancelled(&self.key.0.id);
        }
    }
}

impl BodyObserver for UsageTap {
    fn on_data(&mut self, data: &Bytes) {
        // A frame is a slice of the connection's read buffer: keeping a reference-counted clone
        // keeps that whole buffer (8 KiB or more) alive, and the connection reads into a new
        // one. A stream lives long and its events are small: their copies cost less than the
        // buffers they would pin. A plain answer ends at once: kept by reference.
        let kept = if self.streamed && data.len() <= COPIED_FRAME_BYTES {
            Bytes::copy_from_slice(data)
        } else {
            data.clone()
        };
        self.tail.push_back(kept);
        self.tail_len += data.len();
        while self.tail.len() > 1 && self.tail_len - self.tail[0].len() >= TAIL_BYTES {
            let dropped = self.tail.pop_front().map_or(0, |b| b.len());
            self.tail_len -= dropped;
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        let history = self.history.take();
        if end == BodyEnd::Error {
            let k = &self.key.0;
            match k.slot() {
                Some(slot) => self.store.record_at(slot, &k.id, KeyOutcome::ServerError),
                None => self.store.record(&k.id, KeyOutcome::ServerError),
            }
            if let Some(h) = history {
                h.broke_off(&self.key.0.id);
            }
            return;
        }
        // Most answers end in one frame: read it in place; otherwise join the few kept.
        let joined;
        let tail: &[u8] = match self.tail.len() {
            1 => &self.tail[0],
            _ => {
                let mut all = Vec::with_capacity(self.tail_len);
                for chunk in &self.tail {
                    all.extend_from_slice(chunk);
                }
                joined = all;
                &joined
            }
        };
        let tokens = find_usage(tail);
        if let Some(tokens) = tokens {
            let k = &self.key.0;
            let now = Instant::now();
            match k.slot() {
                Some(slot) => {
                    self.store
                        .add_tokens_at(slot, &k.id, &self.model, &k.limits, tokens, now)
                }
                None => self
                    .store
                    .add_tokens(&k.id, &self.model, &k.limits, tokens, now),
            }
            if let Some(sink) = &self.sink {
                sink.record(&tokens);
            }
        }
        if let Some(h) = history {
            h.answered(&self.key.0.id, tokens.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_pool::Tokens;

    #[test]
    fn finds_gemini_usage_in_a_pretty_answer_and_in_the_last_sse_event() {
        let pretty = br#"{
  "candidates": [{"content": {"parts": [{"text": "a \"usage\": {x}"}]}}],
  "usageMetadata": {
    "promptTokenCount": 8,
    "candidatesTokenCount": 12,
    "totalTokenCount": 24,
    "thoughtsTokenCount": 4
  },
  "modelVersion": "m"
}"#;
        assert_eq!(
            find_usage(pretty),
            Some(Tokens {
                prompt: 8,
                candidates: 12,
                thoughts: 4,
                cached: 0,
                total: 24
            })
        );
        let sse = b"data: {\"usageMetadata\":{\"promptTokenCount\":8,\"totalTokenCount\":8}}\r\n\r\n\
data: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":3,\"totalTokenCount\":11}}\r\n\r\n";
        assert_eq!(find_usage(sse).map(|t| t.total), Some(11));
    }

    #[test]
    fn finds_openai_usage() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            find_usage(body),
            Some(Tokens {
                prompt: 5,
                candidates: 7,
                total: 12,
                ..Tokens::default()
            })
        );
    }

    #[test]
    fn nothing_when_absent_or_cut() {
        assert_eq!(find_usage(b"{\"candidates\":[]}"), None);
        assert_eq!(
            find_usage(b"{\"usageMetadata\":{\"promptTokenCount\":"),
            None
        );
        // Cut inside a string, right after a backslash.
        assert_eq!(find_usage(b"{\"usageMetadata\":{\"a\\"), None);
        // Braces and escaped quotes inside strings do not count.
        assert_eq!(
            find_usage(br#"{"usageMetadata":{"x":"}\"{","totalTokenCount":3}}"#).map(|t| t.total),
            Some(3)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::config::{ApiKeyConfig, Secret};
        use crate::key_pool::{KeyPool, MemoryStore};

        /// A Gemini-shaped answer: `n` candidates pieces of text (with quotes, braces and
        /// "usage"-looking text inside), then the usage, SSE-framed or as one JSON document.
        fn answer(texts: &[String], tokens: (u32, u32), sse: bool) -> Vec<u8> {
            let usage = format!(
                r#""usageMetadata":{{"promptTokenCount":{},"candidatesTokenCount":{},"totalTokenCount":{}}}"#,
                tokens.0,
                tokens.1,
                u64::from(tokens.0) + u64::from(tokens.1)
            );
            let piece = |t: &str| {
                format!(
                    r#"{{"candidates":[{{"content":{{"parts":[{{"text":{}}}]}}}}]"#,
                    serde_json::to_string(t).unwrap()
                )
            };
            if sse {
                let mut out = String::new();
                for t in texts {
                    out.push_str(&format!("data: {}}}\r\n\r\n", piece(t)));
                }
                out.push_str(&format!("data: {},{usage}}}\r\n\r\n", piece("")));
                out.into_bytes()
            } else {
                let all: String = texts.concat();
                format!("{},\n  {usage}\n}}", piece(&all)).into_bytes()
            }
        }

        /// Feeds `body` to a fresh tap in pieces cut at `cuts`; the tokens counted on the key.
        fn tapped(body: &[u8], cuts: &[usize]) -> u64 {
            tapped_as(body, cuts, false)
        }

        /// A fresh tap on key `k` of a one-key pool, and its store.
        fn fresh_tap(streamed: bool) -> (UsageTap, Arc<MemoryStore>) {
            let store = Arc::new(MemoryStore::new());
            let pool = KeyPool::new(&[ApiKeyConfig {
                id: "k".into(),
                key: Secret::new("AIza-k"),
                weight: 1,
                max_requests_per_minute: None,
                max_requests_per_day: None,
                max_tokens_per_minute: None,
                enabled: true,
                label: None,
                notes: None,
                backend: Default::default(),
                vertex: None,
                proxy: None,
            }])
            .unwrap();
            let key = SelectedKey(pool.pick(&*store, "m", &[], Instant::now()).unwrap());
            let mut tap = UsageTap::new(store.clone(), key, Arc::from("m"), None, None);
            tap.streamed = streamed;
            (tap, store)
        }

        /// [`tapped`], for a plain answer or a stream.
        fn tapped_as(body: &[u8], cuts: &[usize], streamed: bool) -> u64 {
            let (mut tap, store) = fresh_tap(streamed);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                tap.on_data(&Bytes::copy_from_slice(&body[at..cut]));
                at = cut;
            }
            tap.on_end(BodyEnd::Complete);
            store.status("k", Instant::now()).tokens.total
        }

        #[test]
        fn a_streams_small_events_are_kept_as_copies_never_pinning_the_read_buffer() {
            let event = Bytes::from(b"data: {\"candidates\":[]}\n\n".to_vec());
            let (mut stream, _) = fresh_tap(true);
            stream.on_data(&event);
            assert!(
                event.is_unique(),
                "the stream's tap holds the frame's buffer"
            );
            // A plain answer ends at once: kept by reference, not copied.
            let (mut plain, _) = fresh_tap(false);
            plain.on_data(&event);
            assert!(!event.is_unique());
            // A large frame of a stream is kept by reference too (it fills its buffer anyway).
            let big = Bytes::from(vec![b' '; COPIED_FRAME_BYTES + 1]);
            let (mut stream, _) = fresh_tap(true);
            stream.on_data(&big);
            assert!(!big.is_unique());
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
            ))]

            /// However the answer is cut into frames, the same tokens are counted.
            #[test]
            fn the_same_tokens_however_the_stream_is_split(
                texts in proptest::collection::vec("[a-z {}\"\\:,usage]{0,40}", 0..12),
                tokens in (0u32..100_000, 0u32..100_000),
                sse in any::<bool>(),
                cuts in proptest::collection::vec(any::<usize>(), 0..40),
            ) {
                let body = answer(&texts, tokens, sse);
                let whole = tapped(&body, &[]);
                prop_assert_eq!(whole, u64::from(tokens.0) + u64::from(tokens.1));
                prop_assert_eq!(tapped(&body, &cuts), whole);
                prop_assert_eq!(tapped_as(&body, &cuts, true), whole);
            }

            /// Arbitrary bytes in arbitrary frames never panic the tap.
            #[test]
            fn arbitrary_bytes_never_panic(
                body in proptest::collection::vec(any::<u8>(), 0..2048),
                cuts in proptest::collection::vec(any::<usize>(), 0..20),
            ) {
                tapped(&body, &cuts);
            }
        }
    }
}

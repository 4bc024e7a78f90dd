//! A mock of Google's Generative Language (Gemini) API, for gem-proxy's tests and benchmarks.
//!
//! It answers the native routes (`/v1`, `/v1beta`, `/v1alpha`), the OpenAI-compatible surface
//! (`/{v}/openai/…`), resumable file uploads, files and cached contents, batches (native and
//! OpenAI-compatible), long-running operations (`:predictLongRunning`, whose finished answer
//! links a video under `/download/`), tuned models, file search stores and interactions, with
//! bodies shaped like Google's, so the official SDKs parse them. Vertex AI's paths and an OAuth
//! token endpoint are served on the same port (see the `vertex` module: `/v1/projects/…`,
//! `/v1/publishers/…`, `POST /token`). It checks credentials the way Google does, records every
//! request it receives, and fails on demand.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use gem_proxy_mock::{Failure, MockOptions, MockUpstream};
//!
//! let mock = MockUpstream::start(MockOptions::default()).await?;
//! mock.set_key_failure("key-1", Some(Failure::Overloaded));
//! // … point the gateway at `mock.base_url()`, send traffic …
//! let seen = mock.requests();
//! assert_eq!(seen[0].key.as_deref(), Some("key-1"));
//! # Ok(()) }
//! ```
//!
//! The Live API (WebSocket sessions and ephemeral tokens) is described in `live.rs`: sessions
//! answer `setup`, echo turns and audio, and close like Google on a quota.
//!
//! # Triggers
//! Request headers that change one answer (all optional):
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-error: 429\|429-day\|503\|500\|504\|400\|400-key\|403\|403-resource\|404` | answer that error (see [`Failure::from_code`]) |
//! | `x-mock-retry-delay-seconds: N` | `retryDelay` of any 429 (default 14) |
//! | `x-mock-chunks: N` | events in a streamed answer |
//! | `x-mock-chunk-delay-ms: N` | pause between stream events |
//! | `x-mock-fail-after-chunks: N` | abort the body after N events (connection reset / `RST_STREAM`) |
//! | `x-mock-delay-headers-ms: N` | wait before sending the response headers |
//! | `x-mock-hop-headers: 1` | add hop-by-hop headers (and `x-end-to-end: yes`) to the response |
//!
//! A model named `mock-error-<code>` (in the path, or in an OpenAI body's `model`) works like
//! `x-mock-error: <code>`, so SDK-driven tests can trigger errors too.
//!
//! `x-mock-fail-after-chunks` at or above the event count sends every event, then aborts.
//! Hop-by-hop headers only reach HTTP/1.1 clients: HTTP/2 forbids them and hyper drops them.
//!
//! # Order of checks
//! 1. unknown path → 404 `NOT_FOUND` (still recorded);
//! 2. any `Authorization` header on a native (non-OpenAI) route → 401 `UNAUTHENTICATED`;
//! 3. no key → 403 `PERMISSION_DENIED`; a key in [`MockOptions::invalid_keys`] → 400 `API_KEY_INVALID`;
//! 4. [`MockUpstream::set_key_failure`], then `x-mock-error`, then a `mock-error-*` model;
//! 5. a body naming another key's file, file search store, tuned model or batch → 403
//!    `PERMISSION_DENIED` (never an upload's bytes);
//! 6. the endpoint (every key-owned resource and upload session answers 403 to any other key).
//!
//! Token counts are fixed ([`PROMPT_TOKEN_COUNT`], …, [`TOTAL_TOKEN_COUNT`]); earlier stream
//! events carry only `promptTokenCount`/`totalTokenCount` of the prompt, the last one the full usage.
//!
//! # Control endpoints
//! For tests that run the mock out of process (never recorded):
//! `GET /_mock/requests` (recorded requests as JSON), `POST /_mock/reset` (forget requests and key
//! failures, stop holding streams), `POST /_mock/key-failure` with
//! `{"key": "...", "failure": "429"|…|null, "retry_delay_seconds": N?}`,
//! `POST /_mock/hold-streams` with `{"on": bool}`, `POST /_mock/release-chunk` with `{"count": N?}`
//! and `GET /_mock/vertex-tokens` (the Vertex AI access tokens issued, oldest first).

mod body;
mod canned;
mod clock;
mod control;
mod failure;
mod gate;
mod live;
mod owned;
mod recorded;
mod reply;
mod resources;
mod routes;
mod server;
mod service;
mod shared;
mod url;
mod vertex;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use crate::failure::{DEFAULT_RETRY_DELAY_SECONDS, Failure};
pub use crate::live::QUOTA_CLOSE_REASON;
pub use crate::recorded::RecordedRequest;
use crate::shared::Shared;

/// `promptTokenCount` in every answer's `usageMetadata` (and `totalTokens` of `:countTokens`).
pub const PROMPT_TOKEN_COUNT: u64 = 8;
/// `candidatesTokenCount` in the final `usageMetadata` of every answer, streamed or not.
pub const CANDIDATES_TOKEN_COUNT: u64 = 12;
/// `thoughtsTokenCount` in the final `usageMetadata` of every answer, streamed or not.
pub const THOUGHTS_TOKEN_COUNT: u64 = 4;
/// `totalTokenCount` in the final `usageMetadata`: prompt + candidates + thoughts, as Google counts.
pub const TOTAL_TOKEN_COUNT: u64 =
    PROMPT_TOKEN_COUNT + CANDIDATES_TOKEN_COUNT + THOUGHTS_TOKEN_COUNT;

/// How the mock answers by default; per-request headers override most of it.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Events per streamed answer (at least 1 is sent). Default 3.
    pub chunks: usize,
    /// Pause between two events of a stream. Default none.
    pub chunk_delay: Duration,
    /// Keys answered with 400 `INVALID_ARGUMENT` / `API_KEY_INVALID`, like a deleted key.
    pub invalid_keys: Vec<String>,
    /// The test service account's public key (PEM): the Vertex AI token endpoint (`POST /token`)
    /// accepts assertions it verifies. Without one, every assertion is refused.
    pub vertex_public_key_pem: Option<String>,
    /// How long a Vertex AI access token lives. Default one hour.
    pub vertex_token_lifetime: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            chunks: 3,
            chunk_delay: Duration::ZERO,
            invalid_keys: Vec::new(),
            vertex_public_key_pem: None,
            vertex_token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A running mock upstream. Dropping it stops the server and closes its connections.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1` with a port chosen by the system.
    pub async fn start(opts: MockOptions) -> std::io::Result<MockUpstream> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts).await
    }

    /// Starts a mock listening on `addr` (port 0 lets the system choose).
    pub async fn start_on(addr: SocketAddr, opts: MockOptions) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(base_url_for(addr), opts));
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        Ok(MockUpstream {
            addr,
            shared,
            server,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, without a trailing slash (an unspecified host becomes loopback).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Every request received so far, in arrival order (control endpoints excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Forgets the recorded requests (key failures, files and holds stay).
    pub fn clear(&self) {
        self.shared.clear_requests();
    }

    /// Stops (or resumes) recording requests; long benchmarks turn it off to keep memory flat.
    pub fn set_recording(&self, on: bool) {
        self.shared.set_recording(on);
    }

    /// Makes the Vertex AI token endpoint refuse every assertion (`true`), or accept them again.
    pub fn refuse_vertex_tokens(&self, on: bool) {
        self.shared.vertex.set_refusing(on);
    }

    /// Makes the Vertex face refuse every access token issued so far with 401 (new ones work).
    pub fn revoke_vertex_tokens(&self) {
        self.shared.vertex.revoke_all();
    }

    /// Every Vertex AI access token the token endpoint issued, oldest first.
    pub fn vertex_tokens_issued(&self) -> Vec<String> {
        self.shared.vertex.issued()
    }

    /// Makes every request carrying `key` fail as `failure` until called again with `None`.
    pub fn set_key_failure(&self, key: &str, failure: Option<Failure>) {
        self.shared.set_key_failure(key, failure);
    }

    /// While on, every stream event after the first of each stream waits for [`release_chunk`].
    /// Turning it off lets waiting streams run; turning it on forgets unused releases.
    ///
    /// [`release_chunk`]: MockUpstream::release_chunk
    pub fn hold_streams(&self, on: bool) {
        self.shared.gate.set_holding(on);
    }

    /// Lets one held stream event through (the longest-waiting one; or the next to wait).
    pub fn release_chunk(&self) {
        self.shared.gate.release(1);
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The server task owns every connection task (a JoinSet), so this closes them all;
        // lifting the hold lets any stream HTTP/2 still drives to finish.
        self.server.abort();
        self.shared.gate.set_holding(false);
    }
}

/// The URL clients use to reach a listener bound to `addr`.
fn base_url_for(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_replaces_unspecified_host_with_loopback() {
        assert_eq!(
            base_url_for("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(base_url_for("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(
            base_url_for("127.0.0.1:1".parse().unwrap()),
            "http://127.0.0.1:1"
        );
    }
}

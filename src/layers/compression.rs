//! Compression towards the client: tower-http's [`CompressionLayer`] (gzip), negotiated with the
//! client's `Accept-Encoding`.
//!
//! Why here and not at Google: the gateway reads answers — the usage tap (`usageMetadata`), the
//! failover verdict (`API_KEY_INVALID`, `retryDelay`), the key scrubber, affinity (created
//! names) and the merged file listing — so the upstream is always asked for `identity`
//! ([`crate::upstream`]) and everything below this layer sees plain bytes, whatever the client
//! accepts. This layer then compresses what it may on the way out.
//!
//! Streamed answers are never compressed: tower-http's encoder emits bytes only when its buffer
//! fills, which would hold SSE events (and the pieces of a JSON-array stream) back. Server-sent
//! events are excluded by tower-http's default predicate (with gRPC, images and bodies under 32
//! bytes); streams of any other type by [`StreamedAnswer`], which the upstream client puts on
//! every answer to a streaming method.
//!
//! Sits right inside catch-panic, outside everything else (see [`crate::stack`]).

use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{And, DefaultPredicate, Predicate};

use crate::upstream::StreamedAnswer;

/// Refuses to compress a [`StreamedAnswer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NotStreamed;

impl Predicate for NotStreamed {
    fn should_compress<B>(&self, response: &http::Response<B>) -> bool
    where
        B: http_body::Body,
    {
        response.extensions().get::<StreamedAnswer>().is_none()
    }
}

/// The layer: gzip, the only encoding built in (every client accepts it; deflate, brotli and
/// zstd add little for JSON and cost a dependency each).
pub fn layer() -> CompressionLayer<And<DefaultPredicate, NotStreamed>> {
    CompressionLayer::new().compress_when(DefaultPredicate::new().and(NotStreamed))
}

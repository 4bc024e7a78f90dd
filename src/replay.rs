//! Which requests may be replayed on another key, and when.
//!
//! A replay is safe when Google certainly did nothing with the first attempt: the connection was
//! never made, or Google refused the request up front (429, 503 overloaded, an invalid or
//! suspended key). Any other failure — a time-out or a broken connection after the request was
//! sent, a 500/502/504 — leaves the outcome unknown: Google may have run (and billed) the request.
//! Those are replayed only with `gemini.retry_on_timeout`, and never for a request that creates
//! a resource, where a replay would leave a second file, cache or batch behind.

use http::Method;

use crate::route::Api;

/// Whether a request creates a resource on Google's side: a media upload, `POST` to a
/// collection (`…/files`, `…/cachedContents`, `…/batches`, `…/tunedModels`: Google's create
/// methods have no `:verb`), a batch (`:batchGenerateContent`, `:asyncBatchEmbedContent`), a
/// long-running operation (`:predictLongRunning`, a file search store's `:importFile`), or the
/// OpenAI-compatible surface's `files` and `batches`.
pub fn creates_resource(method: &Method, path: &str, api: Option<Api>) -> bool {
    if method != Method::POST {
        return false;
    }
    match api {
        Some(Api::Upload) => true,
        Some(Api::OpenAi) => {
            let rest = path.split_once("/openai/").map_or("", |(_, r)| r);
            rest.starts_with("files") || rest.starts_with("batches")
        }
        Some(Api::Native) => {
            let last = path.rsplit('/').next().unwrap_or("");
            match last.split_once(':') {
                None => true,
                Some((_, verb)) => {
                    matches!(
                        verb,
                        "batchGenerateContent"
                            | "asyncBatchEmbedContent"
                            | "predictLongRunning"
                            | "importFile"
                    )
                }
            }
        }
        Some(Api::Download | Api::Live) | None => false,
    }
}

/// When an attempt whose outcome is unknown may be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPolicy {
    /// `gemini.retry_on_timeout`.
    pub retry_on_timeout: bool,
    /// The request creates a resource ([`creates_resource`]).
    pub creates_resource: bool,
}

impl ReplayPolicy {
    /// Whether to replay after a failure that may have reached Google.
    pub fn replay_unknown_outcome(&self) -> bool {
        self.retry_on_timeout && !self.creates_resource
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_is_told_from_generation() {
        let native = Some(Api::Native);
        for (method, path, api) in [
            (Method::POST, "/upload/v1beta/files", Some(Api::Upload)),
            (Method::POST, "/v1beta/files", native),
            (Method::POST, "/v1beta/cachedContents", native),
            (Method::POST, "/v1beta/tunedModels", native),
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                native,
            ),
            (
                Method::POST,
                "/v1beta/models/text-embedding-004:asyncBatchEmbedContent",
                native,
            ),
            (
                Method::POST,
                "/v1beta/models/veo-3.0-generate-preview:predictLongRunning",
                native,
            ),
            (
                Method::POST,
                "/v1beta/fileSearchStores/s:importFile",
                native,
            ),
            (Method::POST, "/v1beta/openai/files", Some(Api::OpenAi)),
            (Method::POST, "/v1beta/openai/batches", Some(Api::OpenAi)),
        ] {
            assert!(creates_resource(&method, path, api), "{method} {path}");
        }
        for (method, path, api) in [
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:generateContent",
                native,
            ),
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                native,
            ),
            (
                Method::POST,
                "/v1beta/models/text-embedding-004:batchEmbedContents",
                native,
            ),
            (Method::GET, "/v1beta/files", native),
            (Method::DELETE, "/v1beta/files/abc", native),
            (
                Method::POST,
                "/v1beta/openai/chat/completions",
                Some(Api::OpenAi),
            ),
        ] {
            assert!(!creates_resource(&method, path, api), "{method} {path}");
        }
    }

    #[test]
    fn unknown_outcomes_are_replayed_only_when_asked_and_never_for_creation() {
        let p = |retry_on_timeout, creates_resource| ReplayPolicy {
            retry_on_timeout,
            creates_resource,
        };
        assert!(!p(false, false).replay_unknown_outcome());
        assert!(p(true, false).replay_unknown_outcome());
        assert!(!p(true, true).replay_unknown_outcome());
    }
}

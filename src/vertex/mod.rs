//! Vertex AI members of the key pool: where their requests go, how they sign in, and the small
//! fix-ups a Gemini Developer API request needs before Vertex AI accepts it.
//!
//! A pool member has a kind ([`Backend`]): an AI Studio key (everything in [`crate::upstream`]
//! as it is), a Vertex AI service account, or a Vertex AI express-mode key. The kind decides the
//! upstream URL, the credential and the body fix-ups ([`VertexMember::prepare`]); limits, rests,
//! affinity, usage and metrics are the same code for all of them (the metrics' key label is the
//! member id).
//!
//! | client request | service account | express mode |
//! |---|---|---|
//! | `/{v}/models/{m}:generateContent`, `:streamGenerateContent`, `:countTokens`, `:embedContent` | `/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}` | `/v1/publishers/google/models/{m}:{method}?key=` |
//! | `/{v}/models/{m}:batchEmbedContents` (text parts only) | `…/models/{m}:predict` | `…/models/{m}:predict?key=` |
//! | `/{v}/openai/chat/completions` | `/v1/projects/{p}/locations/{l}/endpoints/openapi/chat/completions` (`model: google/{m}`) | — |
//!
//! The credential: `Authorization: Bearer <access token>` ([`TokenSource`], refreshed in the
//! background) or `?key=`; the client's credentials never cross. The query (`alt=sse`) is kept.
//! Every other route (files, uploads, cached contents, batches, tuned models, model lists, …)
//! exists only on the Developer API: [`VertexMember::can_serve`] says no, and the pick skips
//! the member; so does a request whose body names a file or cached content
//! ([`names_developer_resources`], checked by key balance). A service-account member without a valid token is skipped too, with the reason
//! in `/health`. Vertex's answers and errors are Google-shaped and pass through (its 429
//! `RESOURCE_EXHAUSTED` rests the member for the model like any key's); only `:predict`'s
//! answer is turned back into `batchEmbedContents`' shape.

mod token;
mod translate;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri, header};
use tokio::time::Instant;

use crate::config::{ApiKeyConfig, Backend, VertexConfig};
use crate::error::GatewayError;
use crate::http_client::{UpstreamTarget, strip_key_param};
use crate::route::{Route, RouteLabel};
pub use token::{
    CLOUD_PLATFORM_SCOPE, METADATA_CREDENTIALS, ServiceAccount, TokenSource, TokenStatus,
    refresh_after,
};
pub use translate::{Answer, predict_to_batch_embed};

/// Vertex AI's global endpoint (also express mode's).
const GLOBAL_BASE_URL: &str = "https://aiplatform.googleapis.com";

/// What is escaped in a query value: all but RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How a Vertex member signs in.
#[derive(Debug)]
enum Credential {
    /// A service account's access token.
    ServiceAccount(Arc<TokenSource>),
    /// An express-mode API key, sent as `?key=` (percent-encoded once here).
    Express(String),
}

/// A Vertex AI member of the pool, built once per config snapshot.
#[derive(Debug)]
pub struct VertexMember {
    credential: Credential,
    /// `vertex.base_url` or the default for the location; `None` when it does not parse.
    target: Option<UpstreamTarget>,
    /// `projects/{p}/locations/{l}` (service account), empty for express mode.
    scope: String,
}

impl VertexMember {
    /// The member for a `gemini.api_keys` entry, or `None` for an AI Studio key.
    pub fn from_config(k: &ApiKeyConfig) -> Option<Arc<VertexMember>> {
        let empty = VertexConfig::default();
        let v = k.vertex.as_ref().unwrap_or(&empty);
        let (credential, scope) = match k.backend {
            Backend::AiStudio => return None,
            Backend::Vertex => (
                Credential::ServiceAccount(TokenSource::for_config(v)),
                format!("projects/{}/locations/{}", v.project, v.location),
            ),
            Backend::VertexExpress => (
                Credential::Express(
                    percent_encoding::utf8_percent_encode(k.key.expose(), QUERY_VALUE).to_string(),
                ),
                String::new(),
            ),
        };
        let base = base_url(k.backend, v);
        Some(Arc::new(VertexMember {
            credential,
            target: UpstreamTarget::parse(&base),
            scope,
        }))
    }

    /// Starts what runs in the background (a service account's token refresh). Needs a tokio
    /// runtime; calling it again does nothing.
    pub fn start(&self) {
        if let Credential::ServiceAccount(tokens) = &self.credential {
            tokens.start();
        }
    }

    /// Whether this member can carry a request for `route` at `now`: Vertex has the route, and a
    /// service account has a valid token.
    pub fn can_serve(&self, route: Option<&Route>, now: Instant) -> bool {
        let Some(route) = route else { return false };
        let served = match route.label {
            RouteLabel::Generate
            | RouteLabel::Stream
            | RouteLabel::CountTokens
            | RouteLabel::Embed => true,
            RouteLabel::OpenAiChat => matches!(self.credential, Credential::ServiceAccount(_)),
            _ => false,
        };
        served && self.unusable_reason(now).is_none()
    }

    /// Which of the service account's tokens a request sent now carries (`None` in express mode),
    /// for [`VertexMember::token_rejected`].
    pub fn token_generation(&self) -> Option<TokenUsed> {
        match &self.credential {
            Credential::ServiceAccount(tokens) => Some(TokenUsed(tokens.generation())),
            Credential::Express(_) => None,
        }
    }

    /// Vertex answered 401 to a request that carried `used`: `true` when that only means the
    /// token went stale (it is dropped and a new one fetched; the member's credentials are
    /// fine), `false` when the account itself is refused (a fresh token, or express mode's key).
    pub fn token_rejected(&self, used: Option<&TokenUsed>, now: Instant) -> bool {
        match (&self.credential, used) {
            (Credential::ServiceAccount(tokens), Some(used)) => tokens.rejected(used.0, now),
            _ => false,
        }
    }

    /// Why the member cannot carry any request now, if it cannot (for `/health`).
    pub fn unusable_reason(&self, now: Instant) -> Option<String> {
        if self.target.is_none() {
            return Some("vertex.base_url is not a usable URL".into());
        }
        match &self.credential {
            Credential::ServiceAccount(tokens) => tokens.unready_reason(now),
            Credential::Express(_) => None,
        }
    }

    /// What `/health` shows of the member beyond its key state.
    pub fn health(&self, now: Instant) -> serde_json::Value {
        let mut v = serde_json::json!({});
        if let Credential::ServiceAccount(tokens) = &self.credential {
            v["token"] = serde_json::to_value(tokens.status(now)).unwrap_or_default();
            if let Some(email) = tokens.email() {
                v["service_account"] = email.into();
            }
        }
        if let Some(reason) = self.unusable_reason(now) {
            v["skipped"] = reason.into();
        }
        v
    }

    /// Turns a Developer API request into this member's: the upstream URI, the credential in
    /// `headers` (the client's were removed before), the body with its fix-ups, and what the
    /// answer needs on its way back.
    pub fn prepare(
        &self,
        uri: &Uri,
        route: &Route,
        headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<(Uri, Bytes, Answer), GatewayError> {
        let target = self.target.as_ref().ok_or(GatewayError::Internal(
            "vertex.base_url is not a usable URL",
        ))?;
        let call = translate::Call::of(route, uri.path())?;
        let (body, answer) = call.body(body)?;
        let mut path = String::with_capacity(128);
        path.push_str(target.prefix());
        path.push_str("/v1/");
        if !self.scope.is_empty() {
            path.push_str(&self.scope);
            path.push('/');
        }
        path.push_str(&call.path_after_scope());
        let query = uri.query().map(strip_key_param).unwrap_or_default();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query);
        }
        let bad_uri = || GatewayError::Internal("bad Vertex AI URI");
        // The client's query without its `key=`, on this member's host.
        let mut uri = target.uri_for(&Uri::try_from(path).map_err(|_| bad_uri())?)?;
        match &self.credential {
            Credential::ServiceAccount(tokens) => {
                let bearer = tokens.header(Instant::now()).ok_or(GatewayError::NoKey)?;
                headers.insert(header::AUTHORIZATION, bearer);
            }
            Credential::Express(key) => {
                let sep = if query.is_empty() { '?' } else { '&' };
                uri = Uri::try_from(format!("{uri}{sep}key={key}")).map_err(|_| bad_uri())?;
            }
        }
        if !body.is_empty() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Ok((uri, body, answer))
    }
}

/// On a Vertex member's answer: which of its service account's tokens the request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsed(pub u64);

/// Whether a request body names a file or cached content (`files/…`, `cachedContents/…`): those
/// exist only on the Developer API, so a Vertex member cannot serve it.
pub fn names_developer_resources(body: &[u8]) -> bool {
    static FILES: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"files/"));
    static CACHED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"cachedContents/"));
    FILES.find(body).is_some() || CACHED.find(body).is_some()
}

/// Where a member's requests go.
fn base_url(backend: Backend, v: &VertexConfig) -> String {
    match &v.base_url {
        Some(url) => url.clone(),
        None if backend == Backend::VertexExpress || v.location == "global" => {
            GLOBAL_BASE_URL.to_owned()
        }
        None => format!("https://{}-aiplatform.googleapis.com", v.location),
    }
}

/// What is wrong with a Vertex member's settings, as `(field, message)` pairs (field relative to
/// the entry: `vertex.project`, …). Reads a service account's key file.
pub fn problems(k: &ApiKeyConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let v = k.vertex.as_ref();
    match k.backend {
        Backend::AiStudio => {
            if v.is_some() {
                out.push((
                    "vertex",
                    "is only for backend: vertex or vertex_express".to_owned(),
                ));
            }
        }
        Backend::Vertex => {
            let Some(v) = v else {
                out.push((
                    "vertex",
                    "is required for backend: vertex (project, location, credentials_file)"
                        .to_owned(),
                ));
                return out;
            };
            if v.project.trim().is_empty() {
                out.push(("vertex.project", "must not be empty".to_owned()));
            } else if !is_path_segment(&v.project) {
                out.push((
                    "vertex.project",
                    "must be a project id (letters, digits, - and .)".to_owned(),
                ));
            }
            if v.location.trim().is_empty() {
                out.push((
                    "vertex.location",
                    "must not be empty (a region such as europe-west4, or global)".to_owned(),
                ));
            } else if !is_path_segment(&v.location) {
                out.push((
                    "vertex.location",
                    "must be a region such as europe-west4, or global".to_owned(),
                ));
            }
            let field = if v.credentials_file.is_some() {
                "vertex.credentials_file"
            } else {
                "vertex.credentials"
            };
            if let Err(e) = ServiceAccount::load(v) {
                out.push((field, e));
            }
        }
        Backend::VertexExpress => {
            if let Some(v) = v
                && (!v.project.is_empty()
                    || !v.location.is_empty()
                    || v.credentials_file.is_some()
                    || !v.credentials.is_empty())
            {
                out.push((
                    "vertex",
                    "express mode takes only vertex.base_url (its key is `key`)".to_owned(),
                ));
            }
        }
    }
    out
}

/// A project id or location that can sit in a path as it is.
fn is_path_segment(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(yaml: &str) -> ApiKeyConfig {
        let v: serde_json::Value = serde_json::from_str(yaml).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn settings_that_cannot_work_are_named_by_field() {
        let fields = |k: &ApiKeyConfig| problems(k).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(
            fields(&member(r#"{"id":"v","backend":"vertex"}"#)),
            ["vertex"]
        );
        assert_eq!(
            fields(&member(
                r#"{"id":"v","backend":"vertex","vertex":{"project":"p/x","location":"","credentials":"metadata"}}"#
            )),
            ["vertex.project", "vertex.location"]
        );
        assert_eq!(
            fields(&member(
                r#"{"id":"e","key":"k","backend":"vertex_express","vertex":{"project":"p"}}"#
            )),
            ["vertex"]
        );
        assert_eq!(
            fields(&member(r#"{"id":"a","key":"k","vertex":{"project":"p"}}"#)),
            ["vertex"]
        );
        assert!(
            problems(&member(
                r#"{"id":"e","key":"k","backend":"vertex_express"}"#
            ))
            .is_empty()
        );
    }

    #[test]
    fn the_default_url_follows_the_location() {
        let v = |location: &str| VertexConfig {
            location: location.into(),
            ..VertexConfig::default()
        };
        assert_eq!(
            base_url(Backend::Vertex, &v("europe-west4")),
            "https://europe-west4-aiplatform.googleapis.com"
        );
        assert_eq!(base_url(Backend::Vertex, &v("global")), GLOBAL_BASE_URL);
        assert_eq!(base_url(Backend::VertexExpress, &v("")), GLOBAL_BASE_URL);
    }
}

//! Model list: model aliases (`gemini.models.aliases`) appear in Google's model listing.
//!
//! `GET /{version}/models` (its first page: no `pageToken`) is answered by Google; this layer adds
//! one entry per alias — a copy of its real model's entry named `models/{alias}` when that entry
//! is on the page, else an entry with just the name, a display name and a description saying
//! what it stands for. With auth on, only aliases of models the token allows are listed.
//! `GET /{version}/models/{alias}` needs nothing here: the route already names the real model,
//! so Google answers with it. The OpenAI-compatible listing (`GET /{version}/openai/models`) gets
//! an entry per alias the same way (`{"id": "models/{alias}", "object": "model", …}`).
//!
//! Sits after body model, before affinity: the listing is a plain JSON answer of a few kB, read
//! whole (up to 8 MiB; a larger or unreadable answer passes unchanged). Every other request
//! passes untouched, its answer streamed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

use crate::auth::Client;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::route::{Api, Route, RouteLabel};

/// A listing larger than this passes unchanged.
const MAX_LISTING_BYTES: usize = 8 * 1024 * 1024;

/// Applies [`ModelList`].
#[derive(Debug, Clone)]
pub struct ModelListLayer {
    gateway: Arc<Gateway>,
}

impl ModelListLayer {
    /// Lists the live config's aliases.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for ModelListLayer {
    type Service = ModelList<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ModelList {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Adds the aliases to a first page of `GET models`.
#[derive(Debug, Clone)]
pub struct ModelList<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Bytes>> for ModelList<S>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<GatewayBody>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let live = self.gateway.live();
        let models = &live.config.gemini.models;
        let openai = is_openai_listing(&req);
        if models.aliases.is_empty() || !(openai || is_first_listing_page(&req)) {
            return Box::pin(self.inner.call(req));
        }
        let client = req.extensions().get::<Client>().cloned();
        let aliases: Vec<(String, String)> = models
            .aliases
            .iter()
            .filter(|(_, real)| client.as_ref().is_none_or(|c| c.allows_model(real)))
            .map(|(a, r)| (a.clone(), r.clone()))
            .collect();
        // The service was made ready for this call; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let res = inner.oneshot(req).await?;
            if !res.status().is_success() || aliases.is_empty() {
                return Ok(res);
            }
            let (mut parts, body) = res.into_parts();
            let Ok(collected) = Limited::new(body, MAX_LISTING_BYTES).collect().await else {
                return Err(GatewayError::Internal(
                    "the upstream's model listing could not be read",
                ));
            };
            let bytes = collected.to_bytes();
            let out = if openai {
                with_openai_aliases(&bytes, &aliases)
            } else {
                with_aliases(&bytes, &aliases)
            };
            let out = out.map_or(bytes, Bytes::from);
            parts.headers.remove(header::CONTENT_LENGTH);
            Ok(Response::from_parts(parts, GatewayBody::full(out)))
        })
    }
}

/// `GET /{version}/models` on the native API, without a `pageToken`.
fn is_first_listing_page<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.extensions().get::<Route>().is_some_and(|r| {
            r.api == Api::Native && r.label == RouteLabel::Models && r.model.is_none()
        })
        && !req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("pageToken=")))
}

/// `GET /{version}/openai/models` (the listing, not one model).
fn is_openai_listing<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req
            .extensions()
            .get::<Route>()
            .is_some_and(|r| r.api == Api::OpenAi)
        && req
            .uri()
            .path()
            .trim_end_matches('/')
            .ends_with("/openai/models")
}

/// The OpenAI-compatible listing `body` with an entry per alias added to its `data` (a copy of
/// the real model's entry with the alias's id); `None` when it is not a listing.
fn with_openai_aliases(body: &[u8], aliases: &[(String, String)]) -> Option<Vec<u8>> {
    let mut listing: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let Value::Array(items) = listing.get_mut("data")? else {
        return None;
    };
    let id_of = |m: &Value| {
        m.get("id")
            .and_then(Value::as_str)
            .map(|id| id.strip_prefix("models/").unwrap_or(id).to_owned())
    };
    let prefixed = items.iter().any(|m| {
        m.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with("models/"))
    });
    let mut added = Vec::with_capacity(aliases.len());
    for (alias, real) in aliases {
        let id = if prefixed {
            format!("models/{alias}")
        } else {
            alias.clone()
        };
        let entry = match items.iter().find(|m| id_of(m).as_deref() == Some(real)) {
            Some(Value::Object(real_entry)) => {
                let mut entry = real_entry.clone();
                entry.insert("id".into(), Value::String(id));
                Value::Object(entry)
            }
            _ => json!({ "id": id, "object": "model", "owned_by": "google" }),
        };
        added.push(entry);
    }
    items.extend(added);
    serde_json::to_vec(&listing).ok()
}

/// The listing `body` with an entry per alias added to its `models`; `None` when it is not a
/// listing (left unchanged).
fn with_aliases(body: &[u8], aliases: &[(String, String)]) -> Option<Vec<u8>> {
    let mut listing: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let Value::Array(items) = listing
        .entry("models")
        .or_insert_with(|| Value::Array(Vec::new()))
    else {
        return None;
    };
    let mut added = Vec::with_capacity(aliases.len());
    for (alias, real) in aliases {
        let real_name = format!("models/{real}");
        let entry = match items
            .iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(&real_name))
        {
            Some(Value::Object(real_entry)) => {
                let mut entry = real_entry.clone();
                entry.insert("name".into(), Value::String(format!("models/{alias}")));
                Value::Object(entry)
            }
            _ => json!({
                "name": format!("models/{alias}"),
                "displayName": alias,
                "description": format!("Alias of {real_name}"),
            }),
        };
        added.push(entry);
    }
    items.extend(added);
    serde_json::to_vec(&listing).ok()
}

/// The aliases of `models` as `(alias, real)` pairs.
#[cfg(test)]
fn pairs(models: &crate::config::ModelsConfig) -> Vec<(String, String)> {
    models
        .aliases
        .iter()
        .map(|(a, r)| (a.clone(), r.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn aliases_join_the_openai_listing() {
        let body = br#"{"object":"list","data":[{"id":"models/gemini-2.5-flash","object":"model","owned_by":"google"}]}"#;
        let aliases = [
            ("flash".to_string(), "gemini-2.5-flash".to_string()),
            ("big".to_string(), "gemini-9-ultra".to_string()),
        ];
        let out: Value =
            serde_json::from_slice(&with_openai_aliases(body, &aliases).unwrap()).unwrap();
        assert_eq!(
            out["data"],
            json!([
                {"id":"models/gemini-2.5-flash","object":"model","owned_by":"google"},
                {"id":"models/flash","object":"model","owned_by":"google"},
                {"id":"models/big","object":"model","owned_by":"google"},
            ])
        );
        assert_eq!(with_openai_aliases(b"[]", &aliases), None);
    }

    use super::*;
    use crate::config::ModelsConfig;

    #[test]
    fn aliases_are_listed_as_copies_of_their_model() {
        let models = ModelsConfig {
            aliases: [
                ("flash".to_string(), "gemini-2.5-flash".to_string()),
                ("big".to_string(), "gemini-9-ultra".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let body = br#"{"models":[{"name":"models/gemini-2.5-flash","inputTokenLimit":1048576}],"nextPageToken":"p2"}"#;
        let out: Value =
            serde_json::from_slice(&with_aliases(body, &pairs(&models)).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "models": [
                    {"name": "models/gemini-2.5-flash", "inputTokenLimit": 1048576},
                    {"name": "models/big", "displayName": "big", "description": "Alias of models/gemini-9-ultra"},
                    {"name": "models/flash", "inputTokenLimit": 1048576},
                ],
                "nextPageToken": "p2",
            })
        );
        assert_eq!(with_aliases(b"not json", &pairs(&models)), None);
        assert_eq!(with_aliases(br#"{"models":7}"#, &pairs(&models)), None);
    }

    #[test]
    fn only_first_pages_of_the_native_listing_are_changed() {
        let req = |uri: &str| {
            let mut r = Request::get(uri).body(()).unwrap();
            Route::ensure(&mut r, &ModelsConfig::default());
            is_first_listing_page(&r)
        };
        assert!(req("/v1beta/models"));
        assert!(req("/v1/models?pageSize=50"));
        assert!(!req("/v1beta/models?pageToken=abc"));
        assert!(!req("/v1beta/models/gemini-2.5-flash"));
        assert!(!req("/v1beta/openai/models"));
        assert!(!req("/v1beta/files"));
    }
}

//! Affinity: files and cached contents are visible only to the key (the Google project) that
//! created them, so every later request that names one must use that key.
//!
//! Sits below buffer body (it reads the request body for file and cache references) and above
//! failover (a bound request is not replayed on other keys: they cannot see the resource).
//!
//! - Learns: the upload id of a resumable upload (from the rewritten `X-Goog-Upload-URL`), and the
//!   name of each created file (`upload, finalize`, or a one-shot upload) and cached content
//!   (`POST …/cachedContents`), bound to the key that served the request for
//!   [`BINDING_LIFETIME`] (files live 48 h).
//! - Lists: a first-page `GET …/files` or `GET …/cachedContents` goes to every key and the lists
//!   are merged, so a client sees all of its files whichever key holds them.
//! - Binds: a request whose path names `files/{id}` or `cachedContents/{id}`, whose upload id is
//!   known, or whose body refers to a known file (`fileData.fileUri`) or cached content
//!   (`cachedContent`), gets [`BoundKey`] for key balance.
//! - Isolates clients: with `auth.enabled` each binding also records the client (token `sub`)
//!   that created the resource. A request naming a file, cached content or upload in its path
//!   that another client created — or that the gateway has no binding for — is answered
//!   Google's 404 `NOT_FOUND` without reaching Google; a body reference to another client's
//!   resource too. Merged listings show each client only its own resources.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use memchr::memmem;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::auth::Client;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::http_client::X_GOOG_UPLOAD_URL;
use crate::key_pool::store::Binding;
use crate::key_pool::{BoundKey, SelectedKey};
use crate::route::{Api, Route};

/// How long a binding is kept: the lifetime of an uploaded file.
pub const BINDING_LIFETIME: Duration = Duration::from_secs(48 * 3600);
/// Searchers for resource references in request bodies, built once.
static CACHED_CONTENTS: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"cachedContents/"));
static FILES: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"/files/"));

/// Creation answers are small metadata; larger ones are passed on unread.
const MAX_CREATE_ANSWER_BYTES: usize = 1024 * 1024;

/// Applies [`Affinity`].
#[derive(Debug, Clone)]
pub struct AffinityLayer {
    gateway: Arc<Gateway>,
}

impl AffinityLayer {
    /// Bindings live in the gateway's key state.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for AffinityLayer {
    type Service = Affinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Affinity {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Routes requests about a file or cached content to the key that owns it.
#[derive(Debug, Clone)]
pub struct Affinity<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

/// What a request creates, so the answer can be bound to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creates {
    /// A resumable upload session (its id is in the upload URL).
    UploadSession,
    /// A file or cached content (its name is in the answer).
    Resource,
}

impl<S> Service<Request<Bytes>> for Affinity<S>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let store = self.gateway.store();
        let now = Instant::now();
        // With auth on, who is asking; bindings of other clients are invisible to them.
        let owner = req.extensions().get::<Client>().map(|c| c.id.clone());
        let mut bound = None;
        for Reference { resource, in_path } in referenced_resources(&req) {
            let binding = store.bound(&resource, now);
            let visible = match (&owner, &binding) {
                (None, _) => true,
                (Some(me), Some(b)) => b.owner.as_ref() == Some(me),
                // Unknown to the gateway: nobody can show it is theirs. A body may quote a URL
                // that merely looks like a file's, so only a path reference is refused.
                (Some(_), None) => !in_path,
            };
            if !visible {
                tracing::debug!(resource = %resource, "resource of another client refused");
                return Box::pin(std::future::ready(Err(not_found(&resource))));
            }
            if bound.is_none() {
                bound = binding.map(|b| b.key);
            }
        }
        if let Some(key) = bound {
            req.extensions_mut().insert(BoundKey(key));
        }
        let creates = creates(&req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        if let Some(field) = merged_list(&req, owner.is_some()) {
            return Box::pin(list_every_key(inner, gateway, req, field, owner));
        }
        Box::pin(async move {
            let res = inner.ready().await?.call(req).await?;
            let Some(creates) = creates.filter(|_| res.status().is_success()) else {
                return Ok(res);
            };
            let Some(SelectedKey(key)) = res.extensions().get::<SelectedKey>().cloned() else {
                return Ok(res);
            };
            let expires = Instant::now() + BINDING_LIFETIME;
            let store = gateway.store();
            let binding = Binding {
                key: key.id.clone(),
                owner,
            };
            if let Some(id) = upload_id_in(res.headers()) {
                store.bind(&format!("upload:{id}"), binding.clone(), expires);
            }
            if creates == Creates::UploadSession {
                return Ok(res);
            }
            let (mut parts, body) = res.into_parts();
            let bytes = Limited::new(body, MAX_CREATE_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| GatewayError::UpstreamUnavailable {
                    key: key.id.clone(),
                })?
                .to_bytes();
            if let Some(name) = created_name(&bytes) {
                store.bind(&name, binding, expires);
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Ok(Response::from_parts(parts, GatewayBody::full(bytes)))
        })
    }
}

/// Google's answer for a resource that does not exist (or that this client may not see).
fn not_found(resource: &str) -> GatewayError {
    let what = if resource.starts_with("upload:") {
        "Upload session"
    } else if resource.starts_with("cachedContents/") {
        "Cached content"
    } else {
        "File"
    };
    GatewayError::ResourceNotFound(format!("{what} not found."))
}

/// A listing of files or cached contents (`GET /{v}/files`): each key sees only its own, so the
/// gateway asks every key and merges the lists. Returns the list's field name. Only first pages
/// are merged, except for an authenticated client (`filtered`), whose every listing is merged so
/// that it is filtered to the client's own resources.
fn merged_list<B>(req: &Request<B>, filtered: bool) -> Option<&'static str> {
    if req.method() != Method::GET
        || req.extensions().get::<BoundKey>().is_some()
        || (!filtered
            && req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("pageToken="))))
    {
        return None;
    }
    let route = req.extensions().get::<Route>()?;
    let path = req.uri().path();
    match route.api {
        Api::Native if path.ends_with("/files") => Some("files"),
        Api::Native if path.ends_with("/cachedContents") => Some("cachedContents"),
        _ => None,
    }
}

/// Sends a listing to every enabled key, one after the other, and merges the `field` arrays.
/// Keys that fail are left out; if every key fails, the first failure is the answer. A key's
/// `nextPageToken` is dropped: the merged list is the first page of each key. With an `owner`,
/// only the items bound to that client (by their `name`) are kept.
async fn list_every_key<S>(
    mut inner: S,
    gateway: Arc<Gateway>,
    req: Request<Bytes>,
    field: &'static str,
    owner: Option<Arc<str>>,
) -> Result<Response<GatewayBody>, GatewayError>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    let live = gateway.live();
    let ids: Vec<Arc<str>> = live
        .keys
        .keys()
        .filter(|k| live.keys.is_enabled(&k.id))
        .map(|k| k.id.clone())
        .collect();
    let (parts, body) = req.into_parts();
    let mut merged: Vec<serde_json::Value> = Vec::new();
    let mut answered: Option<http::response::Parts> = None;
    let mut first_failure: Option<Result<Response<GatewayBody>, GatewayError>> = None;
    for id in ids {
        let mut one = Request::from_parts(parts.clone(), body.clone());
        one.extensions_mut().insert(BoundKey(id.clone()));
        let res = match inner.ready().await?.call(one).await {
            Ok(res) if res.status().is_success() => res,
            other => {
                tracing::debug!(key_id = %id, "a key's listing failed; left out of the merged list");
                first_failure.get_or_insert(other);
                continue;
            }
        };
        let (res_parts, res_body) = res.into_parts();
        let Ok(collected) = Limited::new(res_body, MAX_CREATE_ANSWER_BYTES)
            .collect()
            .await
        else {
            continue;
        };
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&collected.to_bytes())
            && let Some(serde_json::Value::Array(items)) = v.get_mut(field).map(std::mem::take)
        {
            let now = Instant::now();
            let store = gateway.store();
            merged.extend(items.into_iter().filter(|item| {
                owner.as_ref().is_none_or(|me| {
                    item.get("name")
                        .and_then(serde_json::Value::as_str)
                        .and_then(|name| store.bound(name, now))
                        .is_some_and(|b| b.key == id && b.owner.as_ref() == Some(me))
                })
            }));
        }
        answered.get_or_insert(res_parts);
    }
    let Some(mut parts) = answered else {
        return first_failure.unwrap_or(Err(GatewayError::NoKey));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions = http::Extensions::new();
    let body = if merged.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ field: merged })
    };
    Ok(Response::from_parts(
        parts,
        GatewayBody::full(body.to_string()),
    ))
}

fn creates<B>(req: &Request<B>) -> Option<Creates> {
    if req.method() != Method::POST {
        return None;
    }
    let route = req.extensions().get::<Route>()?;
    let command = req
        .headers()
        .get("x-goog-upload-command")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path();
    if route.api == Api::Upload {
        if command.contains("finalize") || command.is_empty() {
            Some(Creates::Resource)
        } else if command.contains("start") {
            Some(Creates::UploadSession)
        } else {
            None
        }
    } else if path.ends_with("/files") || path.ends_with("/cachedContents") {
        Some(Creates::Resource)
    } else {
        None
    }
}

/// A resource a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// `files/abc`, `cachedContents/xyz`, `upload:<id>`.
    resource: String,
    /// Named by the path or the upload id (certain), not found in the body (a guess).
    in_path: bool,
}

/// Resources the request names: in its path, its upload id, or (for model calls) its body.
fn referenced_resources(req: &Request<Bytes>) -> Vec<Reference> {
    let mut found = Vec::new();
    let path = req.uri().path();
    for prefix in ["files/", "cachedContents/"] {
        if let Some(at) = path.find(&format!("/{prefix}")) {
            let id = resource_id(&path.as_bytes()[at + 1 + prefix.len()..]);
            if !id.is_empty() {
                found.push(Reference {
                    resource: format!("{prefix}{id}"),
                    in_path: true,
                });
            }
        }
    }
    if let Some(id) = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("upload_id="))
            .filter(|id| !id.is_empty())
    }) {
        found.push(Reference {
            resource: format!("upload:{id}"),
            in_path: true,
        });
    }
    let body = req.body();
    if !body.is_empty()
        && req
            .extensions()
            .get::<Route>()
            .is_some_and(|r| r.model.is_some())
    {
        for (finder, prefix) in [(&*CACHED_CONTENTS, "cachedContents/"), (&*FILES, "files/")] {
            let skip = finder.needle().len();
            for at in finder.find_iter(body) {
                let id = resource_id(&body[at + skip..]);
                if !id.is_empty() {
                    found.push(Reference {
                        resource: format!("{prefix}{id}"),
                        in_path: false,
                    });
                }
            }
        }
    }
    found
}

/// The id at the start of `rest`: letters, digits, `-` and `_`.
fn resource_id(rest: &[u8]) -> &str {
    let end = rest
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

fn upload_id_in(headers: &HeaderMap) -> Option<&str> {
    let url = headers.get(&X_GOOG_UPLOAD_URL)?.to_str().ok()?;
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty())
}

/// `file.name` (an upload) or `name` (a created file or cached content).
fn created_name(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = v
        .get("file")
        .and_then(|f| f.get("name"))
        .or_else(|| v.get("name"))?
        .as_str()?;
    (name.starts_with("files/") || name.starts_with("cachedContents/")).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, body: &'static str) -> Request<Bytes> {
        let mut r = Request::builder()
            .method(method)
            .uri(uri)
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap();
        if let Some(route) = Route::classify(r.uri().path()) {
            r.extensions_mut().insert(route);
        }
        r
    }

    fn names(refs: Vec<Reference>) -> Vec<String> {
        refs.into_iter().map(|r| r.resource).collect()
    }

    #[test]
    fn finds_resources_in_paths_queries_and_bodies() {
        let r = req(Method::GET, "/v1beta/files/abc-123", "");
        assert_eq!(names(referenced_resources(&r)), ["files/abc-123"]);
        let r = req(Method::DELETE, "/v1beta/cachedContents/xyz", "");
        assert_eq!(names(referenced_resources(&r)), ["cachedContents/xyz"]);
        let r = req(
            Method::POST,
            "/upload/v1beta/files?upload_id=U1&upload_protocol=resumable",
            "x",
        );
        assert_eq!(names(referenced_resources(&r)), ["upload:U1"]);
        let r = req(
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"cachedContent":"cachedContents/c1","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1"}}]}]}"#,
        );
        assert_eq!(
            names(referenced_resources(&r)),
            ["cachedContents/c1", "files/f1"]
        );
        let r = req(
            Method::POST,
            "/v1beta/models/m:generateContent",
            r#"{"contents":[]}"#,
        );
        assert!(referenced_resources(&r).is_empty());
    }

    #[test]
    fn knows_what_creates_what() {
        let mut r = req(Method::POST, "/upload/v1beta/files", "");
        r.headers_mut()
            .insert("x-goog-upload-command", "start".parse().unwrap());
        assert_eq!(creates(&r), Some(Creates::UploadSession));
        r.headers_mut()
            .insert("x-goog-upload-command", "upload, finalize".parse().unwrap());
        assert_eq!(creates(&r), Some(Creates::Resource));
        assert_eq!(
            creates(&req(Method::POST, "/v1beta/cachedContents", "")),
            Some(Creates::Resource)
        );
        assert_eq!(creates(&req(Method::GET, "/v1beta/files", "")), None);
        assert_eq!(
            creates(&req(Method::POST, "/v1beta/models/m:generateContent", "")),
            None
        );
    }

    #[test]
    fn reads_created_names() {
        assert_eq!(
            created_name(br#"{"file":{"name":"files/abc"}}"#).as_deref(),
            Some("files/abc")
        );
        assert_eq!(
            created_name(br#"{"name":"cachedContents/x"}"#).as_deref(),
            Some("cachedContents/x")
        );
        assert_eq!(created_name(br#"{"name":"operations/1"}"#), None);
    }
}

//! Affinity: a key-owned resource (file, cached content, batch, long-running operation, tuned
//! model, file search store, interaction, corpus, generated file) is visible only to the key
//! (the Google project) that created it, so every later request that names one must use that
//! key. Which names count, and how they are found, is [`names`]; links in answers, [`links`].
//!
//! Sits below buffer body (it reads the request body for resource references) and above
//! failover (a bound request is not replayed on other keys: they cannot see the resource).
//!
//! - Learns: the upload id of a resumable upload (from the rewritten `X-Goog-Upload-URL`), and
//!   the names in each creation answer (`file.name`, `name`, `metadata.tunedModel`, `id`),
//!   bound to the key that served the request for [`BINDING_LIFETIME`] (files live 48 h); and
//!   the files named by the download links in a bound resource's answers (a finished video).
//! - Lists: a `GET` of files, cached contents, batches, tuned models, file search stores or
//!   corpora goes to every key and the lists are merged, so a client sees all of its resources
//!   whichever key holds them.
//! - Binds: a request whose path names a resource, whose upload id is known, or whose body
//!   refers to known ones, gets [`BoundKey`] for key balance. Resources of two different keys
//!   in one request: 400 `INVALID_ARGUMENT`, nothing sent.
//! - Isolates clients: with `auth.enabled` each binding also records the client (token `sub`)
//!   that created the resource. A request naming a resource or upload in its path that another
//!   client created — or that the gateway has no binding for — is answered Google's 404
//!   `NOT_FOUND` without reaching Google; a body reference to another client's resource too.
//!   Merged listings show each client only its own resources.
//! - Links: download URLs in answers (`…/files/x:download?alt=media&key=…`) point at the
//!   gateway without the key; with auth on they, and the upload URL of a new session, carry a
//!   capability for their client ([`crate::auth::capability`]).

mod links;
mod names;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::auth::{Client, capability, unix_now};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::store::Binding;
use crate::key_pool::{BoundKey, SelectedKey};
use crate::route::{Api, Route};
use names::{Creates, Reference, created_names, creates, referenced_resources};

/// How long a binding is kept: the lifetime of an uploaded file.
pub const BINDING_LIFETIME: Duration = Duration::from_secs(48 * 3600);

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
        let client = req.extensions().get::<Client>().cloned();
        let owner = client.as_ref().map(|c| c.id.clone());
        let mut bound: Option<(Arc<str>, String)> = None;
        // Whether the answer may carry download links (a video operation's, a file's: small,
        // read whole), or names of files it made (a batch's `responsesFile`: read as it
        // streams by, since a batch with inlined responses can be large).
        let mut may_link = false;
        let mut names_files = false;
        for Reference { resource, in_path } in referenced_resources(&req) {
            may_link |= in_path
                && ["models/", "files/", "generatedFiles/"]
                    .iter()
                    .any(|p| resource.starts_with(p));
            names_files |= in_path && resource.starts_with("batches/");
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
            let Some(b) = binding else { continue };
            match &bound {
                None => bound = Some((b.key, resource)),
                // No key can see both: Google would answer one of them "not found".
                Some((key, first)) if *key != b.key => {
                    let e = GatewayError::InvalidArgument(format!(
                        "the request names {first} and {resource}, which belong to different \
                         API keys of the gateway; no single upstream key can see both"
                    ));
                    return Box::pin(std::future::ready(Err(e)));
                }
                Some(_) => {}
            }
        }
        let is_bound = bound.is_some();
        if let Some((key, _)) = bound {
            req.extensions_mut().insert(BoundKey(key));
        }
        let creates = creates(&req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        if let Some(field) = merged_list(&req, owner.is_some()) {
            return Box::pin(list_every_key(inner, gateway, req, field, owner));
        }
        // A bound resource's own answer (a poll, a get) may carry download links to rewrite;
        // a creation's answer too. Downloads themselves stream through untouched.
        let route = req.extensions().get::<Route>();
        let reads_links = (creates == Some(Creates::Resource)
            || (is_bound && may_link && req.method() == Method::GET))
            && route.is_some_and(|r| r.api != Api::Download)
            && !req.uri().path().ends_with(":download");
        let interaction = req.uri().path().ends_with("/interactions");
        let origin = reads_links.then(|| {
            let live = gateway.live();
            gateway.client_origin(&live.config, req.uri(), req.headers())
        });
        let taps_names = is_bound && names_files && req.method() == Method::GET;
        Box::pin(async move {
            let mut res = inner.ready().await?.call(req).await?;
            if taps_names
                && res.status().is_success()
                && let Some(SelectedKey(key)) = res.extensions().get::<SelectedKey>().cloned()
            {
                let binding = Binding {
                    key: key.id.clone(),
                    owner: owner.clone(),
                };
                let tap = links::NameTap::new(gateway.store_handle(), binding, BINDING_LIFETIME);
                res.body_mut().tap(Box::new(tap));
                return Ok(res);
            }
            if !res.status().is_success() || (creates.is_none() && origin.is_none()) {
                return Ok(res);
            }
            let Some(SelectedKey(key)) = res.extensions().get::<SelectedKey>().cloned() else {
                return Ok(res);
            };
            let expires = Instant::now() + BINDING_LIFETIME;
            let store = gateway.store();
            let binding = Binding {
                key: key.id.clone(),
                owner,
            };
            if let Some(id) = links::upload_id_in(res.headers()).map(str::to_owned) {
                let resource = format!("upload:{id}");
                store.bind(&resource, binding.clone(), expires);
                if let Some(client) = &client {
                    let auth = &gateway.live().config.auth;
                    let cap = capability::mint(auth, client, &resource, unix_now());
                    links::sign_upload_urls(res.headers_mut(), &cap);
                }
            }
            if creates == Some(Creates::UploadSession) || !is_small_json(res.headers()) {
                return Ok(res);
            }
            let (mut parts, body) = res.into_parts();
            let mut bytes = Limited::new(body, MAX_CREATE_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| GatewayError::UpstreamUnavailable {
                    key: key.id.clone(),
                })?
                .to_bytes();
            if creates.is_some() {
                for name in created_names(&bytes, interaction) {
                    store.bind(&name, binding.clone(), expires);
                }
            }
            if let Some(origin) = origin {
                let live = gateway.live();
                let sign = |file: &str| {
                    client
                        .as_ref()
                        .map(|c| capability::mint(&live.config.auth, c, file, unix_now()))
                };
                let found = links::rewrite_links(&bytes, &live.target, &origin, &sign);
                for name in found.named {
                    store.bind(&name, binding.clone(), expires);
                }
                if let Some(body) = found.body {
                    bytes = Bytes::from(body);
                }
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Ok(Response::from_parts(parts, GatewayBody::full(bytes)))
        })
    }
}

/// Whether an answer is JSON the gateway may read whole: JSON, and no longer than
/// [`MAX_CREATE_ANSWER_BYTES`] when it says its length.
fn is_small_json(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/json"));
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_CREATE_ANSWER_BYTES);
    json && small
}

/// Google's answer for a resource that does not exist (or that this client may not see).
fn not_found(resource: &str) -> GatewayError {
    let what = if resource.starts_with("upload:") {
        "Upload session"
    } else if resource.starts_with("cachedContents/") {
        "Cached content"
    } else if resource.starts_with("files/") {
        "File"
    } else {
        // Google's words for every other resource it does not show.
        return GatewayError::ResourceNotFound("Requested entity was not found.".into());
    };
    GatewayError::ResourceNotFound(format!("{what} not found."))
}

/// A listing of files, cached contents, batches, tuned models, file search stores or corpora
/// (`GET /{v}/files`): each key sees only its own, so the
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
        // A batch is a long-running operation: Google lists them as `operations`.
        Api::Native if path.ends_with("/batches") => Some("operations"),
        Api::Native if path.ends_with("/tunedModels") => Some("tunedModels"),
        Api::Native if path.ends_with("/fileSearchStores") => Some("fileSearchStores"),
        Api::Native if path.ends_with("/corpora") => Some("corpora"),
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

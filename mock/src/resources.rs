//! Files (with Google's resumable upload protocol) and cached contents, each owned by the key
//! that created it: any other key gets 403, as Google answers for another project's resource.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::clock::now_and_later;
use crate::reply;
use crate::shared::Shared;
use crate::url::{percent_encode, query_param};

/// How long Google keeps an uploaded file.
const FILE_LIFETIME: Duration = Duration::from_secs(48 * 3600);
/// A cache's lifetime when the request gives no `ttl`.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// What Google advertises as the chunk size of a resumable upload.
const UPLOAD_GRANULARITY: &str = "8388608";

/// Every file, cached content and unfinished upload of one mock.
#[derive(Default)]
pub(crate) struct Resources {
    files: Owned,
    caches: Owned,
    uploads: Mutex<HashMap<String, Upload>>,
}

/// Resources by id, each with the key that created it.
#[derive(Default)]
struct Owned {
    entries: Mutex<HashMap<String, Entry>>,
    next_seq: AtomicU64,
}

struct Entry {
    owner: String,
    /// Creation order, so lists come out in it.
    seq: u64,
    json: Value,
}

/// A resumable upload between `start` and `finalize`.
struct Upload {
    owner: String,
    version: String,
    file_id: String,
    display_name: Option<String>,
    mime_type: String,
    received: u64,
}

/// What a resource handler needs to know about the request.
pub(crate) struct ResourceRequest<'a> {
    pub(crate) key: &'a str,
    pub(crate) version: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
    pub(crate) body: &'a Bytes,
}

impl Owned {
    fn insert(&self, id: String, owner: &str, json: Value) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            id,
            Entry {
                owner: owner.to_owned(),
                seq,
                json,
            },
        );
    }

    /// Applies `f` to the entry if `key` owns it.
    fn with<T>(&self, id: &str, key: &str, f: impl FnOnce(&mut Value) -> T) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get_mut(id)
            .filter(|e| e.owner == key)
            .map(|e| f(&mut e.json))
    }

    fn remove(&self, id: &str, key: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let owned = entries.get(id).is_some_and(|e| e.owner == key);
        if owned {
            entries.remove(id);
        }
        owned
    }

    /// `{"<field>": [...]}` of what `key` owns, or `{}` when nothing (as Google answers).
    fn list(&self, key: &str, field: &str) -> Bytes {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut owned: Vec<&Entry> = entries.values().filter(|e| e.owner == key).collect();
        owned.sort_by_key(|e| e.seq);
        let mut list = json!({});
        if !owned.is_empty() {
            list[field] = owned.iter().map(|e| e.json.clone()).collect();
        }
        reply::pretty(&list)
    }
}

impl Resources {
    /// The key that holds file `id` (without `files/`), if it exists.
    pub(crate) fn file_owner(&self, id: &str) -> Option<String> {
        let entries = self
            .files
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        entries.get(id).map(|e| e.owner.clone())
    }
}

/// `POST /upload/{v}/files`: starts a resumable upload, takes its bytes, or (other protocols)
/// stores the whole body as a file at once.
pub(crate) fn upload(shared: &Shared, req: &ResourceRequest<'_>) -> Response<MockBody> {
    if let Some(upload_id) = query_param(req.query, "upload_id") {
        return upload_bytes(shared, req, upload_id);
    }
    let metadata = body_json(req.body).unwrap_or(Value::Null);
    let file = &metadata["file"];
    let display_name = field(file, "displayName", "display_name")
        .as_str()
        .map(str::to_owned);
    let file_id = match file["name"].as_str() {
        Some(name) => name.strip_prefix("files/").unwrap_or(name).to_owned(),
        None => shared.new_id(),
    };
    let mime_type = header(req.headers, "x-goog-upload-header-content-type")
        .or(field(file, "mimeType", "mime_type").as_str())
        .unwrap_or("application/octet-stream")
        .to_owned();

    if !header(req.headers, "x-goog-upload-protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case("resumable"))
    {
        // Multipart or raw: the mock does not parse the parts, it only counts the bytes.
        let json = file_json(
            shared,
            req.version,
            &file_id,
            display_name.as_deref(),
            &mime_type,
            req.body.len() as u64,
        );
        shared
            .resources
            .files
            .insert(file_id, req.key, json.clone());
        return reply::ok(reply::pretty(&json!({ "file": json })));
    }
    if !commands(req.headers).any(|c| c == "start") {
        return reply::invalid_argument(
            "X-Goog-Upload-Command must be 'start' to begin a resumable upload.",
        );
    }
    let upload_id = shared.new_id();
    let url = format!(
        "{}/upload/{}/files?upload_id={upload_id}&upload_protocol=resumable&key={}",
        shared.base_url,
        req.version,
        percent_encode(req.key)
    );
    shared
        .resources
        .uploads
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            upload_id,
            Upload {
                owner: req.key.to_owned(),
                version: req.version.to_owned(),
                file_id,
                display_name,
                mime_type,
                received: 0,
            },
        );
    let mut response = upload_status("active");
    if let Ok(url) = HeaderValue::try_from(url) {
        response
            .headers_mut()
            .insert("x-goog-upload-control-url", url.clone());
        response.headers_mut().insert("x-goog-upload-url", url);
    }
    response.headers_mut().insert(
        "x-goog-upload-chunk-granularity",
        HeaderValue::from_static(UPLOAD_GRANULARITY),
    );
    response
}

/// The `upload`, `finalize`, `query` and `cancel` commands of a started upload.
fn upload_bytes(shared: &Shared, req: &ResourceRequest<'_>, upload_id: &str) -> Response<MockBody> {
    let mut uploads = shared
        .resources
        .uploads
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(upload) = uploads.get_mut(upload_id) else {
        return reply::not_found("Upload session not found.");
    };
    if upload.owner != req.key {
        return reply::permission_denied("The caller does not have permission");
    }
    let mut finalize = false;
    for command in commands(req.headers) {
        match command.as_str() {
            "upload" => {
                let offset = header(req.headers, "x-goog-upload-offset");
                if offset.is_some_and(|o| o.parse() != Ok(upload.received)) {
                    return reply::invalid_argument(
                        "X-Goog-Upload-Offset does not match the bytes received.",
                    );
                }
                upload.received += req.body.len() as u64;
            }
            "finalize" => finalize = true,
            "cancel" => {
                uploads.remove(upload_id);
                return upload_status("cancelled");
            }
            _ => {}
        }
    }
    if !finalize {
        let mut response = upload_status("active");
        if let Ok(received) = HeaderValue::try_from(upload.received.to_string()) {
            response
                .headers_mut()
                .insert("x-goog-upload-size-received", received);
        }
        return response;
    }
    let Some(upload) = uploads.remove(upload_id) else {
        return reply::not_found("Upload session not found.");
    };
    drop(uploads);
    let json = file_json(
        shared,
        &upload.version,
        &upload.file_id,
        upload.display_name.as_deref(),
        &upload.mime_type,
        upload.received,
    );
    shared
        .resources
        .files
        .insert(upload.file_id, &upload.owner, json.clone());
    let mut response = reply::ok(reply::pretty(&json!({ "file": json })));
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
    response
}

/// `GET /{v}/files`.
pub(crate) fn list_files(shared: &Shared, key: &str) -> Response<MockBody> {
    reply::ok(shared.resources.files.list(key, "files"))
}

/// `GET /{v}/files/{id}`.
pub(crate) fn get_file(shared: &Shared, key: &str, id: &str) -> Response<MockBody> {
    match shared
        .resources
        .files
        .with(id, key, |json| reply::pretty(json))
    {
        Some(json) => reply::ok(json),
        None => file_denied(id),
    }
}

/// `DELETE /{v}/files/{id}`.
pub(crate) fn delete_file(shared: &Shared, key: &str, id: &str) -> Response<MockBody> {
    if shared.resources.files.remove(id, key) {
        reply::ok(Bytes::from_static(b"{}\n"))
    } else {
        file_denied(id)
    }
}

/// `POST /{v}/cachedContents`.
pub(crate) fn create_cache(shared: &Shared, req: &ResourceRequest<'_>) -> Response<MockBody> {
    let Some(request) = body_json(req.body) else {
        return reply::invalid_argument("Invalid JSON payload received.");
    };
    let model = match request["model"].as_str() {
        Some(model) if model.starts_with("models/") => model.to_owned(),
        Some(model) => format!("models/{model}"),
        None => return reply::invalid_argument("CachedContent.model is required."),
    };
    let id = shared.new_id();
    let (now, expire) = now_and_later(ttl(&request).unwrap_or(DEFAULT_CACHE_TTL));
    let mut json = json!({
        "name": format!("cachedContents/{id}"),
        "model": model,
        "createTime": now,
        "updateTime": now,
        "expireTime": expire,
        "usageMetadata": { "totalTokenCount": 4096 },
    });
    if let Some(display_name) = field(&request, "displayName", "display_name").as_str() {
        json["displayName"] = json!(display_name);
    }
    let body = reply::pretty(&json);
    shared.resources.caches.insert(id, req.key, json);
    reply::ok(body)
}

/// `GET /{v}/cachedContents`.
pub(crate) fn list_caches(shared: &Shared, key: &str) -> Response<MockBody> {
    reply::ok(shared.resources.caches.list(key, "cachedContents"))
}

/// `GET /{v}/cachedContents/{id}`.
pub(crate) fn get_cache(shared: &Shared, key: &str, id: &str) -> Response<MockBody> {
    match shared
        .resources
        .caches
        .with(id, key, |json| reply::pretty(json))
    {
        Some(json) => reply::ok(json),
        None => cache_denied(),
    }
}

/// `PATCH /{v}/cachedContents/{id}`: a new `ttl` or `expireTime`.
pub(crate) fn patch_cache(
    shared: &Shared,
    req: &ResourceRequest<'_>,
    id: &str,
) -> Response<MockBody> {
    let update = body_json(req.body).unwrap_or(Value::Null);
    let updated = shared.resources.caches.with(id, req.key, |json| {
        let (now, expire) = now_and_later(ttl(&update).unwrap_or(DEFAULT_CACHE_TTL));
        json["updateTime"] = json!(now);
        let asked = field(&update, "expireTime", "expire_time");
        json["expireTime"] = if asked.is_string() {
            asked.clone()
        } else {
            json!(expire)
        };
        reply::pretty(json)
    });
    match updated {
        Some(json) => reply::ok(json),
        None => cache_denied(),
    }
}

/// `DELETE /{v}/cachedContents/{id}`.
pub(crate) fn delete_cache(shared: &Shared, key: &str, id: &str) -> Response<MockBody> {
    if shared.resources.caches.remove(id, key) {
        reply::ok(Bytes::from_static(b"{}\n"))
    } else {
        cache_denied()
    }
}

fn file_json(
    shared: &Shared,
    version: &str,
    id: &str,
    display_name: Option<&str>,
    mime_type: &str,
    size: u64,
) -> Value {
    let (now, expire) = now_and_later(FILE_LIFETIME);
    let mut json = json!({
        "name": format!("files/{id}"),
        "mimeType": mime_type,
        "sizeBytes": size.to_string(),
        "createTime": now,
        "updateTime": now,
        "expirationTime": expire,
        "uri": format!("{}/{version}/files/{id}", shared.base_url),
        "state": "ACTIVE",
        "source": "UPLOADED",
    });
    if let Some(display_name) = display_name {
        json["displayName"] = json!(display_name);
    }
    json
}

/// Google's answer for a file that is another project's, or does not exist: it will not say which.
fn file_denied(id: &str) -> Response<MockBody> {
    reply::permission_denied(&format!(
        "You do not have permission to access the File {id} or it may not exist."
    ))
}

fn cache_denied() -> Response<MockBody> {
    reply::permission_denied("CachedContent not found (or permission denied)")
}

/// An empty 200 carrying `X-Goog-Upload-Status`.
fn upload_status(status: &'static str) -> Response<MockBody> {
    let mut response = reply::with_type(StatusCode::OK, reply::TEXT.clone(), MockBody::empty());
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static(status));
    response
}

/// The comma-separated `X-Goog-Upload-Command`, lowercased.
fn commands(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    header(headers, "x-goog-upload-command")
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A field by its JSON name or its proto name: Google accepts both, and the Python SDK sends the latter.
fn field<'a>(object: &'a Value, camel: &str, snake: &str) -> &'a Value {
    match &object[camel] {
        Value::Null => &object[snake],
        value => value,
    }
}

fn body_json(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// A `"ttl": "300s"` (fractions allowed) in a cache request.
fn ttl(request: &Value) -> Option<Duration> {
    let seconds: f64 = request["ttl"].as_str()?.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ttl() {
        assert_eq!(
            ttl(&json!({ "ttl": "300s" })),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            ttl(&json!({ "ttl": "1.5s" })),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(ttl(&json!({ "ttl": "300" })), None);
        assert_eq!(ttl(&json!({})), None);
    }

    #[test]
    fn upload_commands_split_and_trim() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-goog-upload-command",
            HeaderValue::from_static("Upload, finalize"),
        );
        assert_eq!(
            commands(&headers).collect::<Vec<_>>(),
            ["upload", "finalize"]
        );
    }
}

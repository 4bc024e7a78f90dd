//! Links the gateway hands out: upload URLs signed for their client, and download URLs in
//! answers pointed at the gateway.
//!
//! Google's upload URL and a generated video's URI carry the API key. The upstream client
//! already points upload URLs at the gateway without the key; with auth on, this adds the
//! client's capability ([`crate::auth::capability`]) to them, since google-genai sends no
//! credential there. Download URIs (`…/files/x:download?alt=media&key=…`) in a resource's
//! answer (an operation polled to completion, a file) are rewritten the same way, and the files
//! they name are bound to the key that answered.

use http::Uri;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;

use super::names::{resource_id, root_of};
use crate::body::{BodyEnd, BodyObserver};
use crate::http_client::{
    UpstreamTarget, X_GOOG_UPLOAD_CONTROL_URL, X_GOOG_UPLOAD_URL, strip_key_param,
};
use crate::key_pool::store::{Binding, KeyStateStore};

/// Adds `key=<capability>` to the (already rewritten) upload URLs of a session's answer.
pub(super) fn sign_upload_urls(headers: &mut HeaderMap, capability: &str) {
    for name in [&X_GOOG_UPLOAD_URL, &X_GOOG_UPLOAD_CONTROL_URL] {
        let Some(url) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        if let Ok(v) = HeaderValue::try_from(format!("{url}{sep}key={capability}")) {
            headers.insert(name.clone(), v);
        }
    }
}

/// The upload id in an answer's `X-Goog-Upload-URL`.
pub(super) fn upload_id_in(headers: &HeaderMap) -> Option<&str> {
    let url = headers.get(&X_GOOG_UPLOAD_URL)?.to_str().ok()?;
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty())
}

/// What [`rewrite_links`] found in an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Links {
    /// The answer with its download URLs pointed at the gateway, when it had any.
    pub(super) body: Option<Vec<u8>>,
    /// Key-owned resources the answer names (`files/x` of a download URL or a batch's
    /// `responsesFile`, …): they live on the key that answered.
    pub(super) named: Vec<String>,
}

/// Walks a JSON answer: every download URL of the upstream becomes `{origin}{path}?{query}`
/// without its key (with `sign(file)` as the key when it gives one), and every string that is a
/// resource's name is collected.
pub(super) fn rewrite_links(
    body: &[u8],
    target: &UpstreamTarget,
    origin: &str,
    sign: &dyn Fn(&str) -> Option<String>,
) -> Links {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Links::default();
    };
    let mut links = Links::default();
    let changed = walk(&mut v, &mut |s: &mut String| {
        if let Some(root) = root_of(s).filter(|r| r == s) {
            links.named.push(root);
            return false;
        }
        let Some((file, url)) = download_link(s, target, origin) else {
            return false;
        };
        *s = match sign(&file) {
            Some(cap) => format!(
                "{url}{}key={cap}",
                if url.contains('?') { '&' } else { '?' }
            ),
            None => url,
        };
        links.named.push(file);
        true
    });
    if changed {
        links.body = serde_json::to_vec(&v).ok();
    }
    links.named.dedup();
    links
}

/// Watches an answer stream by (a batch polled: it may inline every response, so it is never
/// held back) and, once it is complete, binds the resources it names (`responsesFile`) to the
/// key that answered. Answers larger than [`MAX_TAPPED_BYTES`] are let go unread.
pub(super) struct NameTap {
    store: Arc<dyn KeyStateStore>,
    binding: Binding,
    lifetime: Duration,
    seen: Vec<Bytes>,
    len: usize,
}

/// The most of an answer a [`NameTap`] keeps.
const MAX_TAPPED_BYTES: usize = 1024 * 1024;

impl NameTap {
    pub(super) fn new(store: Arc<dyn KeyStateStore>, binding: Binding, lifetime: Duration) -> Self {
        Self {
            store,
            binding,
            lifetime,
            seen: Vec::new(),
            len: 0,
        }
    }
}

impl BodyObserver for NameTap {
    fn on_data(&mut self, data: &Bytes) {
        self.len = self.len.saturating_add(data.len());
        if self.len <= MAX_TAPPED_BYTES {
            // A reference-counted clone: no copy of the answer.
            self.seen.push(data.clone());
        } else {
            self.seen.clear();
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        if end != BodyEnd::Complete || self.len > MAX_TAPPED_BYTES {
            return;
        }
        let body = self.seen.concat();
        let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
            return;
        };
        let mut named = Vec::new();
        walk(&mut v, &mut |s: &mut String| {
            if let Some(root) = root_of(s).filter(|r| r == s) {
                named.push(root);
            }
            false
        });
        let expires = Instant::now() + self.lifetime;
        for name in named {
            self.store.bind(&name, self.binding.clone(), expires);
        }
    }
}

/// Calls `f` on every string in `v`; whether any call changed one.
fn walk(v: &mut Value, f: &mut dyn FnMut(&mut String) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().fold(false, |c, i| walk(i, f) | c),
        Value::Object(map) => map.values_mut().fold(false, |c, i| walk(i, f) | c),
        _ => false,
    }
}

/// `(files/x, the URL at the gateway without a key)` for an upstream download URL.
fn download_link(s: &str, target: &UpstreamTarget, origin: &str) -> Option<(String, String)> {
    if !s.contains(":download") {
        return None;
    }
    let uri: Uri = s.parse().ok()?;
    let path = target.path_of(&uri)?;
    let (_, after) = path.rsplit_once("/files/")?;
    let id = after.strip_suffix(":download")?;
    if id.is_empty() || resource_id(id.as_bytes()) != id {
        return None;
    }
    let mut url = format!("{origin}{path}");
    if let Some(q) = uri.query().map(strip_key_param).filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&q);
    }
    Some((format!("files/{id}"), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_links_point_at_the_gateway_without_the_key() {
        let target = UpstreamTarget::parse("http://127.0.0.1:9000").unwrap();
        let body = br#"{"name":"models/veo/operations/o1","done":true,"response":{"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/v1:download?alt=media&key=AIzaSECRET"}},{"video":{"uri":"http://127.0.0.1:9000/download/v1beta/files/v2:download?alt=media&key=AIzaSECRET"}}]}}}"#;
        let links = rewrite_links(body, &target, "http://gw:8080", &|f| {
            Some(format!("cap-{f}"))
        });
        let out = String::from_utf8(links.body.unwrap()).unwrap();
        assert!(!out.contains("AIzaSECRET"), "{out}");
        assert!(
            out.contains("\"http://gw:8080/v1beta/files/v1:download?alt=media&key=cap-files/v1\""),
            "{out}"
        );
        assert!(
            out.contains(
                "\"http://gw:8080/download/v1beta/files/v2:download?alt=media&key=cap-files/v2\""
            ),
            "{out}"
        );
        assert_eq!(
            links.named,
            ["models/veo/operations/o1", "files/v1", "files/v2"]
        );

        // Nothing to rewrite: the body is left as it was; names are still collected.
        let links = rewrite_links(
            br#"{"name":"batches/b1","response":{"responsesFile":"files/r1"},"other":"https://example.com/files/x:download"}"#,
            &target,
            "http://gw:8080",
            &|_| None,
        );
        assert_eq!(links.body, None);
        assert_eq!(links.named, ["batches/b1", "files/r1"]);
    }

    #[tokio::test]
    async fn a_batch_answer_binds_its_results_file_as_it_streams_by() {
        let store: Arc<dyn KeyStateStore> = Arc::new(crate::key_pool::store::MemoryStore::new());
        let binding = Binding {
            key: "k2".into(),
            owner: Some("alice".into()),
        };
        let mut tap = NameTap::new(store.clone(), binding.clone(), Duration::from_secs(60));
        tap.on_data(&Bytes::from_static(br#"{"name":"batches/b1","response":{"#));
        tap.on_data(&Bytes::from_static(br#""responsesFile":"files/r1"}}"#));
        tap.on_end(BodyEnd::Complete);
        assert_eq!(
            store.bound("files/r1", Instant::now()),
            Some(binding.clone())
        );

        // A body that broke off binds nothing.
        let mut tap = NameTap::new(store.clone(), binding, Duration::from_secs(60));
        tap.on_data(&Bytes::from_static(br#"{"responsesFile":"files/r2"}"#));
        tap.on_end(BodyEnd::Error);
        assert_eq!(store.bound("files/r2", Instant::now()), None);
    }

    #[test]
    fn upload_urls_get_the_capability() {
        let mut h = HeaderMap::new();
        h.insert(
            X_GOOG_UPLOAD_URL.clone(),
            HeaderValue::from_static(
                "http://gw/upload/v1beta/files?upload_id=U1&upload_protocol=resumable",
            ),
        );
        sign_upload_urls(&mut h, "gpcap1.a.b");
        assert_eq!(
            h[&X_GOOG_UPLOAD_URL],
            "http://gw/upload/v1beta/files?upload_id=U1&upload_protocol=resumable&key=gpcap1.a.b"
        );
        assert!(h.get(&X_GOOG_UPLOAD_CONTROL_URL).is_none());
    }
}

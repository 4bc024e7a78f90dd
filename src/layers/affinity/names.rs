//! Which key-owned resources a request names, and which ones an answer created.
//!
//! A resource is named by its root: `files/x`, `cachedContents/x`, `batches/x`, `tunedModels/x`,
//! `fileSearchStores/x`, `corpora/x`, `interactions/x`, `generatedFiles/x`, or a model's
//! long-running operation `models/m/operations/x`. Everything below a root (a tuned model's
//! operations, a store's documents and operations, `:cancel`, `:generateContent`) lives with
//! it on the same key.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{Method, Request};
use memchr::memmem::Finder;

use crate::route::{Api, Route};

/// The collections whose members belong to the key that created them.
const KINDS: [&str; 8] = [
    "files/",
    "cachedContents/",
    "batches/",
    "tunedModels/",
    "fileSearchStores/",
    "corpora/",
    "interactions/",
    "generatedFiles/",
];

/// Bodies are searched in one pass for `s/`, the end of every collection name but one; what
/// precedes it says which (bodies can be megabytes of inline data, so not one pass per kind).
/// Files are found in both spellings, a URL (`https://…/files/x`) and a name (`"files/x"`,
/// e.g. a batch's `inputConfig.fileName`); the others as quoted names.
static ENDS_IN_S_SLASH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"s/"));
/// What precedes `s/`, and the name prefix it makes.
const BODY_HEADS: [(&[u8], &str); 8] = [
    (b"cachedContent", "cachedContents/"),
    (b"/file", "files/"),
    (b"\"file", "files/"),
    (b"\"batche", "batches/"),
    (b"\"tunedModel", "tunedModels/"),
    (b"\"fileSearchStore", "fileSearchStores/"),
    (b"\"generatedFile", "generatedFiles/"),
    (b"\"interaction", "interactions/"),
];
/// The one collection whose name does not end in `s/`.
static CORPORA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"corpora/"));
/// `previous_interaction_id` names an interaction by its bare id.
static PREVIOUS_INTERACTION: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"previous_interaction_id\""));

/// A resource a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reference {
    /// `files/abc`, `batches/b1`, `models/veo/operations/o1`, `upload:<id>`.
    pub(super) resource: String,
    /// Named by the path or the upload id (certain), not found in the body (a guess).
    pub(super) in_path: bool,
}

/// Resources the request names: in its path, its upload id, or its JSON body (never an
/// upload's bytes).
pub(super) fn referenced_resources(req: &Request<Bytes>) -> Vec<Reference> {
    let mut found = Vec::new();
    // Decoded: the OpenAI SDK sends `openai/batches/batches%2Fx` (the route layer lets an
    // encoded slash through only there).
    let path = crate::route::percent_decoded(req.uri().path());
    let path = &*path;
    let mut in_path = |resource: String| {
        found.push(Reference {
            resource,
            in_path: true,
        })
    };
    // One pass over the segments: for each kind, the segment after its last occurrence (the
    // OpenAI-compatible surface repeats the collection: `/openai/batches/batches/x`).
    let mut after: [Option<&str>; KINDS.len()] = [None; KINDS.len()];
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if let Some(next) = segments.peek()
            && let Some(kind) = KINDS
                .iter()
                .position(|k| k.len() == segment.len() + 1 && k.starts_with(segment))
        {
            after[kind] = Some(next);
        }
    }
    for (kind, next) in KINDS.iter().zip(after) {
        let id = next.map_or("", |n| resource_id(n.as_bytes()));
        if !id.is_empty() {
            in_path(format!("{kind}{id}"));
        }
    }
    if let Some(operation) = model_operation(path) {
        in_path(operation);
    }
    if let Some(id) = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("upload_id="))
            .filter(|id| !id.is_empty())
    }) {
        in_path(format!("upload:{id}"));
    }
    let body = req.body();
    let route = req.extensions().get::<Route>();
    if !body.is_empty() && route.is_some_and(|r| r.api != Api::Upload) {
        let mut in_body = |prefix: &str, rest: &[u8]| {
            let id = resource_id(rest);
            if !id.is_empty() {
                found.push(Reference {
                    resource: format!("{prefix}{id}"),
                    in_path: false,
                });
            }
        };
        for at in ENDS_IN_S_SLASH.find_iter(body) {
            let before = &body[..at];
            if let Some((_, prefix)) = BODY_HEADS.iter().find(|(head, _)| before.ends_with(head)) {
                in_body(prefix, &body[at + 2..]);
            }
        }
        for at in CORPORA.find_iter(body) {
            in_body("corpora/", &body[at + CORPORA.needle().len()..]);
        }
        for at in PREVIOUS_INTERACTION.find_iter(body) {
            let rest = &body[at + PREVIOUS_INTERACTION.needle().len()..];
            let rest = trim_start(rest);
            let Some(rest) = rest.strip_prefix(b":") else {
                continue;
            };
            let Some(rest) = trim_start(rest).strip_prefix(b"\"") else {
                continue;
            };
            let id = resource_id(rest);
            if !id.is_empty() {
                found.push(Reference {
                    resource: format!("interactions/{id}"),
                    in_path: false,
                });
            }
        }
    }
    found.dedup();
    found
}

fn trim_start(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[skip..]
}

/// `models/{m}/operations/{id}` in a path (a Veo operation being polled).
fn model_operation(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?.split_once('/')?.1;
    let rest = rest.strip_prefix("models/")?;
    let (model, rest) = rest.split_once('/')?;
    let id = resource_id(rest.strip_prefix("operations/")?.as_bytes());
    (!model.is_empty() && !id.is_empty()).then(|| format!("models/{model}/operations/{id}"))
}

/// The id at the start of `rest`: letters, digits, `-` and `_`.
pub(super) fn resource_id(rest: &[u8]) -> &str {
    let end = rest
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_')))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// The root resource a name belongs to (`tunedModels/t/operations/o` → `tunedModels/t`), or
/// `None` when the name is no key-owned resource.
pub(super) fn root_of(name: &str) -> Option<String> {
    if let Some(op) = model_operation(&format!("/v/{name}")) {
        return Some(op);
    }
    KINDS.iter().find_map(|kind| {
        let id = resource_id(name.strip_prefix(kind)?.as_bytes());
        (!id.is_empty()).then(|| format!("{kind}{id}"))
    })
}

/// What a request creates, so the answer can be bound to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Creates {
    /// A resumable upload session (its id is in the upload URL).
    UploadSession,
    /// A resource (its name is in the answer).
    Resource,
}

pub(super) fn creates<B>(req: &Request<B>) -> Option<Creates> {
    if req.method() != Method::POST {
        return None;
    }
    let route = req.extensions().get::<Route>()?;
    if route.api == Api::Upload {
        let command = req
            .headers()
            .get("x-goog-upload-command")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return if command.contains("finalize") || command.is_empty() {
            Some(Creates::Resource)
        } else if command.contains("start") {
            Some(Creates::UploadSession)
        } else {
            None
        };
    }
    crate::replay::creates_resource(req.method(), req.uri().path(), Some(route.api))
        .then_some(Creates::Resource)
}

/// The resources an answer created: its `name` (a file, cache, batch, store, an operation),
/// `file.name` (an upload), `metadata.tunedModel` (a tuning operation), and `id` (the
/// OpenAI-compatible surface's `files/…` and `batches/…`, or an interaction when `interaction`).
pub(super) fn created_names(body: &[u8], interaction: bool) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let text = |p: &str| v.pointer(p).and_then(serde_json::Value::as_str);
    let mut names: Vec<String> = ["/name", "/file/name", "/metadata/tunedModel", "/id"]
        .into_iter()
        .filter_map(text)
        .filter_map(root_of)
        .collect();
    if interaction && let Some(id) = text("/id").filter(|id| !resource_id(id.as_bytes()).is_empty())
    {
        names.push(format!("interactions/{id}"));
    }
    names.dedup();
    names
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

    fn names(r: &Request<Bytes>) -> Vec<String> {
        referenced_resources(r)
            .into_iter()
            .map(|r| r.resource)
            .collect()
    }

    #[test]
    fn finds_resources_in_paths_queries_and_bodies() {
        let r = req(Method::GET, "/v1beta/files/abc-123", "");
        assert_eq!(names(&r), ["files/abc-123"]);
        let r = req(Method::DELETE, "/v1beta/cachedContents/xyz", "");
        assert_eq!(names(&r), ["cachedContents/xyz"]);
        let r = req(
            Method::POST,
            "/upload/v1beta/files?upload_id=U1&upload_protocol=resumable",
            "x",
        );
        assert_eq!(names(&r), ["upload:U1"]);
        let r = req(
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"cachedContent":"cachedContents/c1","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1"}}]}]}"#,
        );
        assert_eq!(names(&r), ["cachedContents/c1", "files/f1"]);
        let r = req(
            Method::POST,
            "/v1beta/models/m:generateContent",
            r#"{"contents":[]}"#,
        );
        assert!(referenced_resources(&r).is_empty());
    }

    #[test]
    fn finds_every_key_owned_resource() {
        for (method, uri, want) in [
            (Method::POST, "/v1beta/batches/b1:cancel", "batches/b1"),
            (Method::DELETE, "/v1beta/batches/b1", "batches/b1"),
            (
                Method::GET,
                "/v1beta/models/veo-3.0/operations/op1",
                "models/veo-3.0/operations/op1",
            ),
            (
                Method::GET,
                "/v1beta/tunedModels/t1/operations/o1",
                "tunedModels/t1",
            ),
            (
                Method::POST,
                "/v1beta/tunedModels/t1:generateContent",
                "tunedModels/t1",
            ),
            (
                Method::POST,
                "/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore",
                "fileSearchStores/s1",
            ),
            (
                Method::GET,
                "/v1beta/fileSearchStores/s1/documents/d1",
                "fileSearchStores/s1",
            ),
            (Method::GET, "/v1beta/corpora/c1", "corpora/c1"),
            (Method::GET, "/v1beta/interactions/i1", "interactions/i1"),
            (
                Method::GET,
                "/v1beta/generatedFiles/g1",
                "generatedFiles/g1",
            ),
            (
                Method::GET,
                "/download/v1beta/files/f1:download?alt=media",
                "files/f1",
            ),
            (
                Method::GET,
                "/v1beta/openai/batches/batches/b2",
                "batches/b2",
            ),
            (
                Method::GET,
                "/v1beta/openai/batches/batches%2Fb2",
                "batches/b2",
            ),
            (
                Method::GET,
                "/v1beta/openai/files/files%2Ff2/content",
                "files/f2",
            ),
        ] {
            assert_eq!(names(&req(method, uri, "")), [want], "{uri}");
        }
        let r = req(
            Method::POST,
            "/v1beta/models/m:batchGenerateContent",
            r#"{"batch":{"inputConfig":{"fileName":"files/in1"}}}"#,
        );
        assert_eq!(names(&r), ["files/in1"]);
        let r = req(
            Method::POST,
            "/v1beta/models/m:generateContent",
            r#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s1","fileSearchStores/s2"]}}]}"#,
        );
        assert_eq!(names(&r), ["fileSearchStores/s1", "fileSearchStores/s2"]);
        let r = req(
            Method::POST,
            "/v1beta/interactions",
            r#"{"input":"hi","previous_interaction_id" : "i9"}"#,
        );
        assert_eq!(names(&r), ["interactions/i9"]);
        let r = req(
            Method::POST,
            "/v1beta/models/m:generateContent",
            r#"{"a":"corpora/c1","b":"generatedFiles/g1","c":"tunedModels/t1","d":"batches/b1","e":"see /files/ and s/"}"#,
        );
        assert_eq!(
            names(&r),
            [
                "generatedFiles/g1",
                "tunedModels/t1",
                "batches/b1",
                "corpora/c1"
            ]
        );
        // An upload's bytes are never read as JSON.
        let r = req(Method::POST, "/upload/v1beta/files", r#""files/x""#);
        assert!(names(&r).is_empty());
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
        for path in [
            "/v1beta/cachedContents",
            "/v1beta/models/m:batchGenerateContent",
            "/v1beta/models/veo:predictLongRunning",
            "/v1beta/tunedModels",
            "/v1beta/fileSearchStores",
            "/v1beta/fileSearchStores/s:importFile",
            "/v1beta/interactions",
            "/v1beta/openai/batches",
        ] {
            assert_eq!(
                creates(&req(Method::POST, path, "")),
                Some(Creates::Resource)
            );
        }
        assert_eq!(creates(&req(Method::GET, "/v1beta/files", "")), None);
        assert_eq!(
            creates(&req(Method::POST, "/v1beta/models/m:generateContent", "")),
            None
        );
    }

    #[test]
    fn reads_created_names() {
        let names = |b: &str| created_names(b.as_bytes(), false);
        assert_eq!(names(r#"{"file":{"name":"files/abc"}}"#), ["files/abc"]);
        assert_eq!(
            names(r#"{"name":"cachedContents/x"}"#),
            ["cachedContents/x"]
        );
        assert_eq!(
            names(r#"{"name":"batches/b1","metadata":{}}"#),
            ["batches/b1"]
        );
        assert_eq!(
            names(
                r#"{"name":"tunedModels/t/operations/o","metadata":{"tunedModel":"tunedModels/t"}}"#
            ),
            ["tunedModels/t"]
        );
        assert_eq!(
            names(r#"{"name":"models/veo/operations/o1"}"#),
            ["models/veo/operations/o1"]
        );
        assert_eq!(
            names(r#"{"id":"batches/b2","object":"batch"}"#),
            ["batches/b2"]
        );
        assert!(names(r#"{"name":"operations/1"}"#).is_empty());
        assert_eq!(created_names(br#"{"id":"i1"}"#, true), ["interactions/i1"]);
    }
}

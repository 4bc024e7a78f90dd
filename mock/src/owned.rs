//! The key-owned resources beyond files and cached contents: batches, long-running model
//! operations (Veo's `:predictLongRunning`, with the video to download), tuned models and
//! file search stores. Each belongs to the key that created it, as at Google: another key gets
//! 403 `PERMISSION_DENIED` for it (in a path, or named in a request body), an unknown name 404.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::canned;
use crate::clock::rfc3339;
use crate::reply;
use crate::resources::ResourceRequest;
use crate::shared::Shared;

/// How many polls a long-running operation (a video, a tuning) takes to finish.
const POLLS_TO_FINISH: u32 = 3;
/// The bytes of every generated video: big enough to arrive in several frames.
const VIDEO_BYTES: usize = 256 * 1024;
/// How many polls a batch takes to succeed (more than a test that cancels it polls).
const BATCH_POLLS_TO_FINISH: u32 = 25;
/// The bytes of a batch's results file.
const RESULTS_BYTES: usize = 4096;

/// Every owned resource of one mock, by name (`batches/x`, `models/m/operations/x`, …).
#[derive(Default)]
pub(crate) struct Owned {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    owner: String,
    json: Value,
    polls: u32,
}

/// Whether the mock serves `method path` here; the API version when it does.
pub(crate) fn target<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    let (version, rest) = split(path)?;
    if let Some(batches) = rest.strip_prefix("openai/batches") {
        let ok = match *method {
            Method::POST => batches.is_empty() || batches.ends_with("/cancel"),
            Method::GET => batches.starts_with('/'),
            _ => false,
        };
        return ok.then_some(version);
    }
    let claimed = match *method {
        Method::POST => {
            rest.ends_with(":predictLongRunning")
                || rest.ends_with(":asyncBatchEmbedContent")
                || rest.starts_with("batches/") && rest.ends_with(":cancel")
                || rest == "tunedModels"
                || rest.starts_with("tunedModels/") && rest.ends_with(":generateContent")
                || rest == "interactions"
                || rest == "fileSearchStores"
                || rest.starts_with("fileSearchStores/")
                    && (rest.ends_with(":uploadToFileSearchStore") || rest.ends_with(":importFile"))
        }
        Method::GET => {
            rest.contains("/operations/")
                || rest.ends_with(":download")
                || ["batches", "tunedModels", "fileSearchStores"]
                    .iter()
                    .any(|c| rest == *c || rest.starts_with(&format!("{c}/")))
                || rest.starts_with("interactions/")
        }
        Method::DELETE => [
            "batches/",
            "tunedModels/",
            "fileSearchStores/",
            "interactions/",
        ]
        .iter()
        .any(|c| rest.starts_with(c)),
        _ => false,
    };
    claimed.then_some(version)
}

/// `(version, what follows it)` of an API, upload or download path.
fn split(path: &str) -> Option<(&str, &str)> {
    let path = path.strip_prefix('/')?;
    let path = path
        .strip_prefix("upload/")
        .or_else(|| path.strip_prefix("download/"))
        .unwrap_or(path);
    let (version, rest) = path.split_once('/')?;
    ["v1", "v1beta", "v1alpha"]
        .contains(&version)
        .then_some((version, rest))
}

impl Owned {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, name: &str, owner: &str, json: Value) {
        self.lock().insert(
            name.to_owned(),
            Entry {
                owner: owner.to_owned(),
                json,
                polls: 0,
            },
        );
    }

    /// Records a created resource (a batch's creation answer) as `key`'s.
    pub(crate) fn adopt(&self, key: &str, answer: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(answer)
            && let Some(name) = v["name"].as_str().map(str::to_owned)
        {
            self.insert(&name, key, v);
        }
    }

    /// Runs `f` on `name` when `key` owns it; the refusal Google gives otherwise.
    fn with<T>(
        &self,
        name: &str,
        key: &str,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, Box<Response<MockBody>>> {
        let mut entries = self.lock();
        match entries.get_mut(name) {
            Some(e) if e.owner == key => Ok(f(e)),
            Some(_) => Err(Box::new(denied(name))),
            None => Err(Box::new(reply::not_found(
                "Requested entity was not found.",
            ))),
        }
    }

    fn list(&self, key: &str, prefix: &str, field: &str) -> Response<MockBody> {
        let entries = self.lock();
        let mut items: Vec<&Value> = entries
            .iter()
            .filter(|(name, e)| {
                e.owner == key && name.starts_with(prefix) && !name[prefix.len()..].contains('/')
            })
            .map(|(_, e)| &e.json)
            .collect();
        items.sort_by_key(|v| v["name"].as_str().map(str::to_owned));
        if items.is_empty() {
            return reply::ok(Bytes::from_static(b"{}"));
        }
        reply::ok(reply::pretty(&json!({ field: items })))
    }
}

/// A resource of another key named in a request body — a store in `fileSearchStoreNames`, a
/// tuned model, a batch, or a file (`fileData.fileUri`, a batch's `inputConfig.fileName`) —
/// if any: Google refuses the request.
pub(crate) fn foreign_reference(shared: &Shared, key: &str, body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let name_at = |at: usize| {
        let name = &text[at..];
        let end = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_')))
            .unwrap_or(name.len());
        &name[..end]
    };
    let files = text
        .match_indices("/files/")
        .chain(text.match_indices("\"files/"))
        .map(|(at, _)| name_at(at + 1))
        .find(|name| {
            let id = name.trim_start_matches("files/");
            shared
                .resources
                .file_owner(id)
                .is_some_and(|owner| owner != key)
        });
    if files.is_some() {
        return files.map(str::to_owned);
    }
    let entries = shared.owned.lock();
    ["\"fileSearchStores/", "\"tunedModels/", "\"batches/"]
        .iter()
        .flat_map(|needle| text.match_indices(needle))
        .map(|(at, _)| name_at(at + 1))
        .find(|name| entries.get(*name).is_some_and(|e| e.owner != key))
        .map(str::to_owned)
}

fn denied(name: &str) -> Response<MockBody> {
    reply::permission_denied(&format!(
        "You do not have permission to access {name} or it may not exist."
    ))
}

/// Answers a request [`target`] claimed.
pub(crate) fn respond(
    shared: &Shared,
    method: &Method,
    path: &str,
    req: &ResourceRequest<'_>,
) -> Response<MockBody> {
    let owned = &shared.owned;
    let key = req.key;
    let Some((version, rest)) = split(path) else {
        return reply::not_found("Requested entity was not found.");
    };
    if let Some(batches) = rest.strip_prefix("openai/batches") {
        return openai_batch(shared, method, batches, req);
    }
    let result = match (method.clone(), rest) {
        (Method::POST, r) if r.ends_with(":predictLongRunning") => {
            let model = r.trim_end_matches(":predictLongRunning");
            let name = format!("{model}/operations/{}", shared.new_id());
            let op = json!({ "name": name, "done": false });
            owned.insert(&name, key, op.clone());
            Ok(op)
        }
        (Method::POST, r) if r.ends_with(":asyncBatchEmbedContent") => {
            let model = r.trim_end_matches(":asyncBatchEmbedContent");
            let model = model.strip_prefix("models/").unwrap_or(model);
            let now = rfc3339(std::time::SystemTime::now());
            let batch: Value =
                serde_json::from_slice(&canned::batch_generate(model, &shared.new_id(), "embed", 0, &now))
                    .unwrap_or_default();
            owned.insert(batch["name"].as_str().unwrap_or_default(), key, batch.clone());
            Ok(batch)
        }
        (Method::GET, r) if r.ends_with(":download") => {
            let name = r.trim_end_matches(":download");
            let found = owned.with(name, key, |e| {
                let len = e.json["bytes"].as_u64()?;
                let kind = e.json["type"].as_str().unwrap_or("video/mp4");
                Some((len, http::HeaderValue::from_str(kind).ok()?))
            });
            return match found {
                Ok(Some((len, kind))) => reply::with_type(
                    StatusCode::OK,
                    kind,
                    MockBody::full(Bytes::from(vec![b'v'; len as usize])),
                ),
                Ok(None) => reply::not_found("Requested entity was not found."),
                Err(refused) => *refused,
            };
        }
        (Method::GET, r) if r.starts_with("models/") => owned
            .with(r, key, |e| {
                e.polls += 1;
                let finishes = e.polls >= POLLS_TO_FINISH && e.json["done"] == false;
                let file = finishes.then(|| format!("files/{}", shared.new_id()));
                if let Some(file) = &file {
                    // Google's video URI carries the API key.
                    let uri = format!(
                        "{}/download/{version}/{file}:download?alt=media&key={key}",
                        shared.base_url
                    );
                    e.json["done"] = json!(true);
                    e.json["response"] = json!({
                        "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                        "generateVideoResponse": { "generatedSamples": [{ "video": { "uri": uri } }] }
                    });
                }
                (e.json.clone(), file)
            })
            .map(|(op, file)| {
                // The video lives on the key that made it.
                if let Some(file) = file {
                    owned.insert(&file, key, json!({ "name": file, "bytes": VIDEO_BYTES }));
                }
                op
            }),
        (Method::GET, "batches") => return owned.list(key, "batches/", "operations"),
        (Method::GET, r) if r.starts_with("batches/") => owned
            .with(r, key, |e| {
                e.polls += 1;
                let state = &mut e.json["metadata"]["state"];
                if *state == "BATCH_STATE_PENDING" {
                    *state = json!("BATCH_STATE_RUNNING");
                }
                let finishes = *state == "BATCH_STATE_RUNNING" && e.polls >= BATCH_POLLS_TO_FINISH;
                let file = finishes.then(|| format!("files/{}", shared.new_id()));
                if let Some(file) = &file {
                    *state = json!("BATCH_STATE_SUCCEEDED");
                    e.json["done"] = json!(true);
                    e.json["response"] = json!({
                        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                        "responsesFile": file,
                    });
                }
                (e.json.clone(), file)
            })
            .map(|(batch, file)| {
                // The results live on the batch's key.
                if let Some(file) = file {
                    owned.insert(&file, key, json!({ "name": file, "bytes": RESULTS_BYTES, "type": "application/jsonl" }));
                }
                batch
            }),
        (Method::POST, r) if r.starts_with("batches/") => {
            let name = r.trim_end_matches(":cancel");
            owned.with(name, key, |e| {
                e.json["metadata"]["state"] = json!("BATCH_STATE_CANCELLED");
                e.json["done"] = json!(true);
                json!({})
            })
        }
        (Method::POST, "tunedModels") => {
            let id = shared.new_id();
            let model = format!("tunedModels/{id}");
            let op_name = format!("{model}/operations/{}", shared.new_id());
            let request: Value = serde_json::from_slice(req.body).unwrap_or_default();
            owned.insert(
                &model,
                key,
                json!({ "name": model, "baseModel": request["baseModel"], "state": "CREATING" }),
            );
            let op = json!({ "name": op_name, "metadata": { "tunedModel": model }, "done": false });
            owned.insert(&op_name, key, op.clone());
            Ok(op)
        }
        (Method::GET, "tunedModels") => return owned.list(key, "tunedModels/", "tunedModels"),
        (Method::GET, r) if r.starts_with("tunedModels/") && r.contains("/operations/") => {
            let model = r.split("/operations/").next().unwrap_or_default().to_owned();
            owned
                .with(r, key, |e| {
                    e.polls += 1;
                    if e.polls >= POLLS_TO_FINISH {
                        e.json["done"] = json!(true);
                    }
                    e.json.clone()
                })
                .inspect(|op| {
                    if op["done"] == true {
                        let _ = owned.with(&model, key, |m| m.json["state"] = json!("ACTIVE"));
                    }
                })
        }
        (Method::POST, r) if r.starts_with("tunedModels/") => {
            let model = r.trim_end_matches(":generateContent");
            return match owned.with(model, key, |e| e.json["state"] == "ACTIVE") {
                Ok(true) => reply::ok(shared.canned.for_model(model).generate.clone()),
                Ok(false) => reply::error(
                    StatusCode::BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    "The tuned model is not ready yet.",
                ),
                Err(refused) => *refused,
            };
        }
        (Method::POST, "interactions") => {
            let request: Value = serde_json::from_slice(req.body).unwrap_or_default();
            // A conversation continues only on the key that holds its previous turn.
            if let Some(previous) = request["previous_interaction_id"].as_str()
                && let Err(refused) = owned.with(&format!("interactions/{previous}"), key, |_| ())
            {
                return *refused;
            }
            let id = shared.new_id();
            let interaction = json!({
                "id": id,
                "model": request["model"],
                "status": "completed",
                "previous_interaction_id": request["previous_interaction_id"],
                "outputs": [{ "type": "text", "text": "Hello from the mock." }],
            });
            owned.insert(&format!("interactions/{id}"), key, interaction.clone());
            Ok(interaction)
        }
        (Method::GET, r) if r.starts_with("interactions/") => {
            owned.with(r, key, |e| e.json.clone())
        }
        (Method::POST, "fileSearchStores") => {
            let name = format!("fileSearchStores/{}", shared.new_id());
            let request: Value = serde_json::from_slice(req.body).unwrap_or_default();
            let store = json!({ "name": name, "displayName": request["displayName"], "activeDocumentsCount": "0" });
            owned.insert(&name, key, store.clone());
            Ok(store)
        }
        (Method::GET, "fileSearchStores") => {
            return owned.list(key, "fileSearchStores/", "fileSearchStores");
        }
        (Method::POST, r) if r.starts_with("fileSearchStores/") => {
            let (store, verb) = r.split_once(':').unwrap_or((r, ""));
            let store = store.to_owned();
            owned
                .with(&store, key, |e| {
                    let n = e.json["activeDocumentsCount"]
                        .as_str()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    e.json["activeDocumentsCount"] = json!((n + 1).to_string());
                })
                .map(|()| {
                    let kind = if verb == "uploadToFileSearchStore" {
                        "upload/operations"
                    } else {
                        "operations"
                    };
                    let name = format!("{store}/{kind}/{}", shared.new_id());
                    let doc = format!("{store}/documents/{}", shared.new_id());
                    let op = json!({ "name": name, "done": true, "response": { "documentName": doc } });
                    owned.insert(&name, key, op.clone());
                    op
                })
        }
        (Method::GET, r) if r.starts_with("fileSearchStores/") => {
            owned.with(r, key, |e| e.json.clone())
        }
        (Method::DELETE, r) => {
            let removed = owned.with(r, key, |_| ());
            if removed.is_ok() {
                owned.lock().remove(r);
            }
            removed.map(|()| json!({}))
        }
        _ => return reply::not_found("Requested entity was not found."),
    };
    match result {
        Ok(v) => reply::ok(reply::pretty(&v)),
        Err(refused) => *refused,
    }
}

/// The OpenAI-compatible batches: `POST openai/batches`, `GET openai/batches/{id}`, `POST
/// openai/batches/{id}/cancel`. Ids are Google's names (`batches/x`), percent-encoded in the path
/// by the OpenAI SDK.
fn openai_batch(
    shared: &Shared,
    method: &Method,
    rest: &str,
    req: &ResourceRequest<'_>,
) -> Response<MockBody> {
    let owned = &shared.owned;
    let key = req.key;
    if rest.is_empty() {
        let request: Value = serde_json::from_slice(req.body).unwrap_or_default();
        let id = format!("batches/{}", shared.new_id());
        let batch = json!({
            "id": id,
            "object": "batch",
            "endpoint": request["endpoint"],
            "input_file_id": request["input_file_id"],
            "completion_window": request["completion_window"],
            "status": "validating",
        });
        owned.insert(&id, key, batch.clone());
        return reply::ok(reply::pretty(&batch));
    }
    let id = crate::url::percent_decode(rest.trim_start_matches('/'));
    let (id, cancel) = match id.strip_suffix("/cancel") {
        Some(id) => (id.to_owned(), *method == Method::POST),
        None => (id, false),
    };
    let result = owned.with(&id, key, |e| {
        e.json["status"] = json!(if cancel { "cancelled" } else { "in_progress" });
        e.json.clone()
    });
    match result {
        Ok(v) => reply::ok(reply::pretty(&v)),
        Err(refused) => *refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_naming_another_keys_resource_is_refused() {
        let shared = Shared::new("http://mock".into(), crate::MockOptions::default());
        shared.owned.insert(
            "fileSearchStores/s1",
            "k1",
            json!({ "name": "fileSearchStores/s1" }),
        );
        let body =
            br#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s1"]}}]}"#;
        assert_eq!(foreign_reference(&shared, "k1", body), None);
        assert_eq!(
            foreign_reference(&shared, "k2", body).as_deref(),
            Some("fileSearchStores/s1")
        );
        assert_eq!(
            foreign_reference(&shared, "k2", br#"{"x":"files/none"}"#),
            None
        );
    }

    #[test]
    fn claims_only_owned_resources() {
        for (method, path) in [
            (Method::POST, "/v1beta/models/veo-3.0:predictLongRunning"),
            (Method::GET, "/v1beta/models/veo-3.0/operations/o1"),
            (Method::GET, "/v1beta/batches"),
            (Method::POST, "/v1beta/batches/b1:cancel"),
            (Method::DELETE, "/v1beta/batches/b1"),
            (Method::POST, "/v1beta/tunedModels"),
            (Method::POST, "/v1beta/tunedModels/t:generateContent"),
            (
                Method::POST,
                "/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore",
            ),
            (Method::GET, "/download/v1beta/files/f:download"),
            (Method::POST, "/v1beta/openai/batches"),
            (Method::GET, "/v1beta/openai/batches/batches%2Fb"),
            (Method::POST, "/v1beta/openai/batches/batches%2Fb/cancel"),
        ] {
            assert!(target(&method, path).is_some(), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/v1beta/models/m:generateContent"),
            (Method::GET, "/v1beta/files/f"),
            (Method::POST, "/v1beta/cachedContents"),
        ] {
            assert!(target(&method, path).is_none(), "{method} {path}");
        }
    }
}

//! Which Vertex AI method a Developer API request becomes, and the body fix-ups on the way:
//! `contents` without a `role` get `"user"` (Vertex refuses them), `countTokens`' wrapped
//! `generateContentRequest` is unwrapped, `batchEmbedContents` becomes `:predict` (and its
//! answer comes back in `batchEmbedContents`' shape), the OpenAI body's model gets Vertex's
//! `google/` publisher prefix. A body that needs no fix-up is sent byte for byte.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::route::{Route, RouteLabel};

/// The Vertex call for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    /// `models/{m}:{method}` with the same method name (generate, stream, countTokens, embed).
    Model { model: String, method: &'static str },
    /// `models/{m}:batchEmbedContents` → `models/{m}:predict`.
    BatchEmbed { model: String },
    /// `openai/chat/completions` → `endpoints/openapi/chat/completions`.
    OpenAiChat,
}

/// What an answer needs on its way back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Vertex's answer is the Developer API's.
    AsIs,
    /// `:predict`'s `predictions` become `batchEmbedContents`' `embeddings`.
    PredictToBatchEmbed,
}

impl Call {
    /// The call for a request, from its route and path; 400 for one Vertex has no equivalent of.
    pub(super) fn of(route: &Route, path: &str) -> Result<Call, GatewayError> {
        if route.label == RouteLabel::OpenAiChat {
            return Ok(Call::OpenAiChat);
        }
        let model = route
            .model
            .as_deref()
            .map(str::to_owned)
            .ok_or(GatewayError::Internal(
                "a Vertex AI request without a model",
            ))?;
        let method = path.rsplit_once(':').map_or("", |(_, m)| m);
        let method = match method {
            "generateContent" => "generateContent",
            "streamGenerateContent" => "streamGenerateContent",
            "countTokens" => "countTokens",
            "embedContent" => "embedContent",
            "batchEmbedContents" => return Ok(Call::BatchEmbed { model }),
            _ => {
                return Err(GatewayError::InvalidArgument(format!(
                    "models/{model}:{method} has no Vertex AI equivalent"
                )));
            }
        };
        Ok(Call::Model { model, method })
    }

    /// The path after `/v1/projects/{p}/locations/{l}/` (or `/v1/` in express mode).
    pub(super) fn path_after_scope(&self) -> String {
        match self {
            Call::Model { model, method } => format!("publishers/google/models/{model}:{method}"),
            Call::BatchEmbed { model } => format!("publishers/google/models/{model}:predict"),
            Call::OpenAiChat => "endpoints/openapi/chat/completions".to_owned(),
        }
    }

    /// The body Vertex gets, and what its answer needs.
    pub(super) fn body(&self, body: Bytes) -> Result<(Bytes, Answer), GatewayError> {
        match self {
            Call::Model { method, .. } => {
                let fixed = match *method {
                    "generateContent" | "streamGenerateContent" => fix_generate(&body),
                    "countTokens" => fix_count_tokens(&body),
                    _ => None,
                };
                Ok((fixed.unwrap_or(body), Answer::AsIs))
            }
            Call::BatchEmbed { .. } => {
                Ok((batch_embed_to_predict(&body)?, Answer::PredictToBatchEmbed))
            }
            Call::OpenAiChat => Ok((fix_openai_model(&body).unwrap_or(body), Answer::AsIs)),
        }
    }
}

fn object(body: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice(body).ok()
}

fn to_bytes(object: &Map<String, Value>) -> Option<Bytes> {
    serde_json::to_vec(object).ok().map(Bytes::from)
}

/// Gives every entry of `contents` without a role the role `"user"`; true when one changed.
fn fill_roles(contents: Option<&mut Value>) -> bool {
    let Some(Value::Array(items)) = contents else {
        return false;
    };
    let mut changed = false;
    for item in items {
        if let Value::Object(content) = item
            && content
                .get("role")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            content.insert("role".into(), Value::from("user"));
            changed = true;
        }
    }
    changed
}

/// A generate body with its roles filled, or `None` when it needs nothing (or is no JSON object:
/// Vertex says what is wrong with it).
fn fix_generate(body: &[u8]) -> Option<Bytes> {
    let mut object = object(body)?;
    // A Developer API body may name its model; Vertex takes it from the path.
    let mut changed = object.remove("model").is_some();
    changed |= fill_roles(object.get_mut("contents"));
    changed.then(|| to_bytes(&object)).flatten()
}

/// A countTokens body as Vertex takes it: `generateContentRequest`'s fields unwrapped (Vertex has
/// `contents`, `systemInstruction`, `tools` and `generationConfig` at the top), roles filled.
fn fix_count_tokens(body: &[u8]) -> Option<Bytes> {
    let mut object = object(body)?;
    let mut changed = false;
    if let Some(Value::Object(inner)) = object.remove("generateContentRequest") {
        changed = true;
        for field in ["contents", "systemInstruction", "tools", "generationConfig"] {
            if let Some(v) = inner.get(field) {
                object.insert(field.into(), v.clone());
            }
        }
    }
    changed |= fill_roles(object.get_mut("contents"));
    changed.then(|| to_bytes(&object)).flatten()
}

/// The OpenAI body with Vertex's model name: `google/{model}`.
fn fix_openai_model(body: &[u8]) -> Option<Bytes> {
    let mut object = object(body)?;
    let model = object.get("model")?.as_str()?;
    if model.contains('/') && !model.starts_with("models/") {
        return None;
    }
    let model = format!("google/{}", model.strip_prefix("models/").unwrap_or(model));
    object.insert("model".into(), Value::from(model));
    to_bytes(&object)
}

/// `batchEmbedContents`' `requests` as `:predict` `instances` (text embedding models take one
/// text per instance); 400 for a request Vertex has no equivalent of (non-text parts).
fn batch_embed_to_predict(body: &[u8]) -> Result<Bytes, GatewayError> {
    let bad = |msg: &str| GatewayError::InvalidArgument(msg.to_owned());
    let object = object(body).ok_or_else(|| bad("Invalid JSON payload received."))?;
    let requests = object
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("batchEmbedContents needs \"requests\"."))?;
    let mut instances = Vec::with_capacity(requests.len());
    let mut dimensionality = None;
    for request in requests {
        let parts = request["content"]["parts"]
            .as_array()
            .ok_or_else(|| bad("every request of batchEmbedContents needs content.parts."))?;
        let mut text = String::new();
        for part in parts {
            match part.as_object().map(|p| (p.len(), p.get("text"))) {
                Some((1, Some(Value::String(t)))) => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(t);
                }
                _ => {
                    return Err(bad(
                        "batchEmbedContents with parts other than text has no Vertex AI equivalent; \
                         send it to an AI Studio key, or use embedContent",
                    ));
                }
            }
        }
        let mut instance = Map::new();
        instance.insert("content".into(), Value::from(text));
        if let Some(task) = request.get("taskType") {
            instance.insert("task_type".into(), task.clone());
        }
        if let Some(title) = request.get("title") {
            instance.insert("title".into(), title.clone());
        }
        if let Some(d) = request.get("outputDimensionality") {
            dimensionality = Some(d.clone());
        }
        instances.push(Value::Object(instance));
    }
    let mut predict = json!({ "instances": instances });
    if let Some(d) = dimensionality {
        predict["parameters"] = json!({ "outputDimensionality": d });
    }
    serde_json::to_vec(&predict)
        .map(Bytes::from)
        .map_err(|_| GatewayError::Internal("cannot write the predict body"))
}

/// `:predict`'s answer in `batchEmbedContents`' shape, or `None` when it has no predictions (an
/// error answer: passed through as it is).
pub fn predict_to_batch_embed(answer: &[u8]) -> Option<Bytes> {
    let object = object(answer)?;
    let predictions = object.get("predictions")?.as_array()?;
    let embeddings: Vec<Value> = predictions
        .iter()
        .map(|p| json!({ "values": p["embeddings"]["values"].clone() }))
        .collect();
    serde_json::to_vec(&json!({ "embeddings": embeddings }))
        .ok()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        Route::classify(path).unwrap()
    }

    fn json_of(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn each_model_method_maps_to_the_publisher_path() {
        for method in [
            "generateContent",
            "streamGenerateContent",
            "countTokens",
            "embedContent",
        ] {
            let path = format!("/v1beta/models/gemini-2.5-flash:{method}");
            let call = Call::of(&route(&path), &path).unwrap();
            assert_eq!(
                call.path_after_scope(),
                format!("publishers/google/models/gemini-2.5-flash:{method}")
            );
        }
        let path = "/v1/models/text-embedding-005:batchEmbedContents";
        let call = Call::of(&route(path), path).unwrap();
        assert_eq!(
            call.path_after_scope(),
            "publishers/google/models/text-embedding-005:predict"
        );
    }

    #[test]
    fn contents_without_a_role_become_the_users_and_others_are_kept() {
        let body =
            br#"{"contents":[{"parts":[{"text":"hi"}]},{"role":"model","parts":[{"text":"yo"}]}]}"#;
        let out = json_of(&fix_generate(body).unwrap());
        assert_eq!(out["contents"][0]["role"], "user");
        assert_eq!(out["contents"][1]["role"], "model");
        assert!(fix_generate(br#"{"contents":[{"role":"user","parts":[]}]}"#).is_none());
    }

    #[test]
    fn count_tokens_unwraps_the_generate_request() {
        let body = br#"{"generateContentRequest":{"model":"models/m","contents":[{"parts":[{"text":"a"}]}],"systemInstruction":{"parts":[{"text":"s"}]}}}"#;
        let out = json_of(&fix_count_tokens(body).unwrap());
        assert!(out.get("generateContentRequest").is_none());
        assert_eq!(out["contents"][0]["role"], "user");
        assert_eq!(out["systemInstruction"]["parts"][0]["text"], "s");
    }

    #[test]
    fn batch_embed_becomes_predict_and_back() {
        let body = br#"{"requests":[{"model":"models/e","content":{"parts":[{"text":"a"}]},"taskType":"RETRIEVAL_QUERY","outputDimensionality":8},{"model":"models/e","content":{"parts":[{"text":"b"}]}}]}"#;
        let out = json_of(&batch_embed_to_predict(body).unwrap());
        assert_eq!(
            out["instances"][0],
            json!({"content":"a","task_type":"RETRIEVAL_QUERY"})
        );
        assert_eq!(out["instances"][1], json!({"content":"b"}));
        assert_eq!(out["parameters"]["outputDimensionality"], 8);
        let answer = br#"{"predictions":[{"embeddings":{"values":[0.1],"statistics":{"token_count":1}}},{"embeddings":{"values":[0.2]}}]}"#;
        let back = json_of(&predict_to_batch_embed(answer).unwrap());
        assert_eq!(
            back,
            json!({"embeddings":[{"values":[0.1]},{"values":[0.2]}]})
        );
        let image = br#"{"requests":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"AA=="}}]}}]}"#;
        assert!(matches!(
            batch_embed_to_predict(image),
            Err(GatewayError::InvalidArgument(m)) if m.contains("no Vertex AI equivalent")
        ));
    }

    #[test]
    fn the_openai_model_gets_the_publisher_prefix() {
        let out =
            json_of(&fix_openai_model(br#"{"model":"gemini-2.5-flash","messages":[]}"#).unwrap());
        assert_eq!(out["model"], "google/gemini-2.5-flash");
        assert!(fix_openai_model(br#"{"model":"google/gemini-2.5-flash"}"#).is_none());
    }
}

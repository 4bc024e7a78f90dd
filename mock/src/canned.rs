//! Answers built once and served as `Bytes` clones: the hot path only looks them up.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::reply::{compact, pretty};
use crate::{CANDIDATES_TOKEN_COUNT, PROMPT_TOKEN_COUNT, THOUGHTS_TOKEN_COUNT, TOTAL_TOKEN_COUNT};

/// A model the mock lists.
struct ModelInfo<'a> {
    id: &'a str,
    display_name: &'a str,
    description: &'a str,
    input_token_limit: u64,
    output_token_limit: u64,
    methods: &'a [&'a str],
}

const GENERATE_METHODS: &[&str] = &[
    "generateContent",
    "countTokens",
    "createCachedContent",
    "batchGenerateContent",
];

const MODELS: &[ModelInfo<'static>] = &[
    ModelInfo {
        id: "gemini-2.5-pro",
        display_name: "Gemini 2.5 Pro",
        description: "Stable release (June 17th, 2025) of Gemini 2.5 Pro",
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        methods: GENERATE_METHODS,
    },
    ModelInfo {
        id: "gemini-2.5-flash",
        display_name: "Gemini 2.5 Flash",
        description: "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that supports up to 1 million tokens, released in June of 2025.",
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        methods: GENERATE_METHODS,
    },
    ModelInfo {
        id: "gemini-2.5-flash-lite",
        display_name: "Gemini 2.5 Flash-Lite",
        description: "Stable version of Gemini 2.5 Flash-Lite, released in July of 2025",
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        methods: GENERATE_METHODS,
    },
    ModelInfo {
        id: "gemini-embedding-001",
        display_name: "Gemini Embedding 001",
        description: "Obtain a distributed representation of a text.",
        input_token_limit: 2048,
        output_token_limit: 1,
        methods: &["embedContent", "batchEmbedContents", "countTokens"],
    },
];

/// The vector every embedding answer carries.
const EMBEDDING: [f64; 8] = [
    0.0125, -0.0271, 0.0089, 0.0441, -0.0032, 0.0176, -0.0359, 0.0208,
];

/// `created` of OpenAI-shaped answers: a fixed instant keeps answers byte-identical.
const OPENAI_CREATED: u64 = 1_735_689_600;

/// Models with more distinct names than this are built per request instead of cached.
const MAX_CACHED_MODELS: usize = 1024;

/// Every answer that does not depend on the request, built at start or on a model's first use.
pub(crate) struct Canned {
    chunks: usize,
    pub(crate) models_list: Bytes,
    pub(crate) openai_models: Bytes,
    pub(crate) count_tokens: Bytes,
    pub(crate) embed_content: Bytes,
    per_model: RwLock<HashMap<String, Arc<ModelAnswers>>>,
}

/// The answers for one model.
pub(crate) struct ModelAnswers {
    /// `GET /{v}/models/{m}`.
    pub(crate) model: Bytes,
    /// `:generateContent`.
    pub(crate) generate: Bytes,
    /// `GET /{v}/openai/models/{m}`.
    pub(crate) openai_model: Bytes,
    /// Non-streamed `chat/completions`.
    pub(crate) openai_chat: Bytes,
    /// Streams with the default number of events.
    pub(crate) streams: StreamEvents,
}

/// The events of a streamed answer, one body frame each, in the three wire formats.
#[derive(Clone)]
pub(crate) struct StreamEvents {
    /// `:streamGenerateContent?alt=sse`: `data: <json>\r\n\r\n`.
    pub(crate) sse: Arc<[Bytes]>,
    /// `:streamGenerateContent`: `[` + obj, `,\r\n` + obj, …, the last ending `]`.
    pub(crate) json_array: Arc<[Bytes]>,
    /// OpenAI `chat/completions` with `"stream": true`: `data: <chunk>\n\n`, the last followed by `data: [DONE]`.
    pub(crate) openai_sse: Arc<[Bytes]>,
}

impl Canned {
    pub(crate) fn new(chunks: usize) -> Self {
        let models: Vec<Value> = MODELS.iter().map(model_json).collect();
        let openai_models: Vec<Value> = MODELS.iter().map(|m| openai_model_json(m.id)).collect();
        Canned {
            chunks: chunks.max(1),
            models_list: pretty(&json!({ "models": models })),
            openai_models: pretty(&json!({ "object": "list", "data": openai_models })),
            count_tokens: pretty(&json!({
                "totalTokens": PROMPT_TOKEN_COUNT,
                "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": PROMPT_TOKEN_COUNT }],
            })),
            embed_content: pretty(&json!({ "embedding": { "values": EMBEDDING } })),
            per_model: RwLock::new(HashMap::new()),
        }
    }

    /// Events per streamed answer unless a request asks otherwise.
    pub(crate) fn chunks(&self) -> usize {
        self.chunks
    }

    /// The answers for `model`, built on its first use.
    pub(crate) fn for_model(&self, model: &str) -> Arc<ModelAnswers> {
        if let Some(answers) = self
            .per_model
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Arc::clone(answers);
        }
        let answers = Arc::new(ModelAnswers::build(model, self.chunks));
        let mut per_model = self
            .per_model
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if per_model.len() < MAX_CACHED_MODELS {
            per_model.insert(model.to_owned(), Arc::clone(&answers));
        }
        answers
    }
}

impl ModelAnswers {
    fn build(model: &str, chunks: usize) -> Self {
        let info = MODELS.iter().find(|m| m.id == model);
        let model_json = match info {
            Some(info) => model_json(info),
            None => model_json(&ModelInfo {
                id: model,
                display_name: model,
                description: "A model the mock does not list; served like the others.",
                input_token_limit: 1_048_576,
                output_token_limit: 65_536,
                methods: GENERATE_METHODS,
            }),
        };
        let text = format!("Hello from gem-proxy-mock ({model}).");
        ModelAnswers {
            model: pretty(&model_json),
            generate: pretty(&generate_response(model, &text, true)),
            openai_model: pretty(&openai_model_json(model)),
            openai_chat: pretty(&json!({
                "choices": [{
                    "finish_reason": "stop",
                    "index": 0,
                    "message": { "content": text, "role": "assistant" },
                }],
                "created": OPENAI_CREATED,
                "id": response_id(model),
                "model": model,
                "object": "chat.completion",
                "usage": openai_usage(),
            })),
            streams: StreamEvents::build(model, chunks),
        }
    }
}

impl StreamEvents {
    /// The events of a `chunks`-event answer from `model` (at least one).
    pub(crate) fn build(model: &str, chunks: usize) -> Self {
        let chunks = chunks.max(1);
        let mut sse = Vec::with_capacity(chunks);
        let mut json_array = Vec::with_capacity(chunks);
        let mut openai_sse = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let last = i + 1 == chunks;
            let text = format!("Chunk {} of {chunks} from gem-proxy-mock. ", i + 1);
            let event = generate_response(model, &text, last);

            let mut frame = b"data: ".to_vec();
            frame.extend_from_slice(&compact(&event));
            frame.extend_from_slice(b"\r\n\r\n");
            sse.push(Bytes::from(frame));

            let mut frame = if i == 0 {
                b"[".to_vec()
            } else {
                b",\r\n".to_vec()
            };
            frame.extend_from_slice(&pretty(&event));
            frame.extend_from_slice(if last { b"\n]" } else { b"\n" });
            json_array.push(Bytes::from(frame));

            let mut chunk = json!({
                "choices": [{
                    "delta": { "content": text, "role": "assistant" },
                    "finish_reason": if last { json!("stop") } else { Value::Null },
                    "index": 0,
                }],
                "created": OPENAI_CREATED,
                "id": response_id(model),
                "model": model,
                "object": "chat.completion.chunk",
            });
            if last {
                chunk["usage"] = openai_usage();
            }
            let mut frame = b"data: ".to_vec();
            frame.extend_from_slice(&compact(&chunk));
            frame.extend_from_slice(if last {
                b"\n\ndata: [DONE]\n\n"
            } else {
                b"\n\n"
            });
            openai_sse.push(Bytes::from(frame));
        }
        StreamEvents {
            sse: sse.into(),
            json_array: json_array.into(),
            openai_sse: openai_sse.into(),
        }
    }
}

/// `{"embeddings": [...]}` with `count` vectors.
pub(crate) fn batch_embed(count: usize) -> Bytes {
    let embeddings: Vec<Value> = (0..count).map(|_| json!({ "values": EMBEDDING })).collect();
    pretty(&json!({ "embeddings": embeddings }))
}

/// An OpenAI `embeddings` answer with `count` vectors.
pub(crate) fn openai_embeddings(model: &str, count: usize) -> Bytes {
    let data: Vec<Value> = (0..count)
        .map(|index| json!({ "embedding": EMBEDDING, "index": index, "object": "embedding" }))
        .collect();
    pretty(&json!({
        "data": data,
        "model": model,
        "object": "list",
        "usage": { "prompt_tokens": PROMPT_TOKEN_COUNT, "total_tokens": PROMPT_TOKEN_COUNT },
    }))
}

/// `:batchGenerateContent`: the long-running operation Google starts for a batch.
pub(crate) fn batch_generate(
    model: &str,
    id: &str,
    display_name: &str,
    requests: usize,
    now: &str,
) -> Bytes {
    let name = format!("batches/{id}");
    pretty(&json!({
        "name": name,
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": format!("models/{model}"),
            "displayName": display_name,
            "createTime": now,
            "updateTime": now,
            "batchStats": { "requestCount": requests.to_string(), "pendingRequestCount": requests.to_string() },
            "state": "BATCH_STATE_PENDING",
            "name": name,
        },
    }))
}

/// A `GenerateContentResponse` with one candidate; `last` adds `finishReason` and full usage
/// (earlier stream events carry only the prompt's usage, as Google's do).
fn generate_response(model: &str, text: &str, last: bool) -> Value {
    let mut candidate =
        json!({ "content": { "parts": [{ "text": text }], "role": "model" }, "index": 0 });
    let usage = if last {
        candidate["finishReason"] = json!("STOP");
        json!({
            "promptTokenCount": PROMPT_TOKEN_COUNT,
            "candidatesTokenCount": CANDIDATES_TOKEN_COUNT,
            "totalTokenCount": TOTAL_TOKEN_COUNT,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": PROMPT_TOKEN_COUNT }],
            "thoughtsTokenCount": THOUGHTS_TOKEN_COUNT,
        })
    } else {
        json!({ "promptTokenCount": PROMPT_TOKEN_COUNT, "totalTokenCount": PROMPT_TOKEN_COUNT })
    };
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id(model),
    })
}

fn response_id(model: &str) -> String {
    // Stable per model so answers stay pre-built; real ids are opaque strings like this one.
    let hash = model.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("mock{hash:016x}")
}

fn openai_usage() -> Value {
    json!({
        "completion_tokens": CANDIDATES_TOKEN_COUNT + THOUGHTS_TOKEN_COUNT,
        "prompt_tokens": PROMPT_TOKEN_COUNT,
        "total_tokens": TOTAL_TOKEN_COUNT,
    })
}

fn model_json(info: &ModelInfo<'_>) -> Value {
    json!({
        "name": format!("models/{}", info.id),
        "version": "001",
        "displayName": info.display_name,
        "description": info.description,
        "inputTokenLimit": info.input_token_limit,
        "outputTokenLimit": info.output_token_limit,
        "supportedGenerationMethods": info.methods,
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2.0,
        "thinking": info.methods == GENERATE_METHODS,
    })
}

fn openai_model_json(id: &str) -> Value {
    json!({ "id": format!("models/{id}"), "object": "model", "created": OPENAI_CREATED, "owned_by": "google" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn json_array_events_concatenate_to_one_array() {
        for chunks in [1, 3] {
            let events = StreamEvents::build("m", chunks);
            let whole: Vec<u8> = events.json_array.iter().flat_map(|b| b.to_vec()).collect();
            let array = parse(&whole);
            assert_eq!(array.as_array().unwrap().len(), chunks);
            assert_eq!(array[chunks - 1]["candidates"][0]["finishReason"], "STOP");
        }
    }

    #[test]
    fn only_the_last_event_finishes() {
        let events = StreamEvents::build("m", 3);
        for (i, event) in events.sse.iter().enumerate() {
            let line = std::str::from_utf8(event).unwrap();
            let json = parse(
                line.strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\r\n\r\n")
                    .unwrap()
                    .as_bytes(),
            );
            assert_eq!(json["candidates"][0].get("finishReason").is_some(), i == 2);
            assert_eq!(
                json["usageMetadata"]["totalTokenCount"],
                if i == 2 {
                    TOTAL_TOKEN_COUNT
                } else {
                    PROMPT_TOKEN_COUNT
                }
            );
        }
        assert!(events.openai_sse[2].ends_with(b"\n\ndata: [DONE]\n\n"));
    }

    #[test]
    fn model_answers_are_cached() {
        let canned = Canned::new(3);
        assert!(Arc::ptr_eq(&canned.for_model("a"), &canned.for_model("a")));
        let generate = parse(&canned.for_model("gemini-2.5-pro").generate);
        assert_eq!(generate["modelVersion"], "gemini-2.5-pro");
        assert_eq!(generate["candidates"][0]["content"]["role"], "model");
    }
}

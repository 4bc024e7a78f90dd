//! Answering one request: record it, check its credential like Google, apply the triggers, route.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, HeaderValue, PROXY_AUTHENTICATE, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::body::{EventStream, MockBody};
use crate::canned::{self, StreamEvents};
use crate::clock::rfc3339;
use crate::control;
use crate::failure::{ErrorContext, Failure, google_error, invalid_key};
use crate::recorded::RecordedRequest;
use crate::reply;
use crate::resources::{self, ResourceRequest};
use crate::routes::{self, ModelAction, Route};
use crate::shared::Shared;
use crate::url::{percent_decode, query_param};
use crate::vertex::VertexAnswer;

/// The service behind every connection.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(reply::invalid_argument(
                "The request body could not be read.",
            ));
        }
    };
    if let Some(endpoint) = parts.uri.path().strip_prefix("/_mock/") {
        return Ok(control::handle(&shared, &parts.method, endpoint, &body));
    }
    let credential = Credential::of(&parts);
    if shared.is_recording() {
        shared.record(record(&parts, &body, &credential));
    }
    if let Some(response) = crate::live::handle(&shared, &mut parts, credential.key.as_deref()) {
        return Ok(response);
    }
    let triggers = Triggers::of(&parts.headers);
    if let Some(delay) = triggers.delay_headers {
        tokio::time::sleep(delay).await;
    }
    let mut response = respond(&shared, &parts, &body, &credential, &triggers);
    if triggers.hop_headers {
        add_hop_headers(response.headers_mut());
    }
    Ok(response)
}

fn record(parts: &Parts, body: &Bytes, credential: &Credential) -> RecordedRequest {
    RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        key: credential.key.clone(),
    }
}

/// The API key a request carried, looked for where Google looks.
struct Credential {
    /// `x-goog-api-key`, else `?key=`, else `Authorization: Bearer`.
    key: Option<String>,
    /// Whether any `Authorization` header arrived (Google rejects it on native routes).
    has_authorization: bool,
}

impl Credential {
    fn of(parts: &Parts) -> Self {
        let authorization = parts.headers.get(AUTHORIZATION);
        let key = parts
            .headers
            .get("x-goog-api-key")
            .map(|key| String::from_utf8_lossy(key.as_bytes()).into_owned())
            .or_else(|| query_param(parts.uri.query(), "key").map(percent_decode))
            .or_else(|| {
                let (scheme, token) = authorization?.to_str().ok()?.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            });
        Credential {
            key,
            has_authorization: authorization.is_some(),
        }
    }
}

/// The `x-mock-*` headers of a request.
#[derive(Default)]
struct Triggers<'a> {
    error: Option<&'a str>,
    retry_delay_seconds: Option<u64>,
    chunks: Option<usize>,
    chunk_delay: Option<Duration>,
    fail_after: Option<usize>,
    delay_headers: Option<Duration>,
    hop_headers: bool,
}

impl<'a> Triggers<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut triggers = Triggers::default();
        for (name, value) in headers {
            let (Some(trigger), Ok(value)) =
                (name.as_str().strip_prefix("x-mock-"), value.to_str())
            else {
                continue;
            };
            let value = value.trim();
            let millis = || value.parse().ok().map(Duration::from_millis);
            match trigger {
                "error" => triggers.error = Some(value),
                "retry-delay-seconds" => triggers.retry_delay_seconds = value.parse().ok(),
                "chunks" => triggers.chunks = value.parse().ok(),
                "chunk-delay-ms" => triggers.chunk_delay = millis(),
                "fail-after-chunks" => triggers.fail_after = value.parse().ok(),
                "delay-headers-ms" => triggers.delay_headers = millis(),
                "hop-headers" => triggers.hop_headers = !matches!(value, "" | "0" | "false"),
                _ => {}
            }
        }
        triggers
    }
}

/// The body fields of an OpenAI-compatible request that matter here.
#[derive(Deserialize)]
struct OpenAiRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    input: Value,
}

fn respond(
    shared: &Shared,
    parts: &Parts,
    body: &Bytes,
    credential: &Credential,
    triggers: &Triggers<'_>,
) -> Response<MockBody> {
    let path = parts.uri.path();
    match crate::vertex::respond(shared, parts, body, triggers.error) {
        Some(VertexAnswer::Reply(response)) => return response,
        Some(VertexAnswer::Stream { model, sse }) => {
            let format = if sse {
                StreamFormat::Sse
            } else {
                StreamFormat::JsonArray
            };
            return stream(shared, &model, format, triggers);
        }
        Some(VertexAnswer::OpenAiStream { model }) => {
            return stream(shared, &model, StreamFormat::OpenAi, triggers);
        }
        None => {}
    }
    let Some(target) = routes::parse(&parts.method, path) else {
        return reply::not_found(&format!(
            "The requested URL {path} was not found on this server."
        ));
    };
    let route = target.route;

    // Credentials, in the order Google checks them.
    if credential.has_authorization && !route.is_openai() {
        return unauthenticated();
    }
    let Some(key) = credential.key.as_deref() else {
        return reply::permission_denied(
            "Method doesn't allow unregistered callers (callers without established identity). Please use \
             API Key or other form of API consumer identity to call this API.",
        );
    };
    if shared.invalid_keys.contains(key) {
        return reply::json(StatusCode::BAD_REQUEST, invalid_key());
    }

    let openai = match route {
        Route::OpenAiChat | Route::OpenAiEmbeddings => {
            match serde_json::from_slice::<OpenAiRequest>(body) {
                Ok(OpenAiRequest {
                    model: Some(model),
                    stream,
                    input,
                }) => Some((model, stream, input)),
                Ok(_) => return reply::invalid_argument("model is required."),
                Err(_) => return reply::invalid_argument("Invalid JSON payload received."),
            }
        }
        _ => None,
    };
    // The OpenAI SDK percent-encodes the `/` of `models/…` in `GET models/{id}`.
    let path_model = match route {
        Route::OpenAiModel(model) => Some(percent_decode(model)),
        _ => None,
    };
    let model = route.model().or_else(|| {
        let model = path_model
            .as_deref()
            .or(openai.as_ref().map(|o| o.0.as_str()))?;
        Some(model.strip_prefix("models/").unwrap_or(model))
    });

    // Errors on demand.
    let ctx = ErrorContext {
        model,
        version: target.version,
        retry_delay_seconds: triggers.retry_delay_seconds,
    };
    if let Some(failure) = shared.key_failure(key) {
        return failure.response(&ctx);
    }
    if let Some(code) = triggers
        .error
        .or_else(|| model?.strip_prefix("mock-error-"))
    {
        return match Failure::from_code(code) {
            Some(failure) => failure.response(&ctx),
            None => {
                reply::invalid_argument(&format!("gem-proxy-mock: unknown error code {code:?}."))
            }
        };
    }

    let resource = ResourceRequest {
        key,
        version: target.version,
        headers: &parts.headers,
        query: parts.uri.query(),
        body,
    };
    // An upload's bytes are a file's content, not references.
    if !path.starts_with("/upload/")
        && let Some(name) = crate::owned::foreign_reference(shared, key, body)
    {
        return reply::permission_denied(&format!(
            "You do not have permission to access {name} or it may not exist."
        ));
    }
    match route {
        Route::Owned(_) => crate::owned::respond(shared, &parts.method, path, &resource),
        Route::ListModels => reply::ok(shared.canned.models_list.clone()),
        Route::GetModel(model) => reply::ok(shared.canned.for_model(model).model.clone()),
        Route::Model(model, action) => match action {
            ModelAction::Generate => reply::ok(shared.canned.for_model(model).generate.clone()),
            ModelAction::Stream => {
                let format = if query_param(parts.uri.query(), "alt") == Some("sse") {
                    StreamFormat::Sse
                } else {
                    StreamFormat::JsonArray
                };
                stream(shared, model, format, triggers)
            }
            ModelAction::CountTokens => reply::ok(shared.canned.count_tokens.clone()),
            ModelAction::Embed => reply::ok(shared.canned.embed_content.clone()),
            ModelAction::BatchEmbed => {
                #[derive(Deserialize)]
                struct BatchEmbed {
                    requests: Vec<IgnoredAny>,
                }
                match serde_json::from_slice::<BatchEmbed>(body) {
                    Ok(batch) => reply::ok(canned::batch_embed(batch.requests.len())),
                    Err(_) => reply::invalid_argument(
                        "Invalid JSON payload received: expected \"requests\".",
                    ),
                }
            }
            ModelAction::BatchGenerate => {
                let Ok(request) = serde_json::from_slice::<Value>(body) else {
                    return reply::invalid_argument("Invalid JSON payload received.");
                };
                let batch = &request["batch"];
                let count = batch["inputConfig"]["requests"]["requests"]
                    .as_array()
                    .map_or(0, Vec::len);
                let name = batch["displayName"].as_str().unwrap_or("batch");
                let now = rfc3339(std::time::SystemTime::now());
                let answer = canned::batch_generate(model, &shared.new_id(), name, count, &now);
                shared.owned.adopt(key, &answer);
                reply::ok(answer)
            }
        },
        Route::Upload => resources::upload(shared, &resource),
        Route::ListFiles => resources::list_files(shared, key),
        Route::GetFile(id) => resources::get_file(shared, key, id),
        Route::DeleteFile(id) => resources::delete_file(shared, key, id),
        Route::CreateCache => resources::create_cache(shared, &resource),
        Route::ListCaches => resources::list_caches(shared, key),
        Route::GetCache(id) => resources::get_cache(shared, key, id),
        Route::PatchCache(id) => resources::patch_cache(shared, &resource, id),
        Route::DeleteCache(id) => resources::delete_cache(shared, key, id),
        Route::OpenAiModels => reply::ok(shared.canned.openai_models.clone()),
        Route::OpenAiModel(_) => reply::ok(
            shared
                .canned
                .for_model(model.unwrap_or_default())
                .openai_model
                .clone(),
        ),
        Route::OpenAiChat => {
            let model = model.unwrap_or_default();
            match openai {
                Some((_, true, _)) => stream(shared, model, StreamFormat::OpenAi, triggers),
                _ => reply::ok(shared.canned.for_model(model).openai_chat.clone()),
            }
        }
        Route::OpenAiEmbeddings => {
            let count = match openai.as_ref().map(|(_, _, input)| input) {
                // A list of strings or of token lists is several inputs; anything else is one.
                Some(Value::Array(items))
                    if items.iter().all(|i| i.is_string() || i.is_array()) =>
                {
                    items.len()
                }
                _ => 1,
            };
            reply::ok(canned::openai_embeddings(model.unwrap_or_default(), count))
        }
    }
}

/// How a streamed answer is framed.
enum StreamFormat {
    Sse,
    JsonArray,
    OpenAi,
}

fn stream(
    shared: &Shared,
    model: &str,
    format: StreamFormat,
    triggers: &Triggers<'_>,
) -> Response<MockBody> {
    let events = match triggers.chunks {
        Some(chunks) if chunks.max(1) != shared.canned.chunks() => {
            StreamEvents::build(model, chunks)
        }
        _ => shared.canned.for_model(model).streams.clone(),
    };
    let (events, content_type) = match format {
        StreamFormat::Sse => (events.sse, reply::EVENT_STREAM.clone()),
        StreamFormat::JsonArray => (events.json_array, reply::JSON.clone()),
        StreamFormat::OpenAi => (events.openai_sse, reply::EVENT_STREAM.clone()),
    };
    let delay = triggers.chunk_delay.unwrap_or(shared.chunk_delay);
    let events = EventStream::new(events, delay, triggers.fail_after, Arc::clone(&shared.gate));
    reply::with_type(StatusCode::OK, content_type, MockBody::events(events))
}

/// Google's 401 when an `Authorization` header reaches a route authenticated by API key.
fn unauthenticated() -> Response<MockBody> {
    let body = google_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other \
         valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        Some(json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            "domain": "googleapis.com",
            "metadata": { "service": "generativelanguage.googleapis.com" },
        }])),
    );
    let mut response = reply::json(StatusCode::UNAUTHORIZED, body);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
    );
    response
}

/// `x-mock-hop-headers`: headers a proxy must not forward, plus one it must.
fn add_hop_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("x-custom-hop"));
    headers.insert("x-custom-hop", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
    headers.insert("x-end-to-end", HeaderValue::from_static("yes"));
}

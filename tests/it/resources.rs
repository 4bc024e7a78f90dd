//! Key-owned resources through the gateway with three keys and auth on: batches, a Veo-style
//! long-running operation and its video, a tuned model, a file search store, uploads. Every
//! follow-up must reach the key that created the resource (the mock refuses the others, and its
//! log shows the key), and another client must see none of it.

use bytes::Bytes;
use gem_proxy::auth::{capability, unix_now};
use gem_proxy::config::{AuthConfig, Config, Secret};
use gem_proxy_mock::MockOptions;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::{Harness, assert_google_error, client_token, issued_client_token, json};

const SECRET: &str = "resources-test-secret-0123456789abcdef";
const KEY3: &str = "AIzaTESTKEY3";

fn auth() -> AuthConfig {
    AuthConfig {
        enabled: true,
        jwt_secret: Secret::new(SECRET),
        ..Default::default()
    }
}

fn token(sub: &str) -> String {
    client_token(SECRET, sub, &[])
}

fn three_keys_with_auth(c: &mut Config) {
    let mut third = c.gemini.api_keys[1].clone();
    third.id = "key3".into();
    third.key = Secret::new(KEY3);
    c.gemini.api_keys.push(third);
    c.auth = auth();
}

async fn start() -> Harness {
    Harness::start_with(MockOptions::default(), three_keys_with_auth).await
}

/// Sends `method path` with `body` as the client holding `token` (none when `None`).
async fn call(
    h: &Harness,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        h.url(path)
    };
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("x-goog-api-key", t);
    }
    let (status, _, body) = h
        .call(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await;
    let v = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        })
    };
    (status, v)
}

/// The upstream keys of every request the mock saw whose path contains `needle`.
fn keys_for(h: &Harness, needle: &str) -> Vec<String> {
    h.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(needle))
        .map(|r| r.key.unwrap_or_default())
        .collect()
}

/// All of `keys` are one pool key (never a client credential), and there are `n` of them.
fn one_pool_key(keys: &[String], n: usize) {
    assert_eq!(keys.len(), n, "{keys:?}");
    assert!(
        [crate::support::KEY1, crate::support::KEY2, KEY3].contains(&keys[0].as_str()),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn a_batch_is_polled_twenty_times_and_cancelled_on_the_key_that_created_it() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, batch) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
        r#"{"batch":{"displayName":"b","inputConfig":{"requests":{"requests":[{"request":{"contents":[{"parts":[{"text":"hi"}]}]}}]}}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let name = batch["name"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::GET,
            &format!("/v1beta/{name}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["name"], name.as_str());
    }
    let (status, listed) = call(&h, Some(&alice), Method::GET, "/v1beta/batches", "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["operations"][0]["name"], name.as_str(), "{listed}");

    // Another client sees none of it, and cannot cancel it.
    let (status, body) = call(&h, Some(&bob), Method::GET, &format!("/v1beta/{name}"), "").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        &h,
        Some(&bob),
        Method::POST,
        &format!("/v1beta/{name}:cancel"),
        "{}",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = call(&h, Some(&bob), Method::GET, "/v1beta/batches", "").await;
    assert!(listed.get("operations").is_none(), "{listed}");

    let (status, _) = call(
        &h,
        Some(&alice),
        Method::POST,
        &format!("/v1beta/{name}:cancel"),
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    let (_, got) = call(
        &h,
        Some(&alice),
        Method::GET,
        &format!("/v1beta/{name}"),
        "",
    )
    .await;
    assert_eq!(got["metadata"]["state"], "BATCH_STATE_CANCELLED");
    // Creation + 20 polls + cancel + the last get: one key; the listing asked every key.
    let id = id_of(&name);
    let mut keys = keys_for(&h, ":batchGenerateContent");
    keys.extend(keys_for(&h, id));
    one_pool_key(&keys, 23);
}

#[tokio::test]
async fn a_video_operation_is_polled_to_completion_and_its_video_downloaded_with_a_link() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, op) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/models/veo-3.0-generate-preview:predictLongRunning",
        r#"{"instances":[{"prompt":"a cat"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let mut polls = 0;
    let done = loop {
        polls += 1;
        assert!(polls < 10, "the operation never finished");
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::GET,
            &format!("/v1beta/{name}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{got}");
        if got["done"] == true {
            break got;
        }
    };
    let uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uri.starts_with(&h.url("/download/v1beta/files/")), "{uri}");
    for key in [crate::support::KEY1, crate::support::KEY2, KEY3] {
        assert!(!uri.contains(key), "{uri}");
    }
    assert!(!uri.contains(&alice), "{uri}");
    assert!(uri.contains("key=gpcap1."), "{uri}");

    // The link alone downloads the video (as an SDK fetching the URI does), streamed whole.
    let (status, headers, bytes) = h
        .call(Request::get(&uri).body(Full::new(Bytes::new())).unwrap())
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["content-type"], "video/mp4");
    assert_eq!(bytes.len(), 256 * 1024);
    // With the client's token too (the SDKs send theirs).
    let (status, _) = call(&h, Some(&alice), Method::GET, &uri, "").await;
    assert_eq!(status, 200);

    let file = uri
        .split("/files/")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap()
        .to_owned();
    let mut keys = keys_for(&h, ":predictLongRunning");
    keys.extend(keys_for(&h, id_of(&name)));
    keys.extend(keys_for(&h, &file));
    one_pool_key(&keys, 1 + polls + 2);

    // Another client: not the operation, not the video, not with alice's link.
    let (status, _) = call(&h, Some(&bob), Method::GET, &format!("/v1beta/{name}"), "").await;
    assert_eq!(status, 404);
    let (status, body) = call(&h, Some(&bob), Method::GET, &uri, "").await;
    assert_google_error(
        status,
        body.to_string().as_bytes(),
        403,
        "PERMISSION_DENIED",
    );
    let direct = format!("/download/v1beta/files/{file}:download?alt=media");
    let (status, _) = call(&h, Some(&bob), Method::GET, &direct, "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_tuned_model_is_created_polled_and_generated_with_on_its_key() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, op) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/tunedModels",
        r#"{"baseModel":"models/gemini-2.5-flash","tuningTask":{"trainingData":{}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let model = op["metadata"]["tunedModel"].as_str().unwrap().to_owned();
    let op_name = op["name"].as_str().unwrap().to_owned();
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(polls < 10, "tuning never finished");
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::GET,
            &format!("/v1beta/{op_name}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{got}");
        if got["done"] == true {
            break;
        }
    }
    let generate = format!("/v1beta/{model}:generateContent");
    let body = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    let (status, answer) = call(&h, Some(&alice), Method::POST, &generate, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["candidates"].is_array(), "{answer}");
    let (status, _) = call(&h, Some(&bob), Method::POST, &generate, body).await;
    assert_eq!(status, 404);
    let (_, listed) = call(&h, Some(&bob), Method::GET, "/v1beta/tunedModels", "").await;
    assert!(listed.get("tunedModels").is_none(), "{listed}");
    let (_, listed) = call(&h, Some(&alice), Method::GET, "/v1beta/tunedModels", "").await;
    assert_eq!(listed["tunedModels"][0]["name"], model.as_str(), "{listed}");
    one_pool_key(&keys_for(&h, id_of(&model)), polls + 1);
}

#[tokio::test]
async fn a_file_search_store_is_created_uploaded_into_and_used_as_a_tool() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, store) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/fileSearchStores",
        r#"{"displayName":"docs"}"#,
    )
    .await;
    assert_eq!(status, 200, "{store}");
    let name = store["name"].as_str().unwrap().to_owned();
    let (status, op) = call(
        &h,
        Some(&alice),
        Method::POST,
        &format!("/upload/v1beta/{name}:uploadToFileSearchStore"),
        "some document text",
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let (status, got) = call(
        &h,
        Some(&alice),
        Method::GET,
        &format!("/v1beta/{}", op["name"].as_str().unwrap()),
        "",
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let tool = format!(
        r#"{{"contents":[{{"parts":[{{"text":"what do the docs say?"}}]}}],"tools":[{{"fileSearch":{{"fileSearchStoreNames":["{name}"]}}}}]}}"#
    );
    let generate = "/v1beta/models/gemini-2.5-flash:generateContent";
    // Several times: a lucky pick would fail one of them (the mock refuses other keys).
    for _ in 0..6 {
        let (status, answer) = call(&h, Some(&alice), Method::POST, generate, &tool).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, _) = call(&h, Some(&bob), Method::POST, generate, &tool).await;
    assert_eq!(status, 404);
    let (status, _) = call(&h, Some(&bob), Method::GET, &format!("/v1beta/{name}"), "").await;
    assert_eq!(status, 404);
    let mut keys = keys_for(&h, id_of(&name));
    keys.extend(
        h.mock
            .requests()
            .into_iter()
            .filter(|r| {
                r.path.ends_with(":generateContent") || r.path == "/v1beta/fileSearchStores"
            })
            .map(|r| r.key.unwrap_or_default()),
    );
    one_pool_key(&keys, 3 + 6);
}

#[tokio::test]
async fn a_request_naming_resources_of_two_keys_is_refused() {
    let h = start().await;
    let alice = token("alice");
    // Stores until two sit on different keys.
    let mut stores: Vec<(String, String)> = Vec::new();
    let (a, b) = loop {
        assert!(stores.len() < 40, "every store landed on one key");
        let (status, store) = call(
            &h,
            Some(&alice),
            Method::POST,
            "/v1beta/fileSearchStores",
            "{}",
        )
        .await;
        assert_eq!(status, 200);
        let key = h.mock.requests().last().unwrap().key.clone().unwrap();
        let name = store["name"].as_str().unwrap().to_owned();
        if let Some((other, _)) = stores.iter().find(|(_, k)| *k != key) {
            break (other.clone(), name);
        }
        stores.push((name, key));
    };
    let before = h.mock.requests().len();
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"x"}}]}}],"tools":[{{"fileSearch":{{"fileSearchStoreNames":["{a}","{b}"]}}}}]}}"#
    );
    let (status, err) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &body,
    )
    .await;
    assert_google_error(status, err.to_string().as_bytes(), 400, "INVALID_ARGUMENT");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    assert_eq!(h.mock.requests().len(), before, "nothing reached Google");
}

/// Starts a resumable upload as `token`; the upload URL the gateway hands back.
async fn start_upload(h: &Harness, token: &str) -> String {
    let req = Request::post(h.url("/upload/v1beta/files"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "5")
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json")
        .header("x-goog-api-key", token)
        .body(Full::new(Bytes::from_static(
            br#"{"file":{"display_name":"f"}}"#,
        )))
        .unwrap();
    let (status, headers, body) = h.call(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    headers["x-goog-upload-url"].to_str().unwrap().to_owned()
}

/// Sends the bytes to an upload URL, with `token` (the Node SDK) or none (google-genai).
async fn finish_upload(
    h: &Harness,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    send_bytes(h, url, token, "upload, finalize", 0, b"hello").await
}

/// Sends `bytes` at `offset` to an upload URL with `command` (`upload`, `upload, finalize`).
async fn send_bytes(
    h: &Harness,
    url: &str,
    token: Option<&str>,
    command: &str,
    offset: usize,
    bytes: &'static [u8],
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post(url)
        .header("x-goog-upload-command", command)
        .header("x-goog-upload-offset", offset.to_string());
    if let Some(t) = token {
        req = req.header("x-goog-api-key", t);
    }
    let (status, _, body) = h
        .call(req.body(Full::new(Bytes::from_static(bytes))).unwrap())
        .await;
    // A chunk that does not finalize is answered with an empty body.
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        json(&body)
    };
    (status, value)
}

/// An upload started with a token that is then revoked through the admin API: its next chunk
/// is refused, although the upload URL's capability has not expired; an upload of the same
/// client started with another token goes on.
#[tokio::test]
async fn revoking_a_token_revokes_the_upload_urls_it_earned() {
    const ADMIN_TOKEN: &str = "resources-admin-token-0123456789";
    let h = Harness::start_with(MockOptions::default(), |c| {
        three_keys_with_auth(c);
        c.admin.token = Secret::new(ADMIN_TOKEN);
    })
    .await;
    let (laptop, phone) = (
        issued_client_token(SECRET, "alice", &[]),
        issued_client_token(SECRET, "alice", &[]),
    );
    let url = start_upload(&h, &laptop.token).await;
    let other = start_upload(&h, &phone.token).await;
    let (status, body) = send_bytes(&h, &url, None, "upload", 0, b"hel").await;
    assert_eq!(status, 200, "{body}");

    let revoke = Request::post(h.admin_url("/api/tokens/revoke"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"jti":"{}"}}"#,
            laptop.jti
        ))))
        .unwrap();
    let (status, _, body) = h.call(revoke).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let before = h.mock.requests().len();
    let (status, body) = send_bytes(&h, &url, None, "upload, finalize", 3, b"lo").await;
    assert_google_error(status, body.to_string().as_bytes(), 401, "UNAUTHENTICATED");
    assert!(body.to_string().contains("revoked"), "{body}");
    // With the client's other (valid) token beside it, the revoked token's link is still refused.
    let (status, _) = send_bytes(&h, &url, Some(&phone.token), "upload, finalize", 3, b"lo").await;
    assert_eq!(status, 401);
    assert_eq!(h.mock.requests().len(), before, "nothing reached Google");

    // The upload alice started with her other token is finished with its link alone.
    let (status, file) = finish_upload(&h, &other, None).await;
    assert_eq!(status, 200, "{file}");
    assert!(file["file"]["name"].as_str().is_some(), "{file}");
}

#[tokio::test]
async fn with_auth_on_the_upload_url_is_its_own_credential_for_exactly_that_upload() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let url = start_upload(&h, &alice).await;
    assert!(url.contains("key=gpcap1."), "{url}");
    assert!(!url.contains(&alice), "{url}");

    // Forged: one character of the signature changed.
    let forged = format!(
        "{}{}",
        &url[..url.len() - 1],
        if url.ends_with('A') { 'B' } else { 'A' }
    );
    let (status, body) = finish_upload(&h, &forged, None).await;
    assert_google_error(status, body.to_string().as_bytes(), 401, "UNAUTHENTICATED");
    // Expired: signed like the gateway's, an hour and more ago.
    let upload_id = url
        .split("upload_id=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let alice_client = capability::Capability {
        sub: "alice".into(),
        res: String::new(),
        exp: 0,
        rpm: None,
        tpm: None,
        tpd: None,
        jti: None,
    }
    .client();
    let old = capability::mint(
        &auth(),
        &alice_client,
        &format!("upload:{upload_id}"),
        unix_now() - 7200,
    );
    let expired = format!("{}key={old}", url.split("key=").next().unwrap());
    let (status, body) = finish_upload(&h, &expired, None).await;
    assert_google_error(status, body.to_string().as_bytes(), 401, "UNAUTHENTICATED");
    assert!(body.to_string().contains("expired"), "{body}");
    // Another client's token beside alice's link.
    let (status, body) = finish_upload(&h, &url, Some(&bob)).await;
    assert_google_error(
        status,
        body.to_string().as_bytes(),
        403,
        "PERMISSION_DENIED",
    );
    // Alice's link for another upload (bob's).
    let bobs = start_upload(&h, &bob).await;
    let bobs_id = bobs
        .split("upload_id=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let cross = url.replace(upload_id, bobs_id);
    let (status, body) = finish_upload(&h, &cross, None).await;
    assert_google_error(
        status,
        body.to_string().as_bytes(),
        403,
        "PERMISSION_DENIED",
    );
    // No credential at all on a plain upload URL.
    let bare = url.split("&key=").next().unwrap();
    let (status, _) = finish_upload(&h, bare, None).await;
    assert_eq!(status, 401);
    // The link alone does not open anything else.
    let cap = url.split("key=").nth(1).unwrap();
    let (status, _) = call(
        &h,
        None,
        Method::GET,
        &format!("/v1beta/files?key={cap}"),
        "",
    )
    .await;
    assert_eq!(status, 403);

    // google-genai: no credential, the link is enough.
    let (status, file) = finish_upload(&h, &url, None).await;
    assert_eq!(status, 200, "{file}");
    let name = file["file"]["name"].as_str().unwrap().to_owned();
    let (status, got) = call(
        &h,
        Some(&alice),
        Method::GET,
        &format!("/v1beta/{name}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{got}");
    // The Node SDK: its own token beside the link.
    let (status, _) = finish_upload(&h, &bobs, Some(&bob)).await;
    assert_eq!(status, 200);

    // Upstream saw pool keys only: never a token, never a capability.
    for r in h.mock.requests() {
        let key = r.key.unwrap_or_default();
        assert!(
            [crate::support::KEY1, crate::support::KEY2, KEY3].contains(&key.as_str()),
            "{key}"
        );
        assert!(!r.query.unwrap_or_default().contains("key="));
    }
}

#[tokio::test]
async fn an_openai_batch_stays_on_its_key_with_its_id_encoded_as_the_openai_sdk_sends_it() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, batch) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/openai/batches",
        r#"{"input_file_id":"files/in1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("batches/"), "{id}");
    let path = format!("/v1beta/openai/batches/{}", id.replace('/', "%2F"));
    for _ in 0..5 {
        let (status, got) = call(&h, Some(&alice), Method::GET, &path, "").await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["id"], id.as_str());
    }
    let (status, got) = call(
        &h,
        Some(&alice),
        Method::POST,
        &format!("{path}/cancel"),
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["status"], "cancelled");
    let (status, _) = call(&h, Some(&bob), Method::GET, &path, "").await;
    assert_eq!(status, 404);
    let mut keys = keys_for(&h, "/openai/batches");
    keys.retain(|k| !k.is_empty());
    one_pool_key(&keys, 1 + 5 + 1);
}

#[tokio::test]
async fn a_batch_reading_an_uploaded_file_goes_to_the_files_key() {
    let h = start().await;
    let alice = token("alice");
    let url = start_upload(&h, &alice).await;
    let (status, file) = finish_upload(&h, &url, None).await;
    assert_eq!(status, 200, "{file}");
    let name = file["file"]["name"].as_str().unwrap().to_owned();
    let uri = file["file"]["uri"].as_str().unwrap().to_owned();
    // Both spellings: the name (a batch's input file) and the URI (a part's fileData).
    let batch =
        format!(r#"{{"batch":{{"displayName":"b","inputConfig":{{"fileName":"{name}"}}}}}}"#);
    let generate = format!(
        r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"{uri}","mimeType":"text/plain"}}}}]}}]}}"#
    );
    // Several times: the mock refuses another key's file, so a lucky pick would show.
    for _ in 0..5 {
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            &batch,
        )
        .await;
        assert_eq!(status, 200, "{got}");
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &generate,
        )
        .await;
        assert_eq!(status, 200, "{got}");
    }
    let keys: Vec<String> = h
        .mock
        .requests()
        .into_iter()
        .map(|r| r.key.unwrap_or_default())
        .collect();
    one_pool_key(&keys, 2 + 10);
}

#[tokio::test]
async fn an_interaction_is_continued_on_the_key_that_holds_its_previous_turn() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, first) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/interactions",
        r#"{"model":"gemini-2.5-flash","input":"hello"}"#,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let mut previous = first["id"].as_str().unwrap().to_owned();
    let mut ids = vec![previous.clone()];
    for _ in 0..5 {
        let body = format!(
            r#"{{"model":"gemini-2.5-flash","input":"and then?","previous_interaction_id":"{previous}"}}"#
        );
        let (status, next) = call(
            &h,
            Some(&alice),
            Method::POST,
            "/v1beta/interactions",
            &body,
        )
        .await;
        assert_eq!(status, 200, "{next}");
        previous = next["id"].as_str().unwrap().to_owned();
        ids.push(previous.clone());
    }
    let (status, got) = call(
        &h,
        Some(&alice),
        Method::GET,
        &format!("/v1beta/interactions/{previous}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let keys: Vec<String> = h
        .mock
        .requests()
        .into_iter()
        .map(|r| r.key.unwrap_or_default())
        .collect();
    one_pool_key(&keys, 7);

    let body = format!(
        r#"{{"model":"gemini-2.5-flash","input":"x","previous_interaction_id":"{}"}}"#,
        ids[0]
    );
    let (status, _) = call(&h, Some(&bob), Method::POST, "/v1beta/interactions", &body).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &h,
        Some(&bob),
        Method::GET,
        &format!("/v1beta/interactions/{previous}"),
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_finished_batchs_results_file_downloads_from_the_batchs_key() {
    let h = start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let (status, batch) = call(
        &h,
        Some(&alice),
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
        r#"{"batch":{"displayName":"b","inputConfig":{"requests":{"requests":[]}}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let name = batch["name"].as_str().unwrap().to_owned();
    let mut polls = 0;
    let done = loop {
        polls += 1;
        assert!(polls < 40, "the batch never finished");
        let (status, got) = call(
            &h,
            Some(&alice),
            Method::GET,
            &format!("/v1beta/{name}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{got}");
        if got["done"] == true {
            break got;
        }
    };
    let file = done["response"]["responsesFile"]
        .as_str()
        .unwrap()
        .to_owned();
    let download = format!("/download/v1beta/{file}:download?alt=media");
    // Several times: only the batch's key holds the results.
    for _ in 0..4 {
        let (status, headers, body) = h
            .call(
                Request::get(h.url(&download))
                    .header("x-goog-api-key", &alice)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["content-type"], "application/jsonl");
        assert_eq!(body.len(), 4096);
    }
    let (status, _) = call(&h, Some(&bob), Method::GET, &download, "").await;
    assert_eq!(status, 404);
    let keys: Vec<String> = h
        .mock
        .requests()
        .into_iter()
        .map(|r| r.key.unwrap_or_default())
        .collect();
    one_pool_key(&keys, 1 + polls + 4);
}

//! Calls to the admin listener that serves the console (same origin): the admin API under `/api/`
//! with the session's token as `Authorization: Bearer`, and the open documents (`/performance`,
//! `/metrics`, `/errors`, `/health`).
//!
//! A 401 from the admin API ends the session: the token was refused (changed, or an admin JWT that
//! expired), so the console goes back to sign-in and says why.

use leptos::prelude::*;
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestInit, Response};

use crate::app::Session;
use crate::model::ApiProblem;

/// An answer: its status, body text and `ETag`.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) text: String,
    pub(crate) etag: Option<String>,
}

/// The request body and its content type.
pub(crate) struct Body<'a> {
    pub(crate) content_type: &'a str,
    pub(crate) text: String,
}

fn unreachable_gateway(e: JsValue) -> ApiProblem {
    ApiProblem {
        status: 0,
        message: format!(
            "the gateway could not be reached ({})",
            e.as_string()
                .or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string()))
                .unwrap_or_else(|| "network error".into())
        ),
        violations: Vec::new(),
    }
}

/// Sends one request; only a failure to reach the gateway is an `Err`.
pub(crate) async fn send(
    method: &str,
    path: &str,
    token: Option<&str>,
    accept: &str,
    body: Option<Body<'_>>,
    if_match: Option<&str>,
) -> Result<Reply, ApiProblem> {
    let init = RequestInit::new();
    init.set_method(method);
    // The token lives in session storage and goes out only in the Authorization header.
    init.set_credentials(web_sys::RequestCredentials::Omit);
    init.set_cache(web_sys::RequestCache::NoStore);
    if let Some(b) = &body {
        init.set_body(&JsValue::from_str(&b.text));
    }
    let req = Request::new_with_str_and_init(path, &init).map_err(unreachable_gateway)?;
    let headers = req.headers();
    headers.set("Accept", accept).map_err(unreachable_gateway)?;
    if let Some(b) = &body {
        headers
            .set("Content-Type", b.content_type)
            .map_err(unreachable_gateway)?;
    }
    if let Some(t) = token {
        headers
            .set("Authorization", &format!("Bearer {t}"))
            .map_err(unreachable_gateway)?;
    }
    if let Some(v) = if_match {
        headers.set("If-Match", v).map_err(unreachable_gateway)?;
    }
    let res: Response = JsFuture::from(window().fetch_with_request(&req))
        .await
        .map_err(unreachable_gateway)?
        .dyn_into()
        .map_err(unreachable_gateway)?;
    let etag = res.headers().get("ETag").ok().flatten();
    let text = JsFuture::from(res.text().map_err(unreachable_gateway)?)
        .await
        .map_err(unreachable_gateway)?
        .as_string()
        .unwrap_or_default();
    Ok(Reply {
        status: res.status(),
        text,
        etag,
    })
}

/// The admin API and the open documents, as the signed-in console uses them.
#[derive(Clone, Copy)]
pub(crate) struct Api {
    session: Session,
}

impl Api {
    pub(crate) fn new(session: Session) -> Self {
        Self { session }
    }

    /// From the context the app provides.
    pub(crate) fn get() -> Self {
        Self::new(expect_context::<Session>())
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<Body<'_>>,
    ) -> Result<String, ApiProblem> {
        let token = self.session.token.get_untracked();
        // A whole config built from what this tab read goes out only while that is current.
        let whole_config = (method == "PUT" && path == "/api/config")
            || (method == "POST" && path.starts_with("/api/config/rollback/"));
        let if_match = whole_config
            .then(|| self.session.config_etag.get_untracked())
            .flatten();
        let reply = send(
            method,
            path,
            token.as_deref(),
            accept,
            body,
            if_match.as_deref(),
        )
        .await?;
        if (200..300).contains(&reply.status) {
            if (method == "GET" && path == "/api/config") || whole_config {
                self.session.config_etag.set(reply.etag);
            }
            return Ok(reply.text);
        }
        let problem = ApiProblem::parse(reply.status, &reply.text);
        if reply.status == 401 && path.starts_with("/api/") {
            self.session
                .sign_out(Some(format!("Signed out: {}", problem.message)));
        }
        Err(problem)
    }

    /// `GET` a JSON document.
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, ApiProblem> {
        let text = self.call("GET", path, "application/json", None).await?;
        parse_json(&text)
    }

    /// `GET` a text document (`/metrics`, the config as YAML).
    pub(crate) async fn get_text(&self, path: &str, accept: &str) -> Result<String, ApiProblem> {
        self.call("GET", path, accept, None).await
    }

    /// A JSON request with a JSON answer (`{}` when the answer is empty).
    pub(crate) async fn send_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiProblem> {
        let body = body.map(|b| Body {
            content_type: "application/json",
            text: b.to_string(),
        });
        let text = self.call(method, path, "application/json", body).await?;
        if text.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        parse_json(&text)
    }

    /// `PUT /api/config` with a YAML document.
    pub(crate) async fn put_yaml(&self, path: &str, yaml: String) -> Result<Value, ApiProblem> {
        let body = Body {
            content_type: "application/yaml",
            text: yaml,
        };
        let text = self
            .call("PUT", path, "application/json", Some(body))
            .await?;
        parse_json(&text)
    }
}

fn parse_json(text: &str) -> Result<Value, ApiProblem> {
    serde_json::from_str(text).map_err(|e| ApiProblem {
        status: 0,
        message: format!("the gateway's answer is not JSON: {e}"),
        violations: Vec::new(),
    })
}

/// Session storage (per tab, gone when the tab closes).
pub(crate) fn session_storage() -> Option<web_sys::Storage> {
    window().session_storage().ok().flatten()
}

/// The token of a sign-in link (`#token=…`), removed from the address bar.
pub(crate) fn take_fragment_token() -> Option<String> {
    let location = window().location();
    let hash = location.hash().ok()?;
    let token = crate::history::fragment_token(&hash)?;
    let clean = format!(
        "{}{}",
        location.pathname().unwrap_or_default(),
        location.search().unwrap_or_default()
    );
    if let Ok(history) = window().history() {
        let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&clean));
    }
    Some(token)
}

/// Offers `text` as a file download named `name`.
pub(crate) fn download(name: &str, mime: &str, text: &str) {
    let parts = js_sys::Array::of1(&JsValue::from_str(text));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options) else {
        return;
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return;
    };
    if let Some(a) = document()
        .create_element("a")
        .ok()
        .and_then(|e| e.dyn_into::<web_sys::HtmlAnchorElement>().ok())
    {
        a.set_href(&url);
        a.set_download(name);
        a.click();
    }
    let _ = web_sys::Url::revoke_object_url(&url);
}

/// Milliseconds on the browser's clock.
pub(crate) fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Copies text to the clipboard: the async Clipboard API where the page may use it (HTTPS or
/// localhost); otherwise the text stays selected in its field for Ctrl+C.
pub(crate) async fn copy_text(text: &str) -> bool {
    let clipboard = window().navigator().clipboard();
    if clipboard.is_undefined() {
        return false;
    }
    JsFuture::from(clipboard.write_text(text)).await.is_ok()
}

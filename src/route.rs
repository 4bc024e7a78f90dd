//! Which API a request is for, which model, and what for: [`Route`], parsed once from the path
//! ([`Route::ensure`], by the outermost layer that needs it) and read from the request extension
//! by everything after it. The route layer ([`crate::layers::route`]) answers 404 for a path that
//! has none.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Uri};

use crate::config::ModelsConfig;

/// Where the Live API's WebSocket endpoints start.
pub const LIVE_PREFIX: &str = "/ws/google.ai.generativelanguage.";

/// A Live API path with the JS SDK's doubled leading slash made single; `None` for any other
/// path.
pub fn live_path(path: &str) -> Option<&str> {
    let single = path
        .strip_prefix('/')
        .filter(|p| p.starts_with(LIVE_PREFIX))
        .unwrap_or(path);
    single.starts_with(LIVE_PREFIX).then_some(single)
}

/// The longest model name accepted (longer ones are refused with 400 by the route and body-model
/// layers). Google's model ids are a few dozen characters (the longest today, e.g.
/// `gemini-2.5-flash-preview-native-audio-dialog`, has 44) and tuned-model ids at most 40
/// (`tunedModels.create`); 128 leaves room for new names.
pub const MAX_MODEL_NAME_BYTES: usize = 128;

/// Which surface of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Gemini's native REST API (`/v1beta/models/...`, files, cached contents, ...).
    Native,
    /// The OpenAI-compatible surface (`/v1beta/openai/...`), authenticated with a Bearer key.
    OpenAi,
    /// Media upload (`/upload/v1beta/files`).
    Upload,
    /// Media download (`/download/v1beta/files/{id}:download?alt=media`: batch results, videos).
    Download,
    /// The Live API: a WebSocket session (`/ws/google.ai.generativelanguage.{v}.GenerativeService.
    /// BidiGenerateContent`, or `…Constrained` with an ephemeral token), see [`crate::live`].
    Live,
}

/// API version, from the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// `v1`
    V1,
    /// `v1beta`
    V1Beta,
    /// `v1alpha`
    V1Alpha,
}

/// What the route layer learned about a request; a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Which surface.
    pub api: Api,
    /// Which version.
    pub version: ApiVersion,
    /// The model named in the path (`models/{model}` or `models/{model}:{method}`), if any.
    pub model: Option<Arc<str>>,
    /// What the request is for, for metric labels and span names.
    pub label: RouteLabel,
}

/// `s` percent-decoded (invalid UTF-8 replaced), borrowed when it has no `%` to decode: every
/// request's path passes here, and nearly none has one.
pub fn percent_decoded(s: &str) -> std::borrow::Cow<'_, str> {
    if memchr::memchr(b'%', s.as_bytes()).is_none() {
        return std::borrow::Cow::Borrowed(s);
    }
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// Why [`Route::ambiguity`] refuses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath(pub &'static str);

impl Route {
    /// [`Self::ambiguity`]'s checks that need percent-decoding (a path with `%`, `\\` or bytes
    /// outside printable ASCII).
    fn ambiguity_decoded(path: &str) -> Option<AmbiguousPath> {
        let why = |s| Some(AmbiguousPath(s));
        // The JS SDK dials the Live API at `//ws/…` (its base URL's slash, then its own).
        let path = live_path(path).unwrap_or(path);
        // `%2F` / `%5C` in any case; scanned in place, every request passes here.
        let encoded = |hi: u8, lo: u8| {
            path.as_bytes()
                .windows(3)
                .any(|w| w[0] == b'%' && w[1] == hi && w[2].to_ascii_lowercase() == lo)
        };
        if path.contains('\\') || encoded(b'5', b'c') {
            return why("the path contains a backslash");
        }
        // The OpenAI SDK percent-encodes the `/` of Google's ids (`batches/x`, `files/x`) in
        // the last segment of `openai/batches/{id}` and `openai/files/{id}`; no model is named
        // there, so nothing can be read as another model.
        if encoded(b'2', b'f') {
            if !Self::is_openai_resource_path(path) {
                return why("the path contains an encoded slash (%2F)");
            }
            // Read as a proxy that decodes the slashes would: still no dot segment.
            let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            if decoded.split('/').any(|s| s == "." || s == "..") {
                return why("the path contains a dot segment (. or ..)");
            }
        }
        let mut segments = path.split('/').skip(1).peekable();
        while let Some(raw) = segments.next() {
            // Borrowed, not copied, unless the segment has escapes.
            let decoded = percent_encoding::percent_decode_str(raw).decode_utf8();
            let Ok(segment) = decoded else {
                return why("the path is not UTF-8 once percent-decoded");
            };
            if segment == "." || segment == ".." {
                return why("the path contains a dot segment (. or ..)");
            }
            if segment.is_empty() && segments.peek().is_some() {
                return why("the path contains an empty segment (//)");
            }
            if segment.chars().any(char::is_control) {
                return why("the path contains control characters");
            }
        }
        None
    }

    /// Why the path cannot be classified with certainty, if it cannot: dot segments (also
    /// percent-encoded), encoded slashes or backslashes, empty segments, control characters, or
    /// a model name with characters no model has. Such a path might be read by Google (or a
    /// proxy before it) as another model than the one a token's policy was checked against.
    pub fn ambiguity(path: &str) -> Option<AmbiguousPath> {
        let why = |s| Some(AmbiguousPath(s));
        // The JS SDK dials the Live API at `//ws/…` (its base URL's slash, then its own).
        let path = live_path(path).unwrap_or(path);
        // The common case, checked in one pass: printable ASCII without `%` or `\\`, so there is
        // nothing to decode and no control character; only the segments' shapes are left.
        let plain = path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
        if plain {
            let mut segments = path.split('/').skip(1).peekable();
            while let Some(segment) = segments.next() {
                if segment == "." || segment == ".." {
                    return why("the path contains a dot segment (. or ..)");
                }
                if segment.is_empty() && segments.peek().is_some() {
                    return why("the path contains an empty segment (//)");
                }
            }
        } else if let Some(why) = Self::ambiguity_decoded(path) {
            return Some(why);
        }
        if let Some(segment) = Self::model_segment(path) {
            let decoded = percent_decoded(segment);
            let model = decoded.split(':').next().unwrap_or_default();
            if model.is_empty()
                || !model
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            {
                return why(
                    "the model name in the path is empty or has characters no model name has",
                );
            }
        }
        None
    }

    /// `/{v}/openai/batches/{id}[/…]` or `/{v}/openai/files/{id}[/…]`.
    fn is_openai_resource_path(path: &str) -> bool {
        let Some((_version, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return false;
        };
        ["openai/batches/", "openai/files/"]
            .iter()
            .any(|p| rest.starts_with(p))
    }

    /// The raw segment after `models/` (model and `:method`), if the path has one.
    fn model_segment(path: &str) -> Option<&str> {
        let rest = path
            .strip_prefix("/upload")
            .or_else(|| path.strip_prefix("/download"))
            .unwrap_or(path)
            .strip_prefix('/')?;
        let (_version, rest) = rest.split_once('/')?;
        rest.strip_prefix("models/")?.split('/').next()
    }

    /// Classifies a path; `None` when it is not part of the API. The model is read
    /// percent-decoded, as Google reads it; check [`Route::ambiguity`] first.
    pub fn classify(path: &str) -> Option<Route> {
        if let Some(live) = live_path(path).and_then(|p| p.strip_prefix(LIVE_PREFIX)) {
            return Self::classify_live(live);
        }
        let (media, rest) = if let Some(rest) = path.strip_prefix("/upload/") {
            (Some(Api::Upload), rest)
        } else if let Some(rest) = path.strip_prefix("/download/") {
            (Some(Api::Download), rest)
        } else {
            (None, path.strip_prefix('/')?)
        };
        let upload = media == Some(Api::Upload);
        let (version, rest) = rest.split_once('/')?;
        let version = match version {
            "v1" => ApiVersion::V1,
            "v1beta" => ApiVersion::V1Beta,
            "v1alpha" => ApiVersion::V1Alpha,
            _ => return None,
        };
        let api = if let Some(media) = media {
            media
        } else if rest.starts_with("openai/") || rest == "openai" {
            Api::OpenAi
        } else {
            Api::Native
        };
        let model = rest
            .strip_prefix("models/")
            .map(|m| m.split('/').next().unwrap_or(m))
            .map(percent_decoded)
            .map(|m| m.split(':').next().unwrap_or_default().to_owned())
            .filter(|m| !m.is_empty())
            .map(Arc::from);
        Some(Route {
            api,
            version,
            model,
            label: label_of(upload, rest),
        })
    }

    /// `{version}.GenerativeService.BidiGenerateContent[Constrained]`, after [`LIVE_PREFIX`].
    fn classify_live(rest: &str) -> Option<Route> {
        let (version, method) = rest.split_once(".GenerativeService.")?;
        let version = match version {
            "v1beta" => ApiVersion::V1Beta,
            "v1alpha" => ApiVersion::V1Alpha,
            _ => return None,
        };
        matches!(
            method,
            "BidiGenerateContent" | "BidiGenerateContentConstrained"
        )
        .then_some(Route {
            api: Api::Live,
            version,
            model: None,
            label: RouteLabel::Live,
        })
    }

    /// Whether this is a Live session on the ephemeral-token endpoint
    /// (`…BidiGenerateContentConstrained`).
    pub fn is_constrained_live(&self, path: &str) -> bool {
        self.api == Api::Live && path.ends_with("Constrained")
    }

    /// Parses the request's route once: the first layer that needs it (metrics, trace or route,
    /// whichever runs first) inserts it as the request's extension, the others find it there.
    /// A path outside the API gets none.
    ///
    /// A model in the path that is an alias (`gemini.models.aliases`) or carries suffixes
    /// (`gemini.models.suffixes`) is replaced by its real model, in the path sent upstream and in
    /// the route, before any layer reads it (an ambiguous path is left alone: the route layer
    /// refuses it); what the suffixes ask goes on the request as a
    /// [`ModelSuffix`](crate::config::ModelSuffix) for the overrides layer.
    pub fn ensure<B>(req: &mut Request<B>, models: &ModelsConfig) {
        if req.extensions().get::<Route>().is_some() {
            return;
        }
        let Some(mut route) = Route::classify(req.uri().path()) else {
            return;
        };
        let mut suffix = None;
        if let Some((real, asked)) = route
            .model
            .as_deref()
            .filter(|_| route.api != Api::Upload)
            .and_then(|m| models.resolve_with_suffix(m))
            && Route::ambiguity(req.uri().path()).is_none()
            && let Some(uri) = with_path_model(req.uri(), real)
        {
            *req.uri_mut() = uri;
            route.model = Some(Arc::from(real));
            suffix = asked;
        }
        req.extensions_mut().insert(route);
        if let Some(s) = suffix {
            req.extensions_mut().insert(s);
        }
    }

    /// The label of a request's route, [`RouteLabel::NotFound`] when it has none.
    pub fn label_of(route: Option<&Route>) -> RouteLabel {
        route.map_or(RouteLabel::NotFound, |r| r.label)
    }

    /// The model the metrics and spans name: the one in a native API path (not an upload's).
    pub fn labelled_model(&self) -> Option<&str> {
        self.model
            .as_deref()
            .filter(|_| self.label != RouteLabel::Upload)
    }
}

/// `uri` with the model of its `models/{model}` segment replaced by `model` (the `:method`, the
/// rest of the path and the query kept).
pub fn with_path_model(uri: &Uri, model: &str) -> Option<Uri> {
    let path = uri.path();
    let segment = Route::model_segment(path)?;
    let start = segment.as_ptr() as usize - path.as_ptr() as usize;
    let end = start + segment.find(':').unwrap_or(segment.len());
    let mut out = String::with_capacity(path.len() + model.len() + 16);
    out.push_str(&path[..start]);
    out.push_str(model);
    out.push_str(&path[end..]);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(out.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// `body` (a JSON object with one top-level `model`) with its model replaced by `model` (a
/// `models/` prefix kept); the rest of the object is re-serialised as it was read.
pub fn with_body_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    let slot = object.get_mut("model")?;
    let prefixed = slot.as_str()?.starts_with("models/");
    *slot = serde_json::Value::String(if prefixed {
        format!("models/{model}")
    } else {
        model.to_owned()
    });
    serde_json::to_vec(&object).ok().map(Bytes::from)
}

/// What a request was for, from its path alone (never the raw path: that would be unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// `models/{m}:generateContent`.
    Generate,
    /// `models/{m}:streamGenerateContent`.
    Stream,
    /// `models/{m}:countTokens`.
    CountTokens,
    /// `models/{m}:embedContent` and `:batchEmbedContents`.
    Embed,
    /// `models/{m}:batchGenerateContent` and `batches/...`.
    Batch,
    /// `GET models` and `GET models/{m}`.
    Models,
    /// `files/...`.
    Files,
    /// `upload/...` (resumable media upload).
    Upload,
    /// `cachedContents/...`.
    CachedContents,
    /// `openai/chat/completions`.
    OpenAiChat,
    /// `openai/embeddings`.
    OpenAiEmbeddings,
    /// Anything else under `openai/`.
    OpenAiOther,
    /// A Live API session (WebSocket).
    Live,
    /// Any other path under a known API version (passed through).
    Other,
    /// Not an API path (answered 404 by the gateway).
    NotFound,
}

impl RouteLabel {
    /// Every value, in index order.
    pub const ALL: [RouteLabel; 15] = [
        RouteLabel::Generate,
        RouteLabel::Stream,
        RouteLabel::CountTokens,
        RouteLabel::Embed,
        RouteLabel::Batch,
        RouteLabel::Models,
        RouteLabel::Files,
        RouteLabel::Upload,
        RouteLabel::CachedContents,
        RouteLabel::OpenAiChat,
        RouteLabel::OpenAiEmbeddings,
        RouteLabel::OpenAiOther,
        RouteLabel::Live,
        RouteLabel::Other,
        RouteLabel::NotFound,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Generate => "generate",
            RouteLabel::Stream => "stream",
            RouteLabel::CountTokens => "count_tokens",
            RouteLabel::Embed => "embed",
            RouteLabel::Batch => "batch",
            RouteLabel::Models => "models",
            RouteLabel::Files => "files",
            RouteLabel::Upload => "upload",
            RouteLabel::CachedContents => "cached_contents",
            RouteLabel::OpenAiChat => "openai_chat",
            RouteLabel::OpenAiEmbeddings => "openai_embeddings",
            RouteLabel::OpenAiOther => "openai_other",
            RouteLabel::Live => "live",
            RouteLabel::Other => "other",
            RouteLabel::NotFound => "not_found",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The label of an API path, from what follows its version (`rest`).
fn label_of(upload: bool, rest: &str) -> RouteLabel {
    if upload {
        return RouteLabel::Upload;
    }
    if let Some(openai) = rest.strip_prefix("openai/") {
        return match openai.trim_end_matches('/') {
            "chat/completions" => RouteLabel::OpenAiChat,
            "embeddings" => RouteLabel::OpenAiEmbeddings,
            _ => RouteLabel::OpenAiOther,
        };
    }
    if let Some(m) = rest.strip_prefix("models/") {
        let method = m.find([':', '/']).map_or("", |i| &m[i + 1..]);
        return match method {
            "" => RouteLabel::Models,
            "generateContent" => RouteLabel::Generate,
            "streamGenerateContent" => RouteLabel::Stream,
            "countTokens" => RouteLabel::CountTokens,
            "embedContent" | "batchEmbedContents" => RouteLabel::Embed,
            "batchGenerateContent" => RouteLabel::Batch,
            _ => RouteLabel::Other,
        };
    }
    match rest.split('/').next().unwrap_or("") {
        "models" => RouteLabel::Models,
        "files" => RouteLabel::Files,
        "cachedContents" => RouteLabel::CachedContents,
        "batches" => RouteLabel::Batch,
        _ => RouteLabel::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sessions_have_their_route_with_the_js_sdks_double_slash_too() {
        for path in [
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            "//ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
        ] {
            assert_eq!(Route::ambiguity(path), None, "{path}");
            let r = Route::classify(path).unwrap();
            assert_eq!(
                (r.api, r.label, r.model),
                (Api::Live, RouteLabel::Live, None)
            );
        }
        for path in [
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.Other",
            "/ws/google.ai.generativelanguage.v9.GenerativeService.BidiGenerateContent",
            "///ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
        ] {
            assert_eq!(Route::classify(path), None, "{path}");
        }
    }

    #[test]
    fn routes_and_models_come_from_the_path() {
        let cases = [
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                RouteLabel::Generate,
                Some("gemini-2.5-flash"),
            ),
            (
                "/v1/models/m:streamGenerateContent",
                RouteLabel::Stream,
                Some("m"),
            ),
            (
                "/v1alpha/models/m:countTokens",
                RouteLabel::CountTokens,
                Some("m"),
            ),
            (
                "/v1beta/models/e:batchEmbedContents",
                RouteLabel::Embed,
                Some("e"),
            ),
            ("/v1beta/models", RouteLabel::Models, None),
            ("/v1beta/models/m", RouteLabel::Models, Some("m")),
            ("/v1beta/files/abc", RouteLabel::Files, None),
            ("/upload/v1beta/files", RouteLabel::Upload, None),
            ("/download/v1beta/files/f:download", RouteLabel::Files, None),
            ("/v1beta/cachedContents/x", RouteLabel::CachedContents, None),
            (
                "/v1beta/openai/chat/completions",
                RouteLabel::OpenAiChat,
                None,
            ),
            (
                "/v1beta/openai/embeddings",
                RouteLabel::OpenAiEmbeddings,
                None,
            ),
            ("/v1beta/openai/models", RouteLabel::OpenAiOther, None),
            ("/v1/interactions", RouteLabel::Other, None),
            ("/v2/models", RouteLabel::NotFound, None),
            ("/", RouteLabel::NotFound, None),
            ("", RouteLabel::NotFound, None),
        ];
        for (path, route, model) in cases {
            let parsed = Route::classify(path);
            let got = (
                Route::label_of(parsed.as_ref()),
                parsed.as_ref().and_then(Route::labelled_model),
            );
            assert_eq!(got, (route, model), "{path}");
        }
        for (i, r) in RouteLabel::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    fn route(path: &str) -> Option<(Api, ApiVersion, Option<String>)> {
        Route::classify(path).map(|r| (r.api, r.version, r.model.map(|m| m.to_string())))
    }

    #[test]
    fn classifies_every_surface() {
        use Api::*;
        use ApiVersion::*;
        let m = |s: &str| Some(s.to_string());
        assert_eq!(
            route("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some((Native, V1Beta, m("gemini-2.5-flash")))
        );
        assert_eq!(
            route("/v1/models/gemini-2.5-pro"),
            Some((Native, V1, m("gemini-2.5-pro")))
        );
        assert_eq!(route("/v1alpha/models"), Some((Native, V1Alpha, None)));
        assert_eq!(
            route("/v1beta/openai/chat/completions"),
            Some((OpenAi, V1Beta, None))
        );
        assert_eq!(route("/upload/v1beta/files"), Some((Upload, V1Beta, None)));
        assert_eq!(
            route("/download/v1beta/files/f:download"),
            Some((Download, V1Beta, None))
        );
        assert_eq!(route("/v1/interactions"), Some((Native, V1, None)));
        assert_eq!(
            route("/v1beta/cachedContents/abc"),
            Some((Native, V1Beta, None))
        );
    }

    #[test]
    fn paths_that_could_name_another_model_are_ambiguous() {
        for p in [
            "/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash/%2e%2e/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash/%2E%2E/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash/.%2e/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash%2F..%2Fgemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash%2f..%2fgemini-2.5-pro:generateContent",
            "/v1beta/openai/chat%2Fcompletions",
            "/v1beta/openai/batches/%2e%2e/chat/completions",
            "/v1beta/openai/files/..%2F..%2Fmodels%2Fgemini-2.5-pro:generateContent",
            "/v1beta/openai/files/%2e%2e%2fmodels",
            "/v1beta/models/gemini-2.5-flash\\..\\gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash%5C..%5Cgemini-2.5-pro:generateContent",
            "/v1beta/./models/gemini-2.5-pro:generateContent",
            "/v1beta/models//gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash;x:generateContent",
            "/v1beta/models/gemini%00:generateContent",
            "/v1beta/models/:generateContent",
            "/upload/v1beta/../v1beta/models/gemini-2.5-pro:generateContent",
        ] {
            assert!(Route::ambiguity(p).is_some(), "{p}");
        }
        for p in [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash",
            "/v1beta/models",
            "/v1beta/files/abc-123",
            "/v1beta/cachedContents/",
            "/upload/v1beta/files",
            "/v1beta/openai/chat/completions",
            "/v1beta/openai/batches/batches%2Fb1",
            "/v1beta/openai/files/files%2Ff1/content",
        ] {
            assert_eq!(Route::ambiguity(p), None, "{p}");
        }
    }

    #[test]
    fn an_alias_in_the_path_becomes_its_model() {
        let models = ModelsConfig {
            aliases: [("flash".to_string(), "gemini-2.5-flash".to_string())].into(),
            ..Default::default()
        };
        let ensure = |uri: &str| {
            let mut req = Request::get(uri).body(()).unwrap();
            Route::ensure(&mut req, &models);
            let model = req
                .extensions()
                .get::<Route>()
                .and_then(|r| r.model.clone());
            (req.uri().to_string(), model.map(|m| m.to_string()))
        };
        let m = |s: &str| Some(s.to_string());
        assert_eq!(
            ensure("/v1beta/models/flash:streamGenerateContent?alt=sse"),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".into(),
                m("gemini-2.5-flash")
            )
        );
        assert_eq!(
            ensure("/v1beta/models/fl%61sh"),
            (
                "/v1beta/models/gemini-2.5-flash".into(),
                m("gemini-2.5-flash")
            )
        );
        // Not aliases, or not a path the gateway forwards: untouched.
        for uri in [
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "/v1beta/models/flash/../x:generateContent",
            "/v1beta/models",
        ] {
            assert_eq!(ensure(uri).0, uri);
        }
        assert_eq!(
            ensure("/v1beta/models/flashy:generateContent").1,
            m("flashy")
        );
    }

    #[test]
    fn a_body_model_is_replaced_and_the_rest_kept() {
        let out = with_body_model(br#"{"model":"models/flash","x":[1]}"#, "gemini-2.5-flash");
        let v: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "models/gemini-2.5-flash", "x": [1]})
        );
        assert_eq!(with_body_model(b"[1]", "m"), None);
        assert_eq!(with_body_model(br#"{"contents":[]}"#, "m"), None);
    }

    #[test]
    fn an_encoded_model_name_is_read_decoded() {
        assert_eq!(
            route("/v1beta/models/gemini-2.5-%70ro:generateContent").and_then(|r| r.2),
            Some("gemini-2.5-pro".to_string())
        );
    }

    #[test]
    fn rejects_everything_else() {
        for p in [
            "/",
            "/health",
            "/v2/models",
            "/v1beta",
            "/upload/files",
            "/api/config",
            "v1/models",
        ] {
            assert_eq!(route(p), None, "{p}");
        }
    }
}

//! Which API a request is for, and which model: [`Route`], parsed once from the path by the route
//! layer ([`crate::layers::route`]) and read from the request extension by everything after it.

use std::sync::Arc;

/// Which surface of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Gemini's native REST API (`/v1beta/models/...`, files, cached contents, ...).
    Native,
    /// The OpenAI-compatible surface (`/v1beta/openai/...`), authenticated with a Bearer key.
    OpenAi,
    /// Media upload (`/upload/v1beta/files`).
    Upload,
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
}

impl Route {
    /// Classifies a path; `None` when it is not part of the API.
    pub fn classify(path: &str) -> Option<Route> {
        let (upload, rest) = match path.strip_prefix("/upload/") {
            Some(rest) => (true, rest),
            None => (false, path.strip_prefix('/')?),
        };
        let (version, rest) = rest.split_once('/')?;
        let version = match version {
            "v1" => ApiVersion::V1,
            "v1beta" => ApiVersion::V1Beta,
            "v1alpha" => ApiVersion::V1Alpha,
            _ => return None,
        };
        let api = if upload {
            Api::Upload
        } else if rest.starts_with("openai/") || rest == "openai" {
            Api::OpenAi
        } else {
            Api::Native
        };
        let model = rest
            .strip_prefix("models/")
            .map(|m| m.split([':', '/']).next().unwrap_or(m))
            .filter(|m| !m.is_empty())
            .map(Arc::from);
        Some(Route {
            api,
            version,
            model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(route("/v1/interactions"), Some((Native, V1, None)));
        assert_eq!(
            route("/v1beta/cachedContents/abc"),
            Some((Native, V1Beta, None))
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

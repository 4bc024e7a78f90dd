//! Which endpoint a request is for, by string matching on method and path.

use http::Method;

/// The API versions served, all alike.
const VERSIONS: [&str; 3] = ["v1", "v1beta", "v1alpha"];

/// A request's endpoint and API version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// `v1`, `v1beta` or `v1alpha`.
    pub(crate) version: &'a str,
    pub(crate) route: Route<'a>,
}

/// Every endpoint the mock answers. Models are named without `models/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    ListModels,
    GetModel(&'a str),
    Model(&'a str, ModelAction),
    /// `POST /upload/{v}/files`: start a resumable upload, or send bytes to one (`upload_id=`).
    Upload,
    ListFiles,
    GetFile(&'a str),
    DeleteFile(&'a str),
    CreateCache,
    ListCaches,
    GetCache(&'a str),
    PatchCache(&'a str),
    DeleteCache(&'a str),
    OpenAiChat,
    OpenAiModels,
    OpenAiModel(&'a str),
    OpenAiEmbeddings,
    /// Batches, long-running operations, tuned models, file search stores, downloads
    /// ([`crate::owned`]); `true` on the OpenAI-compatible surface (its batches).
    Owned(bool),
}

/// The `:method` of `POST /{v}/models/{m}:method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModelAction {
    Generate,
    Stream,
    CountTokens,
    Embed,
    BatchEmbed,
    BatchGenerate,
}

impl Route<'_> {
    /// The OpenAI-compatible surface authenticates with `Authorization: Bearer`.
    pub(crate) fn is_openai(&self) -> bool {
        matches!(
            self,
            Route::OpenAiChat
                | Route::OpenAiModels
                | Route::OpenAiModel(_)
                | Route::OpenAiEmbeddings
                | Route::Owned(true)
        )
    }

    /// The model named in a native path, if any (an OpenAI path's model may be percent-encoded).
    pub(crate) fn model(&self) -> Option<&str> {
        match self {
            Route::GetModel(model) | Route::Model(model, _) => Some(model),
            _ => None,
        }
    }
}

/// The endpoint for `method` and `path`, or `None` for anything the mock does not serve.
pub(crate) fn parse<'a>(method: &Method, path: &'a str) -> Option<Target<'a>> {
    if let Some(version) = crate::owned::target(method, path) {
        return Some(Target {
            version,
            route: Route::Owned(path.contains("/openai/")),
        });
    }
    let path = path.strip_prefix('/')?;
    if let Some(upload) = path.strip_prefix("upload/") {
        let (version, rest) = split_version(upload)?;
        return (rest == "files" && method == Method::POST).then_some(Target {
            version,
            route: Route::Upload,
        });
    }
    let (version, rest) = split_version(path)?;
    let route = match (method, rest.split_once('/')) {
        (&Method::GET, None) if rest == "models" => Route::ListModels,
        (&Method::GET, None) if rest == "files" => Route::ListFiles,
        (&Method::GET, None) if rest == "cachedContents" => Route::ListCaches,
        (&Method::POST, None) if rest == "cachedContents" => Route::CreateCache,
        (_, Some(("models", model))) => match model.rsplit_once(':') {
            Some((model, action)) if method == Method::POST && is_name(model) => {
                Route::Model(model, model_action(action)?)
            }
            None if method == Method::GET && is_name(model) => Route::GetModel(model),
            _ => return None,
        },
        (_, Some(("files", id))) if is_name(id) => match *method {
            Method::GET => Route::GetFile(id),
            Method::DELETE => Route::DeleteFile(id),
            _ => return None,
        },
        (_, Some(("cachedContents", id))) if is_name(id) => match *method {
            Method::GET => Route::GetCache(id),
            Method::PATCH => Route::PatchCache(id),
            Method::DELETE => Route::DeleteCache(id),
            _ => return None,
        },
        (_, Some(("openai", endpoint))) => match (method, endpoint) {
            (&Method::POST, "chat/completions") => Route::OpenAiChat,
            (&Method::POST, "embeddings") => Route::OpenAiEmbeddings,
            (&Method::GET, "models") => Route::OpenAiModels,
            (&Method::GET, _) => match endpoint.strip_prefix("models/") {
                Some(model) if !model.is_empty() => Route::OpenAiModel(model),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    };
    Some(Target { version, route })
}

fn split_version(path: &str) -> Option<(&str, &str)> {
    let (version, rest) = path.split_once('/')?;
    VERSIONS.contains(&version).then_some((version, rest))
}

/// A single, non-empty path segment.
fn is_name(segment: &str) -> bool {
    !segment.is_empty() && !segment.contains('/')
}

fn model_action(action: &str) -> Option<ModelAction> {
    Some(match action {
        "generateContent" => ModelAction::Generate,
        "streamGenerateContent" => ModelAction::Stream,
        "countTokens" => ModelAction::CountTokens,
        "embedContent" => ModelAction::Embed,
        "batchEmbedContents" => ModelAction::BatchEmbed,
        "batchGenerateContent" => ModelAction::BatchGenerate,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Option<Route<'_>> {
        parse(&method, path).map(|target| target.route)
    }

    #[test]
    fn model_routes_in_every_version() {
        for version in VERSIONS {
            let path = format!("/{version}/models/gemini-2.5-flash:streamGenerateContent");
            let target = parse(&Method::POST, &path).unwrap();
            assert_eq!(target.version, version);
            assert_eq!(
                target.route,
                Route::Model("gemini-2.5-flash", ModelAction::Stream)
            );
        }
        assert_eq!(
            route(Method::GET, "/v1beta/models"),
            Some(Route::ListModels)
        );
        assert_eq!(
            route(Method::GET, "/v1/models/gemini-2.5-pro"),
            Some(Route::GetModel("gemini-2.5-pro"))
        );
        assert_eq!(
            route(Method::POST, "/v1/models/e:batchEmbedContents"),
            Some(Route::Model("e", ModelAction::BatchEmbed))
        );
    }

    #[test]
    fn resources_and_openai() {
        assert_eq!(
            route(Method::POST, "/upload/v1beta/files"),
            Some(Route::Upload)
        );
        assert_eq!(route(Method::GET, "/v1beta/files"), Some(Route::ListFiles));
        assert_eq!(
            route(Method::DELETE, "/v1beta/files/abc"),
            Some(Route::DeleteFile("abc"))
        );
        assert_eq!(
            route(Method::PATCH, "/v1beta/cachedContents/x"),
            Some(Route::PatchCache("x"))
        );
        assert_eq!(
            route(Method::POST, "/v1beta/openai/chat/completions"),
            Some(Route::OpenAiChat)
        );
        assert_eq!(
            route(Method::GET, "/v1beta/openai/models/models/gemini-2.5-flash"),
            Some(Route::OpenAiModel("models/gemini-2.5-flash"))
        );
        assert!(Route::OpenAiEmbeddings.is_openai());
        assert!(!Route::Upload.is_openai());
    }

    #[test]
    fn everything_else_is_unknown() {
        for (method, path) in [
            (Method::GET, "/v1beta/models/m:generateContent"),
            (Method::POST, "/v1beta/models/m:unknownMethod"),
            (Method::POST, "/v2/models/m:generateContent"),
            (Method::GET, "/v1beta/interactions"),
            (Method::GET, "/upload/v1beta/files"),
            (Method::PUT, "/v1beta/files/abc"),
            (Method::GET, "/v1beta/files/a/b"),
            (Method::GET, "/"),
            (Method::GET, "/v1beta"),
        ] {
            assert_eq!(route(method.clone(), path), None, "{method} {path}");
        }
    }
}

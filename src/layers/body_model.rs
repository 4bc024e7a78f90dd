//! Body model: the model a request names in its JSON body rather than in its path — the
//! OpenAI-compatible surface (`{"model": "gemini-2.5-flash", …}`) and cached-content creation
//! (`{"model": "models/gemini-2.5-flash", …}`).
//!
//! Sits right after buffer body (it needs the body) and before affinity, failover and key balance:
//! it completes the [`Route`]'s model so per-model key limits and rests apply to these requests
//! too, and checks the model against the client's token (`models` claim) like the auth layer does
//! for path models — 403 `PERMISSION_DENIED` when the token does not allow it.
//!
//! A body it cannot read with certainty is refused with 400 `INVALID_ARGUMENT`, never forwarded
//! unchecked: `model` twice (also spelled with escapes, `"mod\u0065l"`), a `model` that is not a
//! non-empty string, or a broken object, when the model comes from the body or the token has a
//! `models` policy; and, for such a token, a body naming another model than the path, or a
//! non-JSON body on the OpenAI surface.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::{Client, ModelPolicy};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::route::{Api, MAX_MODEL_NAME_BYTES, Route, with_body_model};

/// Applies [`BodyModel`].
#[derive(Debug, Clone)]
pub struct BodyModelLayer {
    gateway: Arc<Gateway>,
}

impl BodyModelLayer {
    /// Checks the body's model for every buffered request, with the live config's model
    /// aliases.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for BodyModelLayer {
    type Service = BodyModel<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyModel {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Completes the route's model from the body, and checks it against the client's token.
#[derive(Debug, Clone)]
pub struct BodyModel<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

/// What a JSON body says about its model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyModelOf {
    /// Not a JSON object (or empty): there is no model in it to read.
    NotAnObject,
    /// A JSON object without a top-level `model`.
    None,
    /// Exactly one top-level `model`, a non-empty string (without a `models/` prefix).
    One(String),
    /// A JSON object the gateway cannot read with certainty: `model` twice, not a string or
    /// empty, or the object broken half way. Refused: Google might read another model than us.
    Ambiguous(&'static str),
}

/// Reads the top-level keys of a JSON object, counting every `model` key (serde's derive would
/// keep the last or fail, depending on the version; either way someone reads another model).
struct TopLevel;

impl<'de> serde::de::DeserializeSeed<'de> for TopLevel {
    type Value = BodyModelOf;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<BodyModelOf, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevel {
    type Value = BodyModelOf;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BodyModelOf, A::Error> {
        let mut model: Option<BodyModelOf> = None;
        // Keys are read as owned strings so escapes (`"mod\u0065l"`) are decoded as Google does.
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "model" {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let value = map.next_value::<serde_json::Value>()?;
            if model.is_some() {
                return Ok(BodyModelOf::Ambiguous(
                    "the body names its model more than once",
                ));
            }
            model = Some(match value.as_str() {
                Some(m) => match m.strip_prefix("models/").unwrap_or(m) {
                    "" => BodyModelOf::Ambiguous("the body's model is empty"),
                    m => BodyModelOf::One(m.to_owned()),
                },
                None => BodyModelOf::Ambiguous("the body's model is not a string"),
            });
        }
        Ok(model.unwrap_or(BodyModelOf::None))
    }

    // Anything but an object: no model in it.
    fn visit_bool<E>(self, _: bool) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_unit<E>(self) -> Result<BodyModelOf, E> {
        Ok(BodyModelOf::NotAnObject)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BodyModelOf, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(BodyModelOf::NotAnObject)
    }
}

/// The top-level `model` of a body, read with certainty or not at all.
fn model_of(body: &[u8]) -> BodyModelOf {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut de = serde_json::Deserializer::from_slice(body);
    match (
        first,
        serde::de::DeserializeSeed::deserialize(TopLevel, &mut de),
    ) {
        (_, Ok(found)) if de.end().is_ok() => found,
        // Trailing bytes after a first object: two documents, or one broken; not certain.
        (Some(b'{'), _) => BodyModelOf::Ambiguous("the body is not a single valid JSON object"),
        _ => BodyModelOf::NotAnObject,
    }
}

/// The top-level `model` of a JSON body, without a `models/` prefix.
#[cfg(test)]
fn model_in(body: &[u8]) -> Option<String> {
    match model_of(body) {
        BodyModelOf::One(m) => Some(m),
        _ => None,
    }
}

impl<S> Service<Request<Bytes>> for BodyModel<S>
where
    S: Service<Request<Bytes>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ShortCircuit<S::Future, Result<S::Response, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let Some(route) = req.extensions().get::<Route>() else {
            return ShortCircuit::inner(self.inner.call(req));
        };
        let restricted = req
            .extensions()
            .get::<Client>()
            .is_some_and(|c| !matches!(c.models, ModelPolicy::Any));
        // Only a POST carries a body with a model. The upload API carries file bytes.
        if req.method() != Method::POST || route.api == Api::Upload {
            return ShortCircuit::inner(self.inner.call(req));
        }
        let path_model = route.model.clone();
        // The path names the model and the token may use any: nothing to read (bodies of model
        // calls can be large).
        if path_model.is_some() && !restricted {
            return ShortCircuit::inner(self.inner.call(req));
        }
        let found = model_of(req.body());
        let model = match (found, path_model) {
            (BodyModelOf::Ambiguous(why), _) => {
                return ShortCircuit::ready(Err(GatewayError::InvalidArgument(format!(
                    "{why}; the gateway does not forward a body it cannot read with certainty"
                ))));
            }
            // The path names the model; a different one in the body is only checked for tokens
            // with a model policy (Google may read either).
            (BodyModelOf::One(body), Some(path)) => {
                let live = self.gateway.live();
                let body = live.config.gemini.models.resolve(&body).unwrap_or(&body);
                if restricted && *body != *path {
                    return ShortCircuit::ready(Err(GatewayError::InvalidArgument(format!(
                        "the body names the model {body:?} but the path names {path:?}"
                    ))));
                }
                return ShortCircuit::inner(self.inner.call(req));
            }
            (_, Some(_)) | (BodyModelOf::None, None) => {
                return ShortCircuit::inner(self.inner.call(req));
            }
            // A body that is not JSON on the OpenAI surface (a multipart form can carry a model
            // too): a token restricted to some models cannot be checked against it.
            (BodyModelOf::NotAnObject, None) => {
                if restricted && route.api == Api::OpenAi && !req.body().is_empty() {
                    return ShortCircuit::ready(Err(GatewayError::InvalidArgument(
                        "this token may use only some models, and the gateway cannot tell \
                         which model this body is for: send a JSON body with a \"model\""
                            .into(),
                    )));
                }
                return ShortCircuit::inner(self.inner.call(req));
            }
            (BodyModelOf::One(model), None) => {
                let live = self.gateway.live();
                match live.config.gemini.models.resolve_with_suffix(&model) {
                    Some((real, suffix)) => {
                        if let Some(s) = suffix {
                            req.extensions_mut().insert(s);
                        }
                        let Some(body) = with_body_model(req.body(), real) else {
                            return ShortCircuit::ready(Err(GatewayError::InvalidArgument(
                                "the body is not a JSON object".into(),
                            )));
                        };
                        *req.body_mut() = body;
                        req.headers_mut().remove(http::header::CONTENT_LENGTH);
                        real.to_owned()
                    }
                    None => model,
                }
            }
        };
        if model.len() > MAX_MODEL_NAME_BYTES {
            return ShortCircuit::ready(Err(GatewayError::ModelNameTooLong {
                limit: MAX_MODEL_NAME_BYTES,
            }));
        }
        if let Some(client) = req.extensions().get::<Client>()
            && !client.allows_model(&model)
        {
            return ShortCircuit::ready(Err(GatewayError::PermissionDenied(format!(
                "this token does not allow the model {model:?}"
            ))));
        }
        if let Some(route) = req.extensions_mut().get_mut::<Route>() {
            route.model = Some(Arc::from(model));
        }
        ShortCircuit::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_top_level_model_only() {
        assert_eq!(
            model_in(br#"{"model":"gemini-2.5-flash","messages":[]}"#).as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            model_in(br#"{"model":"models/gemini-2.5-pro","contents":[]}"#).as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            model_in(br#"{"messages":[{"content":"{\"model\":\"x\"}"}],"tools":[{"model":"y"}]}"#),
            None
        );
        assert_eq!(model_in(b"not json"), None);
        assert_eq!(model_in(br#"{"model":""}"#), None);
    }

    #[test]
    fn an_alias_in_the_body_becomes_its_model() {
        let out = with_body_model(br#"{"model":"flash","messages":[]}"#, "gemini-2.5-flash");
        assert_eq!(model_in(&out.unwrap()).as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn a_body_that_cannot_be_read_with_certainty_is_ambiguous() {
        for body in [
            &br#"{"model":"gemini-2.5-flash","model":"gemini-2.5-pro"}"#[..],
            br#"{"model":"gemini-2.5-flash","mod\u0065l":"gemini-2.5-pro"}"#,
            br#"{"model":"gemini-2.5-flash","x":1,"model":null}"#,
            br#"{"model":7}"#,
            br#"{"model":""}"#,
            br#"{"model":"models/"}"#,
            br#"{"model":"gemini-2.5-flash"}{"model":"gemini-2.5-pro"}"#,
            br#"{"model":"gemini-2.5-flash", "#,
        ] {
            assert!(
                matches!(model_of(body), BodyModelOf::Ambiguous(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(model_of(b""), BodyModelOf::NotAnObject);
        assert_eq!(model_of(b"[1,2]"), BodyModelOf::NotAnObject);
        assert_eq!(model_of(br#"{"contents":[]}"#), BodyModelOf::None);
        assert_eq!(
            model_of(br#" {"mod\u0065l":"gemini-2.5-pro"} "#),
            BodyModelOf::One("gemini-2.5-pro".into())
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// A JSON object text with these members, duplicates and all, as a client may send it.
        fn object(members: &[(String, String)]) -> String {
            let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }

        proptest! {
            /// The model is read with certainty or the body is refused: exactly one `model`
            /// key (however it is spelled) with a non-empty string is that model; two or more are
            /// ambiguous; none is none.
            #[test]
            fn one_model_or_refused(
                members in prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "\"model\"", "\"mod\\u0065l\"", "\"\\u006dodel\"", "\"contents\"",
                            "\"models\"", "\"Model\"", "\"messages\"",
                        ]),
                        prop::sample::select(vec![
                            "\"gemini-2.5-flash\"", "\"gemini-2.5-pro\"", "\"models/gemini-2.5-pro\"",
                            "\"\"", "7", "null", "[\"gemini-2.5-pro\"]", "{\"model\":\"x\"}",
                        ]),
                    ),
                    0..6,
                )
            ) {
                let members: Vec<(String, String)> =
                    members.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                let body = object(&members);
                let models: Vec<&String> = members
                    .iter()
                    .filter(|(k, _)| {
                        serde_json::from_str::<String>(k).is_ok_and(|k| k == "model")
                    })
                    .map(|(_, v)| v)
                    .collect();
                let got = model_of(body.as_bytes());
                match models.as_slice() {
                    [] => prop_assert_eq!(got, BodyModelOf::None),
                    [one] => {
                        let value: serde_json::Value = serde_json::from_str(one).unwrap();
                        match value.as_str().map(|m| m.strip_prefix("models/").unwrap_or(m)) {
                            Some(m) if !m.is_empty() => {
                                prop_assert_eq!(got, BodyModelOf::One(m.to_owned()))
                            }
                            _ => prop_assert!(matches!(got, BodyModelOf::Ambiguous(_)), "{}", body),
                        }
                    }
                    _ => prop_assert!(matches!(got, BodyModelOf::Ambiguous(_)), "{}", body),
                }
            }

            /// Any bytes: an answer, never a panic; a body starting like an object but broken is
            /// never read as having no model.
            #[test]
            fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                let got = model_of(&bytes);
                if serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
                    && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
                {
                    prop_assert!(matches!(got, BodyModelOf::Ambiguous(_)));
                }
            }
        }
    }
}

//! Overrides: rules (`gemini.overrides`) that change a request's JSON body before it is sent —
//! `set` replaces what the client sent, `default` fills only what it left out.
//!
//! A rule matches by the real model (after aliasing; `match.models`, glob patterns) and the
//! client (`match.clients`, the token's `sub`); every list that is not empty must match. The
//! matching rules apply in order to `generateContent`, `streamGenerateContent` and OpenAI
//! `chat/completions` bodies. Objects merge key by key (`set: {generationConfig: {thinkingConfig:
//! {thinkingBudget: 0}}}` leaves the client's other `generationConfig` alone); anything else is
//! replaced whole.
//!
//! On the OpenAI-compatible surface the native fields are written as Google reads them there:
//! `thinkingConfig.thinkingBudget` / `includeThoughts` as `extra_body.google.thinking_config`
//! (a `set` removes the client's `reasoning_effort`, which Google refuses beside it; a `default`
//! is not filled when the client sent `reasoning_effort`), `maxOutputTokens` as `max_tokens`.
//! `safetySettings` and `systemInstruction` apply to the native API only.
//!
//! A token may carry rules of its own (`overrides` claim, same shape, issued by an admin for that
//! client): they apply after the config's, matched by model only; a token whose rules break the
//! rules for `gemini.overrides` is refused as malformed.
//!
//! With `gemini.models.suffixes`, what a model name's suffixes ask ([`ModelSuffix`]: a thinking
//! budget, the `google_search` tool on the native API) is applied first, like the client's own
//! body, so configured `set` rules still win.
//!
//! Counted in `gem_proxy_overridden_requests_total`. Only a request a rule matched is
//! re-serialised; every other body is sent byte for byte. A
//! body that is not a JSON object is sent as it is (Google answers it). Sits after body model
//! (the body is buffered and the model known) and auth (the client is known).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::auth::{Client, ModelPattern};
use crate::config::{ModelSuffix, OverrideRule};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::route::{Route, RouteLabel};

/// Applies [`Overrides`].
#[derive(Debug, Clone)]
pub struct OverridesLayer {
    gateway: Arc<Gateway>,
}

impl OverridesLayer {
    /// Applies the live config's `gemini.overrides`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for OverridesLayer {
    type Service = Overrides<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overrides {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Rewrites the bodies the rules match.
#[derive(Debug, Clone)]
pub struct Overrides<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> Service<Request<Bytes>> for Overrides<S>
where
    S: Service<Request<Bytes>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let live = self.gateway.live();
        let rules = &live.config.gemini.overrides;
        let client = req.extensions().get::<Client>();
        let token_rules = client
            .and_then(|c| c.overrides.as_ref())
            .map_or(&[][..], |t| &t.0[..]);
        let suffix = req.extensions().get::<ModelSuffix>().copied();
        if !(rules.is_empty() && token_rules.is_empty() && suffix.is_none())
            && req.method() == Method::POST
            && let Some(route) = req.extensions().get::<Route>()
            && matches!(
                route.label,
                RouteLabel::Generate | RouteLabel::Stream | RouteLabel::OpenAiChat
            )
        {
            let openai = route.label == RouteLabel::OpenAiChat;
            let model = route.model.as_deref().unwrap_or("");
            let id = client.map(|c| &*c.id);
            // What the model name's suffixes ask (like the client's own body), then the config's
            // rules, then the token's (its `match.clients` is moot: it is the client).
            let from_suffix = suffix.and_then(|s| s.thinking_rule());
            let search = suffix.is_some_and(|s| s.search) && !openai;
            let matched: Vec<&OverrideRule> = from_suffix
                .iter()
                .chain(rules.iter().filter(|r| applies(r, model, id)))
                .chain(token_rules.iter().filter(|r| model_matches(r, model)))
                .collect();
            if (!matched.is_empty() || search)
                && let Some(body) = overridden(req.body(), &matched, openai, search)
            {
                *req.body_mut() = body;
                self.gateway.metrics().overridden_request();
            }
        }
        self.inner.call(req)
    }
}

/// Whether `rule` is for this model and client.
fn applies(rule: &OverrideRule, model: &str, client: Option<&str>) -> bool {
    let clients = &rule.matches.clients;
    model_matches(rule, model)
        && (clients.is_empty() || client.is_some_and(|c| clients.iter().any(|x| x == c)))
}

/// Whether `rule` is for this model.
fn model_matches(rule: &OverrideRule, model: &str) -> bool {
    let models = &rule.matches.models;
    models.is_empty() || models.iter().any(|p| ModelPattern::new(p).matches(model))
}

/// `body` with the rules applied (and the `google_search` tool with `search`), re-serialised;
/// `None` when it is not a JSON object.
fn overridden(body: &[u8], rules: &[&OverrideRule], openai: bool, search: bool) -> Option<Bytes> {
    let mut object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if search {
        ModelSuffix::add_search_tool(&mut object);
    }
    for rule in rules {
        if openai {
            let set = to_openai(&rule.set, true);
            if has_thinking(&set) {
                object.remove("reasoning_effort");
            }
            set_into(&mut object, &set);
            // The client's reasoning_effort is its thinking choice: no default budget beside it.
            let default = to_openai(&rule.default, !object.contains_key("reasoning_effort"));
            default_into(&mut object, &default);
        } else {
            set_into(&mut object, &rule.set);
            default_into(&mut object, &rule.default);
        }
    }
    serde_json::to_vec(&object).ok().map(Bytes::from)
}

/// Whether an OpenAI-shaped override sets a thinking config.
fn has_thinking(fields: &Map<String, Value>) -> bool {
    fields
        .get("extra_body")
        .and_then(|e| e.get("google"))
        .and_then(|g| g.get("thinking_config"))
        .is_some()
}

/// The native fields of a rule as the OpenAI-compatible surface reads them (the thinking config
/// only with `thinking`).
fn to_openai(native: &Map<String, Value>, thinking: bool) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(Value::Object(config)) = native.get("generationConfig") else {
        return out;
    };
    if let Some(Value::Object(thinking)) = config.get("thinkingConfig").filter(|_| thinking) {
        let mut t = Map::new();
        for (native, openai) in [
            ("thinkingBudget", "thinking_budget"),
            ("includeThoughts", "include_thoughts"),
        ] {
            if let Some(v) = thinking.get(native) {
                t.insert(openai.into(), v.clone());
            }
        }
        if !t.is_empty() {
            let google = serde_json::json!({ "google": { "thinking_config": Value::Object(t) } });
            out.insert("extra_body".into(), google);
        }
    }
    if let Some(v) = config.get("maxOutputTokens") {
        out.insert("max_tokens".into(), v.clone());
    }
    out
}

/// Writes `fields` over `into`: objects merge key by key, anything else replaces. Keys match in
/// either spelling Google reads (`thinkingBudget` / `thinking_budget`); the rule's replaces the
/// client's.
fn set_into(into: &mut Map<String, Value>, fields: &Map<String, Value>) {
    for (k, v) in fields {
        let have = same_key(into, k);
        match (have.as_ref().and_then(|h| into.get_mut(h)), v) {
            (Some(Value::Object(have)), Value::Object(want)) => set_into(have, want),
            _ => {
                if let Some(h) = have {
                    into.remove(&h);
                }
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Fills in the `fields` that `into` lacks (in either spelling), at any depth of objects; what is
/// there stays.
fn default_into(into: &mut Map<String, Value>, fields: &Map<String, Value>) {
    for (k, v) in fields {
        let have = same_key(into, k);
        match (have.as_ref().and_then(|h| into.get_mut(h)), v) {
            (Some(Value::Object(have)), Value::Object(want)) => default_into(have, want),
            (Some(_), _) => {}
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The key of `object` that names the same field as `key`: Google's JSON reads a field by its
/// lowerCamelCase name or its proto name (`thinkingBudget`, `thinking_budget`), and the SDKs
/// send either (google-genai sends `thinkingConfig: {thinking_budget: …}`).
fn same_key(object: &Map<String, Value>, key: &str) -> Option<String> {
    if object.contains_key(key) {
        return Some(key.to_owned());
    }
    let want = camel(key);
    object.keys().find(|k| camel(k) == want).cloned()
}

/// `key` in lowerCamelCase (`thinking_budget` → `thinkingBudget`).
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverrideMatch;
    use serde_json::json;

    fn rule(models: &[&str], clients: &[&str], set: Value, default: Value) -> OverrideRule {
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        OverrideRule {
            matches: OverrideMatch {
                models: models.iter().map(|s| s.to_string()).collect(),
                clients: clients.iter().map(|s| s.to_string()).collect(),
            },
            set: obj(set),
            default: obj(default),
        }
    }

    fn apply(body: Value, r: &OverrideRule, openai: bool) -> Value {
        let out = overridden(&serde_json::to_vec(&body).unwrap(), &[r], openai, false).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn set_replaces_and_default_fills_only_what_is_missing() {
        let r = rule(
            &[],
            &[],
            json!({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
            json!({"generationConfig": {"maxOutputTokens": 100, "temperature": 0.5}, "systemInstruction": {"parts": [{"text": "Be brief."}]}}),
        );
        let got = apply(
            json!({"contents": [], "generationConfig": {"temperature": 1.0, "thinkingConfig": {"thinkingBudget": 512, "includeThoughts": true}}}),
            &r,
            false,
        );
        assert_eq!(
            got,
            json!({
                "contents": [],
                "generationConfig": {
                    "temperature": 1.0,
                    "maxOutputTokens": 100,
                    "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": true}
                },
                "systemInstruction": {"parts": [{"text": "Be brief."}]}
            })
        );
    }

    #[test]
    fn the_openai_surface_gets_googles_openai_fields() {
        let r = rule(
            &[],
            &[],
            json!({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
            json!({"generationConfig": {"maxOutputTokens": 100}}),
        );
        let got = apply(
            json!({"model": "m", "messages": [], "reasoning_effort": "high", "max_tokens": 7}),
            &r,
            true,
        );
        assert_eq!(
            got,
            json!({"model": "m", "messages": [], "max_tokens": 7,
                   "extra_body": {"google": {"thinking_config": {"thinking_budget": 0}}}})
        );
        // A default thinking budget leaves a client's reasoning_effort alone.
        let d = rule(
            &[],
            &[],
            json!({}),
            json!({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
        );
        let body = json!({"model": "m", "messages": [], "reasoning_effort": "low"});
        assert_eq!(apply(body.clone(), &d, true), body);
    }

    #[test]
    fn a_field_matches_in_either_spelling() {
        let r = rule(
            &[],
            &[],
            json!({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
            json!({"generationConfig": {"maxOutputTokens": 9, "thinkingConfig": {"includeThoughts": false}}}),
        );
        let got = apply(
            json!({"generation_config": {"max_output_tokens": 64, "thinkingConfig": {"thinking_budget": 2048, "include_thoughts": true}}}),
            &r,
            false,
        );
        assert_eq!(
            got,
            json!({"generation_config": {"max_output_tokens": 64, "thinkingConfig": {"thinkingBudget": 0, "include_thoughts": true}}})
        );
    }

    #[test]
    fn rules_match_by_model_pattern_and_client() {
        let r = rule(&["gemini-2.5-*"], &["team-a"], json!({}), json!({}));
        assert!(applies(&r, "gemini-2.5-flash", Some("team-a")));
        assert!(!applies(&r, "gemini-2.5-flash", Some("team-b")));
        assert!(!applies(&r, "gemini-2.5-flash", None));
        assert!(!applies(&r, "gemini-2.0-flash", Some("team-a")));
        assert!(applies(&rule(&[], &[], json!({}), json!({})), "x", None));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_left_alone() {
        let r = rule(&[], &[], json!({"safetySettings": []}), json!({}));
        assert_eq!(overridden(b"not json", &[&r], false, false), None);
        assert_eq!(overridden(b"[1]", &[&r], false, false), None);
    }
}

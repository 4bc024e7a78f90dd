//! Property tests (proptest) for the parsers that face untrusted input: config loading and
//! validation, JWT extraction and verification, and route classification. (Body-model extraction
//! has its own, beside the code in `src/layers/body_model.rs`.)
//!
//! Each runs `PROPTEST_CASES` cases (256 by default) inside `cargo test`; run longer with e.g.
//! `PROPTEST_CASES=100000 cargo test --test it properties`. A failing case is saved under
//! `proptest-regressions/` and replayed first from then on; the cases found so far are also
//! written out as plain regression tests below.

use gem_proxy::auth::{Role, Verifier, token_from_request, unix_now};
use gem_proxy::config::{AuthConfig, ConfigLoader, Secret};
use gem_proxy::route::Route;
use http::{HeaderMap, HeaderValue, Uri};
use proptest::prelude::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-properties";

/// Fields that take a number or a boolean: a string there is a type error, whose message must not
/// repeat the string (it may be a secret pasted in the wrong place).
const TYPED_FIELDS: &[&str] = &[
    "server: { port: V }",
    "server: { workers: V }",
    "server: { max_request_body_bytes: V }",
    "gemini: { timeout_seconds: V, api_keys: [{ id: a, key: k }] }",
    "gemini: { api_keys: [{ id: a, key: k, weight: V }] }",
    "gemini: { api_keys: [{ id: a, key: k, max_requests_per_minute: V }] }",
    "gemini: { api_keys: [{ id: a, key: k, enabled: V }] }",
    "auth: { enabled: V }",
    "metrics: { prometheus_port: V }",
    "log: { format: V }",
    "admin: { protect_observability: V }",
];

fn verifier() -> Verifier {
    Verifier::new(
        &AuthConfig {
            enabled: true,
            jwt_secret: Secret::new(SECRET),
            ..Default::default()
        },
        None,
    )
    .unwrap()
}

proptest! {
    /// Any text is either a config or a list of problems; loading never panics.
    #[test]
    fn config_loading_never_panics(text in ".{0,400}") {
        let _ = ConfigLoader::default().load_str(&text);
    }

    /// YAML-shaped input, built from the config's own words, reaches deeper than random text.
    #[test]
    fn config_like_yaml_never_panics(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "server:", "gemini:", "auth:", "admin:", "metrics:", "api_keys:", "- ", "{", "}",
                "[", "]", ",", ":", "id: a", "key: k", "weight: 0", "port: 99999", "enabled: yes",
                "${X}", "$${", "\n", "  ", "tls:", "jwks_url: http://x", "\"", "'", "&a", "*a",
                "!!binary", "~", "1e309", "-1", "0x10",
            ]),
            0..40,
        )
    ) {
        let text: String = parts.concat();
        if let Ok(config) = ConfigLoader::default().parse_str(&text) {
            let _ = config.validate();
        }
    }

    /// A string in a typed field is refused without being repeated.
    #[test]
    fn type_errors_never_repeat_the_value(
        field in prop::sample::select(TYPED_FIELDS.to_vec()),
        value in "[A-Za-z][A-Za-z0-9_]{11,40}",
    ) {
        let marked = format!("SECRET{value}");
        let yaml = field.replace('V', &format!("\"{marked}\""));
        if let Err(e) = ConfigLoader::default().load_str(&yaml) {
            prop_assert!(!e.to_string().contains(&marked), "{}", e);
        }
    }

    /// `${VAR}` expands only in secret fields: nowhere else can a variable's value come out.
    #[test]
    fn variables_never_reach_a_shown_field(
        field in prop::sample::select(vec!["id", "label", "notes"]),
        before in "[a-z]{0,5}",
    ) {
        let loader = ConfigLoader::with_env([("THE_SECRET", "AIzaVALUE")]);
        let yaml = format!(
            "gemini: {{ api_keys: [{{ {}key: k, {field}: \"{before}${{THE_SECRET}}\" }}] }}",
            if field == "id" { "" } else { "id: a, " }
        );
        match loader.load_str(&yaml) {
            Ok(config) => {
                let shown = format!("{:?}", config.gemini.api_keys);
                prop_assert!(!shown.contains("AIzaVALUE"), "{}", shown);
            }
            Err(e) => prop_assert!(!e.to_string().contains("AIzaVALUE")),
        }
    }

    /// Extraction never panics on any header value or query.
    #[test]
    fn token_extraction_never_panics(
        api_key in prop::option::of("[ -~]{0,64}"),
        authorization in prop::option::of("[ -~]{0,64}"),
        query in "[A-Za-z0-9=&%._-]{0,64}",
    ) {
        let mut headers = HeaderMap::new();
        if let Some(v) = api_key.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert("x-goog-api-key", v);
        }
        if let Some(v) = authorization.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert("authorization", v);
        }
        let uri: Uri = format!("/v1beta/models?{query}").parse().unwrap_or_else(|_| Uri::from_static("/"));
        if let Some(t) = token_from_request(&headers, &uri) {
            let _ = verifier().verify(t, unix_now());
        }
    }

    /// Any text is refused as a token (it was not signed with the secret).
    #[test]
    fn random_tokens_never_verify(text in "[A-Za-z0-9_.=-]{0,300}") {
        prop_assert!(verifier().verify(&text, unix_now()).is_err());
    }

    /// Changing any one character of a good token either breaks it or (base64's spare bits)
    /// leaves the same token behind: never another client, never another role.
    #[test]
    fn a_changed_token_never_becomes_another_client(
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".chars().collect::<Vec<_>>()
        ),
    ) {
        let good = crate::support::client_token(SECRET, "team-a", &["gemini-2.5-flash"]);
        let mut chars: Vec<char> = good.chars().collect();
        let i = at.index(chars.len());
        chars[i] = with;
        let changed: String = chars.into_iter().collect();
        if let Ok(client) = verifier().verify(&changed, unix_now()) {
            prop_assert_eq!(&*client.id, "team-a");
            prop_assert_eq!(client.role, Role::Client);
        }
    }

    /// A path that classifies without complaint has, once decoded, no segment that a server
    /// could resolve to another path; and its model is the decoded one.
    #[test]
    fn classified_paths_have_no_hidden_segments(
        segments in prop::collection::vec(
            prop::sample::select(vec![
                "v1beta", "v1", "upload", "models", "gemini-2.5-flash", "gemini-2.5-pro",
                "gemini-2.5-flash:generateContent", "..", ".", "%2e%2e", "%2E.", "%2f", "%2F..",
                "%5c", "\\", "", "files", "abc", "%70ro", "a%00b", "%ff", "cachedContents",
                "openai", "chat", "completions", ";x", "%3A",
            ]),
            0..8,
        )
    ) {
        let path = format!("/{}", segments.join("/"));
        if Route::ambiguity(&path).is_some() {
            return Ok(());
        }
        let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
        for segment in decoded.split('/') {
            prop_assert!(segment != "." && segment != "..", "{path}");
        }
        prop_assert!(!decoded.contains('\\'), "{path}");
        if let Some(route) = Route::classify(&path)
            && let Some(model) = route.model
        {
            prop_assert!(
                model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
                "{path} → {model}"
            );
        }
    }

    /// Classification never panics on any path.
    #[test]
    fn classification_never_panics(path in "/[ -~]{0,120}") {
        let _ = Route::ambiguity(&path);
        let _ = Route::classify(&path);
    }
}

//! The rules a parsed configuration must follow. Every broken rule is reported, each with the exact
//! path of the key it is about, so one run of `gem-proxy check-config` shows everything to fix.

use std::collections::HashMap;
use std::fmt;

use http::Uri;

use super::{Backend, Config};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `gemini.api_keys[1].weight`; empty for the document as a whole.
    pub path: String,
    /// What is wrong, without any secret value.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Smallest `auth.jwt_secret` accepted: HS256 needs at least 256 bits of key.
pub const MIN_JWT_SECRET_CHARS: usize = 32;
/// Example values published in this project's documentation (and its predecessor's README). Anyone
/// can sign an admin token with them, so they are refused wherever they appear, whatever
/// `auth.enabled` says. Compared without case and surrounding space.
pub const KNOWN_EXAMPLE_SECRETS: &[&str] = &[
    "your-jwt-secret-here",
    "your-secret-key-here",
    "your-secret-here",
    "your-admin-token-here",
    "change-me",
    "changeme",
    "secret",
];

/// Whether `value` is one of [`KNOWN_EXAMPLE_SECRETS`].
pub fn is_known_example_secret(value: &str) -> bool {
    let v = value.trim();
    KNOWN_EXAMPLE_SECRETS
        .iter()
        .any(|known| v.eq_ignore_ascii_case(known))
}

/// Largest `auth.leeway_seconds` accepted.
const MAX_LEEWAY_SECONDS: u64 = 300;
/// Smallest `auth.jwks_refresh_seconds` accepted (be kind to the identity provider).
const MIN_JWKS_REFRESH_SECONDS: u64 = 10;
/// Largest value of any `*_seconds` setting: a year. Far beyond any sensible time-out, and far
/// from the point where adding it to a clock reading overflows.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

impl Config {
    /// Checks every rule; an empty list means the configuration can be used.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |path: &str, msg: &str| p.push(Problem::new(path, msg));

        let s = &self.server;
        if s.host.is_empty() {
            bad("server.host", "must not be empty");
        }
        if s.max_connections == 0 {
            bad("server.max_connections", "must be > 0");
        }
        if s.max_request_body_bytes == 0 {
            bad("server.max_request_body_bytes", "must be > 0");
        }
        if s.max_buffered_body_bytes < s.max_request_body_bytes {
            bad(
                "server.max_buffered_body_bytes",
                "must be at least server.max_request_body_bytes",
            );
        }
        if s.http2.max_concurrent_streams == 0 {
            bad("server.http2.max_concurrent_streams", "must be > 0");
        }
        if s.http2.max_header_list_bytes < 1024 {
            bad(
                "server.http2.max_header_list_bytes",
                "must be at least 1024",
            );
        }
        for (path, v) in [
            (
                "admin.config_watch_interval_seconds",
                self.admin.config_watch_interval_seconds,
            ),
            (
                "server.header_read_timeout_seconds",
                s.header_read_timeout_seconds,
            ),
            (
                "server.request_body_timeout_seconds",
                s.request_body_timeout_seconds,
            ),
            (
                "server.idle_connection_timeout_seconds",
                s.idle_connection_timeout_seconds,
            ),
            ("server.shutdown_grace_seconds", s.shutdown_grace_seconds),
            (
                "server.tls.reload_interval_seconds",
                s.tls.reload_interval_seconds,
            ),
            (
                "server.tls.handshake_timeout_seconds",
                s.tls.handshake_timeout_seconds,
            ),
            ("gemini.timeout_seconds", self.gemini.timeout_seconds),
            (
                "gemini.stream_idle_timeout_seconds",
                self.gemini.stream_idle_timeout_seconds,
            ),
            (
                "gemini.connect_timeout_seconds",
                self.gemini.connect_timeout_seconds,
            ),
            (
                "gemini.default_retry_delay_seconds",
                self.gemini.default_retry_delay_seconds,
            ),
            (
                "gemini.unusable_rest_seconds",
                self.gemini.unusable_rest_seconds,
            ),
            ("auth.jwks_refresh_seconds", self.auth.jwks_refresh_seconds),
            ("cache.ttl_seconds", self.cache.ttl_seconds),
            (
                "gemini.proxy_unreachable_rest_seconds",
                self.gemini.proxy_unreachable_rest_seconds,
            ),
        ] {
            if v > MAX_SECONDS {
                bad(path, &format!("must be at most {MAX_SECONDS} (a year)"));
            }
        }
        for (path, v) in [
            (
                "server.header_read_timeout_seconds",
                s.header_read_timeout_seconds,
            ),
            (
                "server.request_body_timeout_seconds",
                s.request_body_timeout_seconds,
            ),
            ("gemini.timeout_seconds", self.gemini.timeout_seconds),
            (
                "gemini.stream_idle_timeout_seconds",
                self.gemini.stream_idle_timeout_seconds,
            ),
            (
                "gemini.connect_timeout_seconds",
                self.gemini.connect_timeout_seconds,
            ),
            (
                "server.idle_connection_timeout_seconds",
                s.idle_connection_timeout_seconds,
            ),
        ] {
            if v == 0 {
                bad(path, "must be > 0");
            }
        }
        if let Some(url) = &s.public_url
            && let Err(msg) = check_http_url(url)
        {
            bad("server.public_url", &msg);
        }
        for (path, msg) in crate::tls::problems(s) {
            bad(&path, &msg);
        }

        let g = &self.gemini;
        for (path, msg) in super::overrides::problems(&g.overrides) {
            bad(&path, &msg);
        }
        for (path, msg) in g.models.problems() {
            bad(&path, &msg);
        }
        for (path, msg) in g.proxy_problems() {
            bad(&path, &msg);
        }
        if let Err(msg) = check_http_url(&g.base_url) {
            bad("gemini.base_url", &msg);
        }
        if g.api_keys.is_empty() {
            bad("gemini.api_keys", "at least one key is required");
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, k) in g.api_keys.iter().enumerate() {
            let at = |field: &str| format!("gemini.api_keys[{i}].{field}");
            if k.id.trim().is_empty() {
                bad(&at("id"), "must not be empty");
            } else if let Some(first) = seen.insert(k.id.as_str(), i) {
                bad(
                    &at("id"),
                    &format!("duplicate id {:?} (also gemini.api_keys[{first}])", k.id),
                );
            }
            for (field, msg) in crate::vertex::problems(k) {
                bad(&at(field), &format!("member {:?}: {msg}", k.id));
            }
            if let Some(url) = k.vertex.as_ref().and_then(|v| v.base_url.as_deref())
                && let Err(msg) = check_http_url(url)
            {
                bad(&at("vertex.base_url"), &msg);
            }
            if k.backend == Backend::Vertex {
                // Signs in with its service account; `key` is not used.
            } else if k.key.expose().trim().is_empty() {
                bad(&at("key"), "must not be empty");
            } else if k.key.expose().chars().any(|c| c.is_control() || c == ' ') {
                bad(&at("key"), "must not contain spaces or control characters");
            }
            if k.weight == 0 {
                bad(&at("weight"), "must be > 0");
            }
            for (field, v) in [
                ("max_requests_per_minute", k.max_requests_per_minute),
                ("max_requests_per_day", k.max_requests_per_day),
                ("max_tokens_per_minute", k.max_tokens_per_minute),
            ] {
                if v == Some(0) {
                    bad(&at(field), "must be > 0 (or left out for no limit)");
                }
            }
        }

        let a = &self.auth;
        for (path, secret) in [
            ("auth.jwt_secret", &a.jwt_secret),
            ("admin.token", &self.admin.token),
        ] {
            if is_known_example_secret(secret.expose()) {
                bad(
                    path,
                    "is a published example value that anyone can use to sign admin tokens; \
                     generate your own (openssl rand -base64 48), or leave it empty",
                );
            }
        }
        if a.enabled {
            if a.jwt_secret.char_len() < MIN_JWT_SECRET_CHARS {
                bad(
                    "auth.jwt_secret",
                    &format!(
                        "must be at least {MIN_JWT_SECRET_CHARS} characters when auth is enabled (has {})",
                        a.jwt_secret.char_len()
                    ),
                );
            }
            if !a.capability_secret.is_empty()
                && a.capability_secret.char_len() < MIN_JWT_SECRET_CHARS
            {
                bad(
                    "auth.capability_secret",
                    &format!(
                        "must be at least {MIN_JWT_SECRET_CHARS} characters (has {})",
                        a.capability_secret.char_len()
                    ),
                );
            }
            if a.capability_ttl_seconds == 0 {
                bad("auth.capability_ttl_seconds", "must be > 0");
            }
            if let Some(path) = &a.jwt_public_key_path
                && let Err(msg) = crate::auth::load_public_key(path)
            {
                bad("auth.jwt_public_key_path", &msg);
            }
        }
        if let Some(url) = &a.jwks_url {
            if let Err(msg) = check_http_url(url) {
                bad("auth.jwks_url", &msg);
            } else if url.starts_with("http://") && !a.allow_insecure_jwks_url {
                bad(
                    "auth.jwks_url",
                    "must be https:// (whoever can change the keys on the way can sign any \
                     token); set auth.allow_insecure_jwks_url: true to accept http://",
                );
            }
        }
        if a.jwks_refresh_seconds < MIN_JWKS_REFRESH_SECONDS {
            bad(
                "auth.jwks_refresh_seconds",
                &format!("must be at least {MIN_JWKS_REFRESH_SECONDS}"),
            );
        }
        if a.leeway_seconds > MAX_LEEWAY_SECONDS {
            bad(
                "auth.leeway_seconds",
                &format!("must be at most {MAX_LEEWAY_SECONDS} (clock skew, not a grace period)"),
            );
        }
        for (path, v) in [("auth.issuer", &a.issuer), ("auth.audience", &a.audience)] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                bad(path, "must not be empty (leave it out to not check it)");
            }
        }
        for (i, id) in a.revoked_token_ids.iter().enumerate() {
            if id.trim().is_empty() {
                bad(&format!("auth.revoked_token_ids[{i}]"), "must not be empty");
            }
        }

        let admin = &self.admin;
        if !admin.token.is_empty() && admin.token.char_len() < 16 {
            bad(
                "admin.token",
                &format!(
                    "must be at least 16 characters (has {})",
                    admin.token.char_len()
                ),
            );
        }
        let m = &self.metrics;
        if m.enabled && m.prometheus_port != 0 && m.prometheus_port == s.port {
            let admin_host = m.host.as_deref().unwrap_or(&s.host);
            if admin_host == s.host {
                bad("metrics.prometheus_port", "must differ from server.port");
            }
        }
        if m.max_model_labels == 0 {
            bad("metrics.max_model_labels", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&m.otlp.sample_ratio) {
            bad("metrics.otlp.sample_ratio", "must be between 0.0 and 1.0");
        }
        if let Some(url) = &m.otlp.endpoint
            && let Err(e) = check_http_url(url)
        {
            bad("metrics.otlp.endpoint", &e);
        }
        for (path, msg) in self.usage.problems() {
            bad(&path, &msg);
        }
        for (path, msg) in self.cache.problems() {
            bad(&path, &msg);
        }
        if self.state.backend == super::state::StateBackend::Redis {
            for (path, msg) in self.state.redis.problems() {
                bad(&path, &msg);
            }
        }
        p
    }
}

fn check_http_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query string"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigLoader;

    fn problems(yaml: &str) -> Vec<String> {
        ConfigLoader::default()
            .parse_str(yaml)
            .unwrap()
            .validate()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn each_rule_names_its_field() {
        let yaml = r#"
server: { max_connections: 0 }
gemini:
  base_url: "ftp://example.com"
  timeout_seconds: 0
  api_keys:
    - { id: "a", key: "k1", weight: 1 }
    - { id: "a", key: "k2", weight: 0, max_requests_per_minute: 0 }
    - { id: "", key: "" }
"#;
        let got = problems(yaml);
        let want = [
            "server.max_connections: must be > 0",
            "gemini.timeout_seconds: must be > 0",
            "gemini.base_url: \"ftp://example.com\" must start with http:// or https://",
            "gemini.api_keys[1].id: duplicate id \"a\" (also gemini.api_keys[0])",
            "gemini.api_keys[1].weight: must be > 0",
            "gemini.api_keys[1].max_requests_per_minute: must be > 0 (or left out for no limit)",
            "gemini.api_keys[2].id: must not be empty",
            "gemini.api_keys[2].key: must not be empty",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn needs_a_key() {
        assert_eq!(
            problems("{}"),
            ["gemini.api_keys: at least one key is required"]
        );
    }

    #[test]
    fn short_jwt_secret_is_reported_without_its_value() {
        let yaml = "auth: { enabled: true, jwt_secret: \"tooshort\" }\ngemini: { api_keys: [{ id: a, key: k }] }";
        let got = problems(yaml);
        assert!(
            got.contains(
                &"auth.jwt_secret: must be at least 32 characters when auth is enabled (has 8)"
                    .to_string()
            ),
            "{got:?}"
        );
        assert!(!got.iter().any(|m| m.contains("tooshort")));
    }

    #[test]
    fn auth_rules_name_their_keys() {
        let yaml = r#"
gemini: { api_keys: [{ id: a, key: k }] }
auth:
  enabled: true
  jwt_secret: "0123456789abcdef0123456789abcdef"
  jwt_public_key_path: "/nonexistent/key.pem"
  jwks_url: "ftp://idp.example.com/jwks"
  jwks_refresh_seconds: 1
  leeway_seconds: 3600
  issuer: ""
  revoked_token_ids: ["ok", " "]
"#;
        let got = problems(yaml);
        let want = [
            "auth.jwt_public_key_path: cannot read \"/nonexistent/key.pem\": No such file or directory (os error 2)",
            "auth.jwks_url: \"ftp://idp.example.com/jwks\" must start with http:// or https://",
            "auth.jwks_refresh_seconds: must be at least 10",
            "auth.leeway_seconds: must be at most 300 (clock skew, not a grace period)",
            "auth.issuer: must not be empty (leave it out to not check it)",
            "auth.revoked_token_ids[1]: must not be empty",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_good_auth_config_passes() {
        let yaml = r#"
gemini: { api_keys: [{ id: a, key: k }] }
server: { trusted_proxies: ["10.0.0.0/8", "2001:db8::1"] }
auth:
  enabled: true
  jwt_secret: "0123456789abcdef0123456789abcdef"
  issuer: "gem-proxy"
  audience: "gemini"
  jwks_url: "https://idp.example.com/.well-known/jwks.json"
  revoked_token_ids: ["3f2a"]
  rate_limit_per_minute: 100
"#;
        assert_eq!(problems(yaml), Vec::<String>::new());
    }

    #[test]
    fn bad_trusted_proxies_are_reported_with_their_index() {
        let err = ConfigLoader::default()
            .parse_str("server: { trusted_proxies: [\"10.0.0.0/8\", \"nope\"] }")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("server.trusted_proxies[1]"), "{err}");
        assert!(
            err.contains("\"nope\" is not an IP address or network"),
            "{err}"
        );
    }

    #[test]
    fn admin_port_must_differ_from_proxy_port() {
        let yaml = "server: { port: 9090 }\ngemini: { api_keys: [{ id: a, key: k }] }";
        assert_eq!(
            problems(yaml),
            ["metrics.prometheus_port: must differ from server.port"]
        );
    }

    #[test]
    fn a_time_too_large_for_the_clock_is_refused() {
        // 2^63 s would overflow `Instant` the first time a body frame re-arms its idle timer.
        let yaml = r#"
gemini:
  stream_idle_timeout_seconds: 9223372036854775807
  default_retry_delay_seconds: 31536001
  api_keys: [{ id: "a", key: "k1" }]
server: { idle_connection_timeout_seconds: 18446744073709551615 }
"#;
        assert_eq!(
            problems(yaml),
            [
                "server.idle_connection_timeout_seconds: must be at most 31536000 (a year)",
                "gemini.stream_idle_timeout_seconds: must be at most 31536000 (a year)",
                "gemini.default_retry_delay_seconds: must be at most 31536000 (a year)",
            ]
        );
    }

    #[test]
    fn the_body_budget_holds_at_least_one_body() {
        let yaml = r#"
server: { max_request_body_bytes: 1000, max_buffered_body_bytes: 999 }
gemini: { api_keys: [{ id: "a", key: "k1" }] }
"#;
        assert_eq!(
            problems(yaml),
            ["server.max_buffered_body_bytes: must be at least server.max_request_body_bytes"]
        );
    }
}

//! The configuration tree: one typed value, loaded once and swapped whole.
//!
//! Sources, later ones winning: built-in defaults → the YAML file → environment variables
//! `GEM_PROXY__SECTION__KEY` (e.g. `GEM_PROXY__SERVER__PORT=9000`). String values may name
//! environment variables as `${VAR}` so secrets come from the environment or a mounted secret;
//! a variable that is not set is an error naming it.
//!
//! The seed project's YAML (`server`, `gemini.api_keys[{id,key,weight,max_requests_per_minute}]`,
//! `gemini.base_url`, `gemini.timeout_seconds`, `auth`, `metrics`, `server.tls`) loads unchanged; new
//! keys extend it. Unknown keys are errors that carry their path.

mod cache;
mod cidr;
pub mod document;
pub mod egress;
mod load;
mod models;
mod overrides;
mod secret;
pub mod state;
mod suffix;
mod usage;
mod validate;
pub mod versions;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cache::CacheConfig;
pub use cidr::{Cidr, CidrError};
pub(crate) use load::clean_serde_message;
pub use load::{ConfigError, ConfigLoader, ENV_PREFIX, SECRET_FIELDS};
pub use models::ModelsConfig;
pub use overrides::{
    OVERRIDABLE_FIELDS, OverrideMatch, OverrideRule, problems as override_problems,
};
pub use secret::Secret;
pub use suffix::ModelSuffix;
pub use usage::{PriceConfig, UsageConfig};

pub use validate::{KNOWN_EXAMPLE_SECRETS, MIN_JWT_SECRET_CHARS, Problem, is_known_example_secret};

/// The whole configuration of one gateway process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The client-facing proxy listener.
    pub server: ServerConfig,
    /// The upstream: Google's Generative Language API and the keys used to call it.
    pub gemini: GeminiConfig,
    /// Client authentication and per-client limits.
    pub auth: AuthConfig,
    /// The admin listener: health, metrics and (later) the admin API and console.
    pub metrics: MetricsConfig,
    /// The admin API: who may use it, and the config file watch.
    pub admin: AdminConfig,
    /// Log output.
    pub log: LogConfig,
    /// The usage history and its price table.
    pub usage: UsageConfig,
    /// Where key state lives: this process, or Redis shared by several replicas.
    pub state: state::StateConfig,
    /// The response cache (off by default).
    pub cache: CacheConfig,
}

/// `admin`: the admin API on the admin listener (`metrics.prometheus_port`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A static admin credential, sent as `Authorization: Bearer <token>` (compared in constant
    /// time). Admin JWTs (`role: admin`, signed with `auth.jwt_secret`) work too. With neither,
    /// the admin API is off; `/health` and `/metrics` stay open.
    pub token: Secret,
    /// Bind address of the admin listener, e.g. `127.0.0.1` to keep it private; defaults to
    /// `metrics.host`, then `server.host`.
    pub host: Option<String>,
    /// How often the config file is checked for edits made on disk (applied like an admin
    /// change; an invalid edit is refused and reported). `0` turns the watch off.
    pub config_watch_interval_seconds: u64,
    /// Failed admin sign-ins (a wrong `admin.token` or admin JWT) one client address may make
    /// per minute; further attempts get 429 until the minute is over, whatever credential they
    /// carry. `0` turns the limit off.
    pub max_failed_sign_ins_per_minute: u32,
    /// Put the admin listener's `/errors` and the per-client series of `/metrics`
    /// (`gem_proxy_client_*`) behind the admin credential. Off by default: both stay open to
    /// scrapers and dashboards, as `/health` and the rest of `/metrics` always do.
    pub protect_observability: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            host: None,
            config_watch_interval_seconds: 2,
            max_failed_sign_ins_per_minute: 10,
            protect_observability: false,
        }
    }
}

/// `server`: the client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind, e.g. `0.0.0.0` or `127.0.0.1`.
    pub host: String,
    /// Port to bind; `0` picks a free one (logged at start-up).
    pub port: u16,
    /// Tokio worker threads; `0` means one per CPU core.
    pub workers: usize,
    /// Open client connections at most; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Request bodies are buffered (so a failed attempt can be replayed on another key) up to this
    /// size; larger requests are answered 413.
    pub max_request_body_bytes: usize,
    /// Time a client has to send a request's headers (HTTP/1.1) before the connection is closed.
    pub header_read_timeout_seconds: u64,
    /// Time a client has to send a request's whole body once its headers arrived.
    pub request_body_timeout_seconds: u64,
    /// A connection with no request in progress for this long is closed: before its first
    /// byte, between requests on a kept-alive connection, and an HTTP/2 connection that only
    /// answers pings. Applies to the proxy and the admin listener.
    pub idle_connection_timeout_seconds: u64,
    /// All request bodies being buffered at once (across every request in flight) may hold at most
    /// this many bytes; a request that would go over is answered 503 with `Retry-After` instead
    /// of growing memory. At least `max_request_body_bytes`.
    pub max_buffered_body_bytes: usize,
    /// HTTP/2 limits per client connection.
    pub http2: Http2Config,
    /// On SIGTERM/SIGINT, how long in-flight requests and streams may run before the process exits.
    pub shutdown_grace_seconds: u64,
    /// The URL clients use to reach the gateway (e.g. `https://gemini.example.com`). Used to rewrite
    /// upload URLs; when unset they are built from the request's `Host` header.
    pub public_url: Option<String>,
    /// Reverse proxies and load balancers in front of the gateway (addresses or CIDR networks).
    /// Only when a request comes from one of them is its `X-Forwarded-For` header believed, to find
    /// the client's address for per-IP rate limits. Empty: the header is ignored.
    pub trusted_proxies: Vec<Cidr>,
    /// TLS on the proxy listener.
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            workers: 0,
            max_connections: 10_000,
            max_request_body_bytes: 20 * 1024 * 1024,
            header_read_timeout_seconds: 30,
            request_body_timeout_seconds: 60,
            idle_connection_timeout_seconds: 60,
            max_buffered_body_bytes: 512 * 1024 * 1024,
            http2: Http2Config::default(),
            shutdown_grace_seconds: 30,
            public_url: None,
            trusted_proxies: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// `header_read_timeout_seconds` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }
    /// `request_body_timeout_seconds` as a duration.
    pub fn request_body_timeout(&self) -> Duration {
        Duration::from_secs(self.request_body_timeout_seconds)
    }
    /// `shutdown_grace_seconds` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
    /// `idle_connection_timeout_seconds` as a duration.
    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_connection_timeout_seconds)
    }
}

/// `server.http2`: limits on each client's HTTP/2 connection (both listeners), so one connection
/// cannot hold unbounded streams, headers or reset work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams (requests) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest header list (decoded, as HTTP/2 counts it) one request may send, in bytes.
    pub max_header_list_bytes: u32,
    /// Streams the client opened and reset before the gateway accepted them, at most, before the
    /// connection is closed ("rapid reset", CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway had to reset because the client broke the protocol, at most, before the
    /// connection is closed.
    pub max_local_error_reset_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_bytes: 64 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
        }
    }
}

/// `server.tls`: TLS on the proxy listener. See [`crate::tls`].
///
/// Where the certificate comes from: ACME when `acme.enabled`; otherwise the PEM files at
/// `cert_path` and `key_path`, generated (self-signed) when neither exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve HTTPS (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) instead of plain HTTP.
    pub enabled: bool,
    /// PEM certificate chain, leaf first. When neither it nor `key_path` exists, a self-signed
    /// certificate is generated there. Replacing the files takes effect without a restart.
    pub cert_path: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519), written with mode 0600
    /// when generated.
    pub key_path: Option<String>,
    /// Extra names (DNS names or IP addresses) for the generated self-signed certificate, besides
    /// `localhost`, `127.0.0.1`, `::1`, the host name and `server.host`.
    pub san: Vec<String>,
    /// How often `cert_path` and `key_path` are checked for a replacement.
    pub reload_interval_seconds: u64,
    /// Time a client has to complete the TLS handshake before its connection is closed.
    pub handshake_timeout_seconds: u64,
    /// Automatic certificates from an ACME CA (Let's Encrypt).
    pub acme: AcmeConfig,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_path: None,
            key_path: None,
            san: Vec::new(),
            reload_interval_seconds: 10,
            handshake_timeout_seconds: 10,
            acme: AcmeConfig::default(),
        }
    }
}

impl TlsConfig {
    /// `reload_interval_seconds` as a duration.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.reload_interval_seconds)
    }
    /// `handshake_timeout_seconds` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_seconds)
    }
}

/// `server.tls.acme`: certificates from an ACME CA (RFC 8555), obtained and renewed in the
/// background. Used only when `server.tls.enabled` is true too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Obtain and renew certificates automatically.
    pub enabled: bool,
    /// Names the certificate covers (DNS names that resolve to this gateway; no wildcards).
    pub domains: Vec<String>,
    /// Contact address for the CA account.
    pub email: Option<String>,
    /// The CA's directory URL; Let's Encrypt's production directory when left out.
    pub directory_url: Option<String>,
    /// A PEM file with extra CA certificates to trust when talking to the directory (a private
    /// or test CA); the public web roots are always trusted.
    pub directory_ca_path: Option<String>,
    /// Where the account key and the certificates are kept (files mode 0600), so a restart
    /// reuses them instead of asking the CA again.
    pub cache_dir: String,
    /// How the CA checks that we control the domains.
    pub challenge: AcmeChallenge,
    /// The plain-HTTP port for `http-01` challenges (the CA always asks on port 80; use
    /// another only behind a port forward). It redirects everything else to HTTPS.
    pub http_port: u16,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            domains: Vec::new(),
            email: None,
            directory_url: None,
            directory_ca_path: None,
            cache_dir: "config/acme".into(),
            challenge: AcmeChallenge::TlsAlpn01,
            http_port: 80,
        }
    }
}

impl AcmeConfig {
    /// Let's Encrypt's production directory, used when `directory_url` is left out.
    pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

    /// `directory_url`, or Let's Encrypt's.
    pub fn directory(&self) -> &str {
        self.directory_url.as_deref().unwrap_or(Self::LETS_ENCRYPT)
    }
}

/// `server.tls.acme.challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum AcmeChallenge {
    /// `tls-alpn-01`: answered on the proxy port itself, which the CA reaches on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `http-01`: answered by a plain-HTTP listener on `http_port`.
    #[serde(rename = "http-01")]
    Http01,
}

impl TryFrom<String> for AcmeChallenge {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "http-01" => Ok(Self::Http01),
            other => Err(format!(
                "{other:?} is not a supported challenge: use \"tls-alpn-01\" or \"http-01\""
            )),
        }
    }
}

/// `gemini`: the upstream API and its keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeminiConfig {
    /// Where requests go: `https://generativelanguage.googleapis.com`, or any URL serving the same
    /// API (a path prefix is kept).
    pub base_url: String,
    /// Longest wait for the upstream's response headers. Thinking models can be silent for minutes
    /// before their first token, so keep this generous.
    pub timeout_seconds: u64,
    /// Longest silence between two pieces of a response body (a stalled stream ends with an error).
    pub stream_idle_timeout_seconds: u64,
    /// Longest wait for a TCP (and TLS) connection to the upstream.
    pub connect_timeout_seconds: u64,
    /// Extra attempts on other keys after a retryable failure (429, invalid key, 5xx, connect
    /// errors, time-outs), made only while nothing has been sent to the client.
    pub max_retries: u32,
    /// How long a key rests for a model after a 429 that gives no `retryDelay`.
    pub default_retry_delay_seconds: u64,
    /// How long a key rests for a model Google says it cannot use (`FAILED_PRECONDITION`:
    /// billing or region).
    pub unusable_rest_seconds: u64,
    /// Whether to replay, on another key, a request whose outcome is unknown: an upstream
    /// time-out or broken connection after the request was sent, or a 500/502/504. Google may
    /// have processed (and billed) it already, so the default is `false`. Answers that prove
    /// Google did nothing (connect failures, 429, 503 overloaded, an invalid key) are always
    /// replayed; requests that create a resource (uploads, files, cached contents, batches) are
    /// never replayed on an unknown outcome, whatever this says.
    pub retry_on_timeout: bool,
    /// The upstream API keys.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Model aliases and fallbacks (`gemini.models`; none by default).
    pub models: ModelsConfig,
    /// While a server-sent-events answer is open and the upstream silent this long, write a
    /// heartbeat (at an event boundary) so idle timers on the way do not cut it. 0: off.
    pub stream_heartbeat_seconds: u64,
    /// What a heartbeat is: an empty line (every SDK ignores it) or an SSE comment.
    pub stream_heartbeat_style: HeartbeatStyle,
    /// Rules that change request bodies before they are sent (`gemini.overrides`; none by
    /// default).
    pub overrides: Vec<OverrideRule>,
    /// The proxy every key's requests leave through unless the key names its own:
    /// `http://`, `https://` (a `CONNECT` tunnel), `socks5://` or `socks5h://`, with
    /// `user:password@` when it asks for them. A secret (it may carry a password). Unset: direct.
    pub proxy: Option<Secret>,
    /// How long a key rests (for the model of the request) when its proxy cannot be reached or
    /// refuses the tunnel (`proxy_unreachable`).
    pub proxy_unreachable_rest_seconds: u64,
    /// The Live API (WebSocket sessions): `gemini.live`.
    pub live: LiveConfig,
}

/// `gemini.live`: limits of Live API sessions (WebSocket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Open sessions one upstream key may carry at once; a session that would exceed it goes to
    /// another key, or is refused with 429 when every key is full. 0: no limit.
    pub max_sessions_per_key: u32,
}

/// `gemini.stream_heartbeat_style`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatStyle {
    /// An empty line between events: a no-op in SSE, and skipped by google-genai, @google/genai
    /// and openai.
    #[default]
    BlankLine,
    /// An SSE comment, `: keep-alive`: breaks google-genai (Python), which reads every line
    /// that is not `data: ` as JSON.
    Comment,
}

impl HeartbeatStyle {
    /// The bytes of one heartbeat.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            HeartbeatStyle::BlankLine => b"\n",
            HeartbeatStyle::Comment => b": keep-alive\n\n",
        }
    }
}

impl Default for GeminiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://generativelanguage.googleapis.com".into(),
            timeout_seconds: 600,
            stream_idle_timeout_seconds: 300,
            connect_timeout_seconds: 10,
            max_retries: 2,
            default_retry_delay_seconds: 60,
            unusable_rest_seconds: 3600,
            retry_on_timeout: false,
            api_keys: Vec::new(),
            models: ModelsConfig::default(),
            stream_heartbeat_seconds: 0,
            stream_heartbeat_style: HeartbeatStyle::BlankLine,
            overrides: Vec::new(),
            live: LiveConfig::default(),
            proxy: None,
            proxy_unreachable_rest_seconds: 30,
        }
    }
}

impl GeminiConfig {
    /// `timeout_seconds` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
    /// `stream_idle_timeout_seconds` as a duration.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_seconds)
    }
    /// `stream_heartbeat_seconds` as a duration; `None` when heartbeats are off.
    pub fn stream_heartbeat(&self) -> Option<Duration> {
        (self.stream_heartbeat_seconds > 0)
            .then(|| Duration::from_secs(self.stream_heartbeat_seconds))
    }
    /// `connect_timeout_seconds` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }
}

/// One entry of `gemini.api_keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A stable name for the key: shown in logs, metrics and the admin API instead of the key.
    pub id: String,
    /// The Gemini API key itself (for `backend: vertex_express`, the express-mode key; none for
    /// `backend: vertex`). Never logged or shown.
    #[serde(default)]
    pub key: Secret,
    /// Which API this member calls: AI Studio (the default), Vertex AI with a service account,
    /// or Vertex AI express mode.
    #[serde(default, skip_serializing_if = "Backend::is_ai_studio")]
    pub backend: Backend,
    /// Where a Vertex AI member sends and how it signs in (`backend: vertex`; only `base_url`
    /// applies to `vertex_express`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexConfig>,
    /// Share of traffic relative to the other keys.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests per minute this key may carry, per model (Google's quotas are per model).
    #[serde(default)]
    pub max_requests_per_minute: Option<u32>,
    /// Requests per Pacific-time day this key may carry, per model.
    #[serde(default)]
    pub max_requests_per_day: Option<u32>,
    /// Tokens per minute this key may carry, per model (counted from `usageMetadata`).
    #[serde(default)]
    pub max_tokens_per_minute: Option<u32>,
    /// Whether the key is used at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A short name for people (team, project, billing account), shown in the admin API and the
    /// web console next to the id. Not used by the gateway.
    #[serde(default)]
    pub label: Option<String>,
    /// Free-form notes (owner, quota tier, when it was rotated), shown in the admin API and the
    /// web console. Not used by the gateway.
    #[serde(default)]
    pub notes: Option<String>,
    /// The proxy this key's requests leave through (same forms as `gemini.proxy`), or `direct`
    /// to leave it out of `gemini.proxy`. A secret. Unset: `gemini.proxy`.
    #[serde(default)]
    pub proxy: Option<Secret>,
}

/// `gemini.api_keys[].backend`: which API a pool member calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The Gemini Developer API (`generativelanguage.googleapis.com`) with an API key.
    #[default]
    AiStudio,
    /// Vertex AI with a service account (OAuth access tokens, minted in the background).
    Vertex,
    /// Vertex AI express mode: an API key, no project.
    VertexExpress,
}

impl Backend {
    /// True for the default, AI Studio.
    pub fn is_ai_studio(&self) -> bool {
        *self == Backend::AiStudio
    }

    /// The name used in the config, metrics and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::AiStudio => "ai_studio",
            Backend::Vertex => "vertex",
            Backend::VertexExpress => "vertex_express",
        }
    }
}

/// `gemini.api_keys[].vertex`: a Vertex AI member's project, region and credentials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project (`backend: vertex`).
    #[serde(default)]
    pub project: String,
    /// The region (`europe-west4`, `us-central1`, …) or `global` (`backend: vertex`).
    #[serde(default)]
    pub location: String,
    /// A service-account JSON key file (`backend: vertex`; or `credentials`).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// The service-account JSON itself, usually `"${VERTEX_SA_JSON}"` (or `credentials_file`).
    #[serde(default)]
    pub credentials: Secret,
    /// Where requests go; default `https://{location}-aiplatform.googleapis.com`
    /// (`https://aiplatform.googleapis.com` for `global` and for express mode).
    #[serde(default)]
    pub base_url: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

/// `auth`: client authentication (JWT) and per-client rate limits. See `docs/auth.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a token on every proxied request (`Authorization: Bearer`, `x-goog-api-key` or
    /// `?key=`).
    pub enabled: bool,
    /// HMAC secret for HS256/384/512 tokens (the ones `gem-proxy token` issues); 32 characters or
    /// more.
    pub jwt_secret: Secret,
    /// Requests per minute for each client; `0` means no limit. With auth on, each token subject
    /// (`sub`) has its own budget and a token's `rpm` claim overrides this value; with auth off,
    /// each client IP address has one (IPv6 by /64).
    pub rate_limit_per_minute: u32,
    /// When set, tokens must carry this `iss` claim.
    pub issuer: Option<String>,
    /// When set, tokens must carry this value in their `aud` claim. When unset, `aud` is not
    /// checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) for tokens signed by an identity
    /// provider with RS256/384/512, PS256/384/512, ES256/384 or EdDSA.
    pub jwt_public_key_path: Option<String>,
    /// A JWKS URL (an identity provider's public signing keys), fetched at start-up and refreshed
    /// in the background; never fetched while a request waits.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    pub jwks_refresh_seconds: u64,
    /// Accept an `http://` `jwks_url`. Off by default: whoever can change the keys on the way
    /// can sign any token, admin tokens included. Only for an identity provider on the same
    /// host or a private network you trust.
    pub allow_insecure_jwks_url: bool,
    /// Token ids (`jti` claims) that are refused although their signature is good.
    pub revoked_token_ids: Vec<String>,
    /// Tokens (`totalTokenCount`) each client may use per UTC day; `0` means no limit. A token's
    /// `tpd` claim overrides it (its `tpm` claim adds a per-minute budget).
    pub default_tokens_per_day: u64,
    /// HMAC secret of the capabilities in the upload and download URLs the gateway hands out
    /// with auth on (32 characters or more). Unset: derived from `jwt_secret` (replicas sharing
    /// it accept each other's links).
    pub capability_secret: Secret,
    /// How long an upload or download URL handed out with auth on stays usable, in seconds.
    pub capability_ttl_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            jwt_secret: Secret::default(),
            rate_limit_per_minute: 0,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            jwt_public_key_path: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            allow_insecure_jwks_url: false,
            revoked_token_ids: Vec::new(),
            default_tokens_per_day: 0,
            capability_secret: Secret::default(),
            capability_ttl_seconds: 3600,
        }
    }
}

impl AuthConfig {
    /// `leeway_seconds` as a duration.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_seconds)
    }
    /// `jwks_refresh_seconds` as a duration.
    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwks_refresh_seconds)
    }
}

/// `metrics`: the admin listener (`/health`, `/metrics`, `/performance`, `/errors`) and
/// OpenTelemetry traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Start the admin listener and record metrics. When off, nothing is recorded.
    pub enabled: bool,
    /// Its port.
    pub prometheus_port: u16,
    /// Its bind address; defaults to `server.host`.
    pub host: Option<String>,
    /// Label requests and tokens with the client (the token's `sub`) in
    /// `gem_proxy_client_requests_total` and `gem_proxy_client_tokens_total`. Off by default: one
    /// series per client can be many. Read at start-up.
    pub per_client: bool,
    /// Distinct `model` label values at most; further models are counted as `other`. A model is
    /// only admitted once an answer for it succeeded. Read at start-up.
    pub max_model_labels: usize,
    /// Distinct `client` label values at most (with `per_client`); further clients are counted as
    /// `other`. Read at start-up.
    pub max_client_labels: usize,
    /// OpenTelemetry traces exported over OTLP.
    pub otlp: OtlpConfig,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prometheus_port: 9090,
            host: None,
            per_client: false,
            max_model_labels: 50,
            max_client_labels: 1000,
            otlp: OtlpConfig::default(),
        }
    }
}

/// `metrics.otlp`: a span per request (with attempt spans for retries), exported over OTLP.
/// Unset values fall back to the standard `OTEL_EXPORTER_OTLP_*` environment variables, then to
/// the OTLP defaults. Read at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Export traces. Off by default.
    pub enabled: bool,
    /// Collector URL, e.g. `http://otel-collector:4317` (gRPC) or `http://otel-collector:4318`
    /// (HTTP; `/v1/traces` is added when the URL has no path). Unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else
    /// `http://localhost:4317` or `http://localhost:4318/v1/traces`.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces recorded, 0.0–1.0. A client's `traceparent` decides for its own
    /// traces (parent-based sampling).
    pub sample_ratio: f64,
    /// The `service.name` resource attribute. Unset: `OTEL_SERVICE_NAME`, else `gem-proxy`.
    pub service_name: Option<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: None,
            protocol: None,
            sample_ratio: 1.0,
            service_name: None,
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `log`: log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is not set, e.g. `info` or `gem_proxy=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

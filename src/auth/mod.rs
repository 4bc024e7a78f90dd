//! Client authentication: the tokens clients present, what they allow, and how we issue them.
//!
//! A client's "API key" is a JWT. The official SDKs send it unchanged as `x-goog-api-key` (Google's
//! SDKs), `Authorization: Bearer` (the OpenAI SDK) or `?key=`; [`token_from_request`] finds it and
//! [`Verifier::verify`] checks it and turns its claims into a [`Client`]. The upstream client strips
//! every one of those credentials before a request leaves the gateway, and no log line, error
//! message or `Debug` output ever contains a token.
//!
//! - **Signatures:** HS256/384/512 with `auth.jwt_secret` (what [`issue`] produces); RS256/384/512,
//!   PS256/384/512, ES256/384 and EdDSA with `auth.jwt_public_key_path` or the keys of
//!   `auth.jwks_url` ([`Jwks`], refreshed in the background). The header's `alg` only selects among
//!   keys of its own family: an HMAC token is never checked against a public key (algorithm
//!   confusion), and `alg: none` is refused.
//! - **Claims:** `exp` required; `nbf` honoured; `iss` and `aud` checked against `auth.issuer` and
//!   `auth.audience` when set; `auth.leeway_seconds` of clock skew; `jti` refused when listed in
//!   `auth.revoked_token_ids`; `sub` required. Ours: `models` (allowed model patterns), `rpm` (the
//!   client's own per-minute limit) and `role` (`admin`).
//!
//! The [`AuthLayer`](crate::layers::auth::AuthLayer) applies all of this per request.

mod cache;
pub mod capability;
mod claims;
mod extract;
mod issue;
mod keys;
mod models;
mod verify;

use std::sync::Arc;

pub use extract::token_from_request;
pub use issue::{IssueError, Issued, TokenRequest, issue, issue_with_overrides, parse_ttl};
pub use keys::{Jwks, MIN_FETCH_INTERVAL, load_public_key};
pub use models::{ModelPattern, ModelPolicy};
pub use verify::{AuthFailure, Verifier, unix_now};

/// An authenticated client: a request extension inserted by the auth layer, read by the client
/// rate limit (and later the admin API, metrics and usage accounting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Who the client is: the token's `sub` claim. Rate limits and statistics are kept per id.
    pub id: Arc<str>,
    /// What the client may do besides calling the API.
    pub role: Role,
    /// Which models the client may call (`models` claim).
    pub models: ModelPolicy,
    /// The client's own requests-per-minute limit (`rpm` claim; `0` = no limit); `None` means
    /// `auth.rate_limit_per_minute` applies.
    pub rpm: Option<u32>,
    /// The client's tokens-per-minute budget (`tpm` claim; `0` = none).
    pub tpm: Option<u64>,
    /// The client's tokens-per-day budget (`tpd` claim; `0` = none); `None` means
    /// `auth.default_tokens_per_day` applies.
    pub tpd: Option<u64>,
    /// Live API sessions the client may hold open at once (`live_sessions` claim; `None` or `0`:
    /// no limit).
    pub live_sessions: Option<u32>,
    /// The token's own request overrides (`overrides` claim), applied after `gemini.overrides`.
    pub overrides: Option<TokenOverrides>,
    /// The id (`jti`) of the token the client presented, when it has one: the upload and
    /// download capabilities the client earns carry it, so revoking the token revokes them.
    pub token_id: Option<Arc<str>>,
}

/// The rules of a token's `overrides` claim.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOverrides(pub Arc<[crate::config::OverrideRule]>);

// JSON values read from a token hold no NaN, so equality is reflexive.
impl Eq for TokenOverrides {}

impl Client {
    /// Whether the client may call `model` (a bare name like `gemini-2.5-flash` or
    /// `models/gemini-2.5-flash`).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.allows(model)
    }
}

/// A client's role (`role` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Calls the API; the default.
    #[default]
    Client,
    /// Also allowed to use the admin API (`role: admin`).
    Admin,
}

impl Role {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

//! OAuth access tokens for Vertex AI service accounts.
//!
//! A service account's JSON key holds an RSA private key, an email and a `token_uri`. A
//! [`TokenSource`] signs a JWT assertion with that key (RS256, `jsonwebtoken`), exchanges it at the
//! `token_uri` for an access token (RFC 7523, `grant_type=jwt-bearer`), and keeps the token as a
//! ready `Authorization: Bearer` header. One background task per service account refreshes it when
//! half its lifetime has passed (five minutes before expiry for longer-lived tokens), so a request
//! never waits for a token once the first has arrived. A failed exchange is retried with backoff
//! (1 s doubling to 60 s); its reason is kept for `/health`, and the old token is used while it is
//! still valid.
//!
//! Members with the same service account share one source, across config reloads too (a
//! process-wide registry of weak references), so a reload neither fetches a new token nor leaves
//! the member without one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::VertexConfig;
use crate::http_client::{self, HttpClient};

/// The OAuth scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, when a key file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long an assertion is valid (Google accepts at most one hour).
const ASSERTION_LIFETIME_SECONDS: u64 = 3600;
/// The longest wait between two failed exchanges.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A token Vertex refuses this soon after it was fetched is not stale: the account is refused.
const FRESH: Duration = Duration::from_secs(60);
/// Time limit of one exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest token answer read.
const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// A service account: its key, read from its JSON key file, or the metadata server of the
/// machine (GKE, Compute Engine: `credentials: metadata`).
#[derive(Clone)]
pub struct ServiceAccount {
    /// `client_email`: the account (the assertion's issuer); `default` on the metadata server.
    pub email: String,
    /// `token_uri`: where assertions are exchanged for access tokens (the metadata server's
    /// token URL).
    pub token_uri: String,
    /// The signing key and its id; `None` on the metadata server, which signs nothing.
    key: Option<(EncodingKey, Option<String>)>,
    /// Same account, same key, same endpoint: same value.
    fingerprint: u64,
}

/// `vertex.credentials` that means "the metadata server's default account".
pub const METADATA_CREDENTIALS: &str = "metadata";

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// The fields of a service-account JSON key file that matter here.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads the key of a `backend: vertex` member (`credentials_file` or `credentials`). The
    /// message says what is wrong without repeating the key.
    pub fn load(config: &VertexConfig) -> Result<ServiceAccount, String> {
        if config.credentials_file.is_none() && config.credentials.expose() == METADATA_CREDENTIALS
        {
            return Ok(Self::metadata());
        }
        let (json, source) = match (&config.credentials_file, config.credentials.is_empty()) {
            (Some(path), true) => (
                std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?,
                format!("{path:?}"),
            ),
            (None, false) => (
                config.credentials.expose().as_bytes().to_vec(),
                "credentials".to_owned(),
            ),
            (Some(_), false) => {
                return Err("give credentials_file or credentials, not both".into());
            }
            (None, true) => {
                return Err(
                    "a service-account key is needed: credentials_file or credentials".into(),
                );
            }
        };
        Self::parse(&json).map_err(|e| format!("{source}: {e}"))
    }

    /// The metadata server's default account: `http://metadata.google.internal`, or the host
    /// `GCE_METADATA_HOST` names (as Google's client libraries read it).
    pub fn metadata() -> ServiceAccount {
        let host = std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "metadata.google.internal".into());
        let token_uri =
            format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
        let mut hasher = DefaultHasher::new();
        token_uri.hash(&mut hasher);
        ServiceAccount {
            email: "default (metadata server)".into(),
            token_uri,
            key: None,
            fingerprint: hasher.finish(),
        }
    }

    /// Parses a service-account JSON key.
    pub fn parse(json: &[u8]) -> Result<ServiceAccount, String> {
        let file: KeyFile = serde_json::from_slice(json).map_err(|e| {
            // serde_json's messages name fields and positions, never values.
            format!("not a service-account JSON key ({e})")
        })?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "type is {kind:?}, not \"service_account\" (a service-account key file is needed)"
            ));
        }
        if file.client_email.trim().is_empty() {
            return Err("client_email is empty".into());
        }
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| "private_key is not an RSA private key in PEM form".to_owned())?;
        let token_uri = file.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err(format!("token_uri {token_uri:?} is not an http(s) URL"));
        }
        let mut hasher = DefaultHasher::new();
        (&file.client_email, &token_uri, &file.private_key).hash(&mut hasher);
        Ok(ServiceAccount {
            email: file.client_email,
            token_uri,
            key: Some((key, file.private_key_id)),
            fingerprint: hasher.finish(),
        })
    }

    /// A signed assertion asking for a token with `scope`, issued at `now` (Unix seconds).
    fn assertion(
        &self,
        key: &EncodingKey,
        key_id: Option<&str>,
        now: u64,
    ) -> Result<String, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key_id.map(str::to_owned);
        let claims = Claims {
            iss: &self.email,
            scope: CLOUD_PLATFORM_SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECONDS,
        };
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| format!("cannot sign the token assertion: {e}"))
    }
}

/// What `/health` shows of a token source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenStatus {
    /// Whether a valid token is at hand.
    pub ready: bool,
    /// Seconds until the current token expires (none without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// How many tokens were fetched so far.
    pub fetched: u64,
    /// Why the last exchange failed (cleared by the next success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct TokenState {
    /// `Bearer <token>`, marked sensitive.
    header: Option<HeaderValue>,
    expires: Option<Instant>,
    /// When the current token was fetched.
    fetched_at: Option<Instant>,
    fetched: u64,
    error: Option<String>,
}

/// One service account's access token, refreshed in the background.
#[derive(Debug)]
pub struct TokenSource {
    account: Result<ServiceAccount, String>,
    state: RwLock<TokenState>,
    started: AtomicBool,
    /// Wakes the refresh loop early (a token Vertex refused).
    wake: Arc<Notify>,
}

/// The live sources, by service-account fingerprint.
static SOURCES: Mutex<Option<HashMap<u64, Weak<TokenSource>>>> = Mutex::new(None);

impl TokenSource {
    /// The source for this member's service account: the one already running for it, or a new
    /// one (not started). A key that cannot be read gives a source that never has a token and
    /// says why.
    pub fn for_config(config: &VertexConfig) -> Arc<TokenSource> {
        match ServiceAccount::load(config) {
            Ok(account) => Self::shared(account),
            Err(e) => Arc::new(TokenSource::new(Err(e))),
        }
    }

    /// The source for `account`, shared with every member (and config snapshot) using it.
    pub fn shared(account: ServiceAccount) -> Arc<TokenSource> {
        let mut guard = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
        let sources = guard.get_or_insert_with(HashMap::new);
        sources.retain(|_, weak| weak.strong_count() > 0);
        if let Some(source) = sources.get(&account.fingerprint).and_then(Weak::upgrade) {
            return source;
        }
        let fingerprint = account.fingerprint;
        let source = Arc::new(TokenSource::new(Ok(account)));
        sources.insert(fingerprint, Arc::downgrade(&source));
        source
    }

    fn new(account: Result<ServiceAccount, String>) -> Self {
        Self {
            account,
            state: RwLock::new(TokenState::default()),
            started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Starts the background refresh (once; later calls do nothing). Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.account.is_err() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(refresh(Arc::downgrade(self), self.wake.clone()));
    }

    /// Which token is current: the number of tokens fetched so far (0 before the first).
    pub fn generation(&self) -> u64 {
        self.state.read().unwrap_or_else(|e| e.into_inner()).fetched
    }

    /// Vertex answered 401 to token number `generation`. A token that had been in use for a while
    /// (revoked, or expired early) is dropped and a new one fetched at once — the member is
    /// skipped until it arrives — and `true` says the member's credentials are fine. A token
    /// refused within [`FRESH`] of being fetched means the account itself is refused: `false`.
    /// A 401 to a token already replaced changes nothing (`true`).
    pub fn rejected(&self, generation: u64, now: Instant) -> bool {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.fetched != generation || state.header.is_none() {
            return true;
        }
        if state
            .fetched_at
            .is_some_and(|at| now.saturating_duration_since(at) < FRESH)
        {
            return false;
        }
        state.header = None;
        state.expires = None;
        drop(state);
        self.wake.notify_one();
        true
    }

    /// `Authorization: Bearer <token>` while a token is valid at `now`.
    pub fn header(&self, now: Instant) -> Option<HeaderValue> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match (&state.header, state.expires) {
            (Some(h), Some(expires)) if expires > now => Some(h.clone()),
            _ => None,
        }
    }

    /// Whether a valid token is at hand at `now`.
    pub fn is_ready(&self, now: Instant) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.header.is_some() && state.expires.is_some_and(|e| e > now)
    }

    /// Why the member cannot be used now, if it cannot.
    pub fn unready_reason(&self, now: Instant) -> Option<String> {
        if self.is_ready(now) {
            return None;
        }
        if let Err(e) = &self.account {
            return Some(format!("the service-account key cannot be used: {e}"));
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        Some(match (&state.error, state.fetched) {
            (Some(e), _) => format!("no access token: {e}"),
            (None, 0) => "no access token yet (the first is being fetched)".to_owned(),
            (None, _) => "the access token expired (a new one is being fetched)".to_owned(),
        })
    }

    /// What `/health` shows.
    pub fn status(&self, now: Instant) -> TokenStatus {
        let ready = self.is_ready(now);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        TokenStatus {
            ready,
            expires_in_seconds: state
                .expires
                .filter(|_| ready)
                .map(|e| e.saturating_duration_since(now).as_secs()),
            fetched: state.fetched,
            error: match &self.account {
                Err(e) => Some(e.clone()),
                Ok(_) => state.error.clone(),
            },
        }
    }

    /// The service account's email, when its key could be read.
    pub fn email(&self) -> Option<&str> {
        self.account.as_ref().ok().map(|a| a.email.as_str())
    }

    fn set_token(&self, token: &str, lifetime: Duration) -> Result<(), String> {
        let mut header = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token endpoint answered a token that is no header value")?;
        header.set_sensitive(true);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.header = Some(header);
        let now = Instant::now();
        state.expires = Some(now + lifetime);
        state.fetched_at = Some(now);
        state.fetched += 1;
        state.error = None;
        Ok(())
    }

    fn set_error(&self, error: String) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.error = Some(error);
    }
}

/// When to refresh a token that lives `lifetime`: five minutes before it expires, or half way
/// through a shorter life (at least a second from now).
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 2).min(Duration::from_secs(300));
    lifetime.saturating_sub(margin).max(Duration::from_secs(1))
}

/// The refresh loop of one source; ends when no member holds the source any more.
async fn refresh(source: Weak<TokenSource>, wake: Arc<Notify>) {
    let client = http_client::build_client(Duration::from_secs(10));
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(me) = source.upgrade() else { return };
        let Ok(account) = &me.account else { return };
        let wait = match exchange(&client, account).await {
            Ok((token, lifetime)) => match me.set_token(&token, lifetime) {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    tracing::debug!(account = %account.email, lifetime_seconds = lifetime.as_secs(), "vertex: access token fetched");
                    refresh_after(lifetime)
                }
                Err(e) => {
                    me.set_error(e.to_owned());
                    backoff
                }
            },
            Err(e) => {
                tracing::warn!(account = %account.email, error = %e, "vertex: cannot get an access token");
                me.set_error(e);
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        drop(me);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

/// Exchanges a fresh assertion for an access token and its lifetime.
async fn exchange(
    client: &HttpClient,
    account: &ServiceAccount,
) -> Result<(String, Duration), String> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Refusal {
        error: serde_json::Value,
        #[serde(default)]
        error_description: Option<String>,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let req = match &account.key {
        Some((key, key_id)) => {
            let assertion = account.assertion(key, key_id.as_deref(), now)?;
            let body = format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
            );
            Request::builder()
                .method(Method::POST)
                .uri(&account.token_uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))
        }
        // The metadata server hands the machine's account's token to whoever asks with this
        // header (only from inside the machine).
        None => Request::builder()
            .method(Method::GET)
            .uri(&account.token_uri)
            .header("metadata-flavor", "Google")
            .body(Full::new(Bytes::new())),
    }
        .map_err(|_| format!("token_uri {:?} is not a usable URL", account.token_uri))?;
    let res = tokio::time::timeout(EXCHANGE_TIMEOUT, client.request(req))
        .await
        .map_err(|_| {
            format!(
                "the token endpoint did not answer within {} s",
                EXCHANGE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("the token endpoint could not be reached: {e}"))?;
    let status = res.status();
    let bytes = Limited::new(res.into_body(), MAX_TOKEN_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|_| "the token endpoint's answer could not be read".to_owned())?
        .to_bytes();
    if !status.is_success() {
        let why = serde_json::from_slice::<Refusal>(&bytes)
            .ok()
            .map(|r| match (r.error.as_str(), r.error_description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e.to_owned(),
                (None, d) => d.unwrap_or_else(|| r.error.to_string()),
            })
            .unwrap_or_else(|| "no reason given".into());
        return Err(format!("the token endpoint answered {status}: {why}"));
    }
    let answer: Answer = serde_json::from_slice(&bytes)
        .map_err(|_| "the token endpoint's answer has no access_token".to_owned())?;
    Ok((
        answer.access_token,
        Duration::from_secs(answer.expires_in.unwrap_or(3600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn a_broken_key_file_says_what_is_wrong_without_the_key() {
        let e = ServiceAccount::parse(b"{}").unwrap_err();
        assert!(e.contains("client_email"), "{e}");
        let e = ServiceAccount::parse(
            br#"{"type":"service_account","client_email":"a@b","private_key":"SECRETSTUFF"}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("not an RSA private key") && !e.contains("SECRETSTUFF"),
            "{e}"
        );
        let e = ServiceAccount::parse(
            br#"{"type":"authorized_user","client_email":"a@b","private_key":"x"}"#,
        )
        .unwrap_err();
        assert!(e.contains("authorized_user"), "{e}");
    }
}

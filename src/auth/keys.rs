//! Public keys for tokens an identity provider signs: one PEM file (`auth.jwt_public_key_path`) or
//! a JWKS URL (`auth.jwks_url`).
//!
//! The JWKS is fetched in the background — at start-up, every `auth.jwks_refresh_seconds`, and
//! early when a token names a key id we do not know (at most once per [`MIN_FETCH_INTERVAL`]) —
//! and read on the request path through an [`ArcSwap`]: a request never waits for the network. A
//! failed fetch keeps the keys we have and is retried with back-off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::sync::Notify;

use crate::http_client::{HttpClient, build_client};

/// The soonest a JWKS is fetched again after a fetch, whatever asks for it.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a PEM public key: RSA (`PUBLIC KEY` or `RSA PUBLIC KEY`), EC P-256/P-384 or Ed25519.
/// The error says why, without the file's content.
pub fn load_public_key(path: &str) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    parse_public_key(&pem)
        .ok_or_else(|| format!("{path:?} holds no PEM public key (RSA, EC P-256/P-384 or Ed25519)"))
}

pub(crate) fn parse_public_key(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .ok()
}

/// One verification key with what we know about it.
#[derive(Debug)]
pub(crate) struct PublicKey {
    /// `kid`, when the key has one.
    pub kid: Option<String>,
    /// The algorithm the key is restricted to (`alg` of a JWK), if any.
    pub alg: Option<Algorithm>,
    /// The key.
    pub key: DecodingKey,
}

impl PublicKey {
    /// Whether this key may check a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The signing keys published at a JWKS URL, kept fresh in the background.
#[derive(Debug)]
pub struct Jwks {
    /// As configured, to tell whether a reloaded configuration names the same URL.
    source: String,
    url: Uri,
    keys: ArcSwap<Vec<PublicKey>>,
    loaded: AtomicBool,
    refresh_seconds: AtomicU64,
    wake: Notify,
}

impl Jwks {
    /// An empty set for `url`; nothing is fetched until [`Jwks::start`].
    pub fn new(url: &str, refresh: Duration) -> Result<Arc<Self>, String> {
        let source = url;
        let url: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        Ok(Arc::new(Self {
            source: source.to_owned(),
            url,
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            refresh_seconds: AtomicU64::new(refresh.as_secs().max(1)),
            wake: Notify::new(),
        }))
    }

    /// The URL the keys come from.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Whether this set was made for `url` (as configured).
    pub fn is_for(&self, url: &str) -> bool {
        self.source == url
    }

    /// Whether a fetch has succeeded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// How many keys are usable.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes the refresh interval of a running refresher (config reloads).
    pub fn set_refresh(&self, refresh: Duration) {
        self.refresh_seconds
            .store(refresh.as_secs().max(1), Ordering::Relaxed);
    }

    /// Asks the refresher for an early fetch (a token named a key id we do not know). Never
    /// waits.
    pub(crate) fn nudge(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<Vec<PublicKey>>> {
        self.keys.load()
    }

    /// Starts the background refresher on the current tokio runtime; it stops by itself once
    /// this set is dropped. Outside a runtime (tools, benches) nothing is started.
    pub fn start(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(url = %self.url, "no async runtime: the JWKS will not be fetched");
            return;
        };
        handle.spawn(refresh_loop(Arc::downgrade(self)));
    }

    /// Replaces the keys with those of a JWKS document; returns how many are usable.
    pub fn load_document(&self, body: &[u8]) -> Result<usize, String> {
        let keys = parse_jwks(body)?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    async fn fetch(&self, client: &HttpClient) -> Result<usize, String> {
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.url.clone();
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let res = tokio::time::timeout(FETCH_TIMEOUT, async {
            let res = client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))??;
        match res {
            (StatusCode::OK, body) => self.load_document(&body),
            (status, _) => Err(format!("HTTP {status}")),
        }
    }
}

/// Parses a JWKS document, keeping the keys that can verify signatures: RSA, EC and OKP keys not
/// marked for encryption. Symmetric (`oct`) keys are never taken from a JWKS. Keys we cannot use
/// are skipped, not fatal.
fn parse_jwks(body: &[u8]) -> Result<Vec<PublicKey>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if key.family() == AlgorithmFamily::Hmac {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => match Algorithm::try_from(a) {
                Ok(a) if a.family() == key.family() => Some(a),
                _ => continue,
            },
            None => None,
        };
        keys.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

async fn refresh_loop(jwks: Weak<Jwks>) {
    let client = build_client(FETCH_TIMEOUT);
    let mut failures: u32 = 0;
    loop {
        // Only a weak reference between rounds: once the configuration drops the set, the loop
        // ends (at the latest one wait later).
        let Some(set) = jwks.upgrade() else { return };
        let refresh = Duration::from_secs(set.refresh_seconds.load(Ordering::Relaxed));
        let first = !set.is_loaded();
        let wait = match set.fetch(&client).await {
            Ok(n) => {
                if first || failures > 0 {
                    tracing::info!(url = %set.url, keys = n, "JWKS loaded");
                } else {
                    tracing::debug!(url = %set.url, keys = n, "JWKS refreshed");
                }
                failures = 0;
                refresh
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_secs(2u64.saturating_pow(failures.min(16)))
                    .min(refresh)
                    .max(Duration::from_secs(1));
                tracing::warn!(url = %set.url, error = %e, retry_in_seconds = backoff.as_secs(),
                    "JWKS fetch failed; keeping the keys we have");
                backoff
            }
        };
        let fetched = tokio::time::Instant::now();
        tokio::select! {
            () = tokio::time::sleep_until(fetched + wait) => {}
            () = set.wake.notified() => {
                // Nudged (unknown kid): fetch early, but not more often than MIN_FETCH_INTERVAL.
                tokio::time::sleep_until(fetched + MIN_FETCH_INTERVAL.min(wait)).await;
            }
        }
        drop(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_keeps_only_signature_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"enc","use":"enc"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ec","alg":"ES256"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"mismatch","alg":"RS256"},
            {"kty":"weird","kid":"unknown"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["ed", "ec"]);
        assert!(keys[1].accepts(Algorithm::ES256));
        assert!(!keys[1].accepts(Algorithm::ES384));
        assert!(!keys[1].accepts(Algorithm::HS256));
        assert!(keys[0].accepts(Algorithm::EdDSA));
        assert!(parse_jwks(b"not json").is_err());
    }
}

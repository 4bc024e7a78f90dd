//! Token verification: signature first, then the claims, then a [`Client`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::cache::TokenCache;
use super::claims::Claims;
use super::keys::{Jwks, PublicKey, load_public_key};
use super::{Client, ModelPolicy, Role, TokenOverrides};
use crate::config::AuthConfig;

/// Tokens longer than this are refused before any work is done on them.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Algorithms we verify. `none` is not among them, and never will be.
const ACCEPTED: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused. The `Display` text is what the client reads: it says what is wrong
/// and never repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No token in the request.
    #[error(
        "missing credentials: send the token as `x-goog-api-key: <token>`, `Authorization: Bearer <token>` or `?key=<token>`"
    )]
    Missing,
    /// Not three base64url parts with a JSON header.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg: none`.
    #[error("unsigned tokens (alg: none) are not accepted")]
    Unsigned,
    /// An algorithm we do not know or do not accept.
    #[error("the token's signing algorithm is not supported")]
    UnsupportedAlgorithm,
    /// A known algorithm for which no key is configured (e.g. RS256 without a public key).
    #[error("{0:?} tokens are not accepted: no key for them is configured")]
    NoKeyFor(Algorithm),
    /// The header's `kid` names no key we have.
    #[error("the token was signed by an unknown key (kid)")]
    UnknownKey,
    /// The identity provider's keys have not been fetched yet (a server-side problem).
    #[error("the keys to verify this token are not available yet; try again shortly")]
    KeysUnavailable,
    /// The signature does not match.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The claims are not JSON or have wrong types.
    #[error("the token's claims are malformed")]
    BadClaims,
    /// No `exp` claim.
    #[error("the token has no expiry (exp claim)")]
    NoExpiry,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf claim)")]
    NotYetValid,
    /// `iss` differs from `auth.issuer`.
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    /// `aud` does not contain `auth.audience`.
    #[error("the token's audience (aud) does not include this gateway")]
    WrongAudience,
    /// No `sub` claim.
    #[error("the token has no subject (sub claim)")]
    NoSubject,
    /// `jti` is in `auth.revoked_token_ids`.
    #[error("the token has been revoked")]
    Revoked,
    /// The capability was made for a token whose `jti` is in `auth.revoked_token_ids`.
    #[error("the link's capability belongs to a token that has been revoked")]
    CapabilityRevoked,
    /// An upload or download link's capability (`key=gpcap1.…`) is not one the gateway made.
    #[error("the link's capability is invalid; ask the gateway for a new upload or download URL")]
    CapabilityInvalid,
    /// The capability's time (`auth.capability_ttl_seconds`) is over.
    #[error("the link's capability has expired; ask the gateway for a new upload or download URL")]
    CapabilityExpired,
}

impl AuthFailure {
    /// A stable, low-cardinality name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unsigned => "unsigned",
            AuthFailure::UnsupportedAlgorithm => "unsupported_algorithm",
            AuthFailure::NoKeyFor(_) => "no_key_for_algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::KeysUnavailable => "keys_unavailable",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::BadClaims => "bad_claims",
            AuthFailure::NoExpiry => "no_expiry",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::NoSubject => "no_subject",
            AuthFailure::Revoked => "revoked",
            AuthFailure::CapabilityInvalid => "capability_invalid",
            AuthFailure::CapabilityExpired => "capability_expired",
            AuthFailure::CapabilityRevoked => "capability_revoked",
        }
    }
}

/// Seconds since the epoch, the clock tokens are judged by.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks tokens against one `auth` configuration. Built once per configuration (key material
/// parsed); [`Verifier::verify`] is then allocation-light and lock-free.
///
/// jsonwebtoken checks the signature (with the key of the header's algorithm family, which it
/// enforces too); the claims are parsed once and checked here, against a clock the caller passes
/// in.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    public_key: Option<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    revoked: HashSet<String>,
    /// HMAC-signed tokens already verified (see [`super::cache`]).
    verified: TokenCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_key", &self.public_key.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| j.url().to_string()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `config`. The public key file is read now; a JWKS set is created empty
    /// (reuse `jwks` when its URL is unchanged, so a config reload keeps fetched keys) and is
    /// fetched by its own refresher, which the caller starts.
    pub fn new(config: &AuthConfig, jwks: Option<Arc<Jwks>>) -> Result<Self, String> {
        let secret = config.jwt_secret.expose();
        let hmac = (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes()));
        let public_key = match &config.jwt_public_key_path {
            Some(path) => Some(PublicKey {
                kid: None,
                alg: None,
                key: load_public_key(path)?,
            }),
            None => None,
        };
        let jwks = match &config.jwks_url {
            Some(url) => Some(match jwks {
                Some(j) if j.is_for(url) => {
                    j.set_refresh(config.jwks_refresh());
                    j
                }
                _ => Jwks::new(url, config.jwks_refresh())?,
            }),
            None => None,
        };
        Ok(Self {
            hmac,
            public_key,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_seconds,
            revoked: config.revoked_token_ids.iter().cloned().collect(),
            verified: TokenCache::default(),
        })
    }

    /// Whether the token id `jti` is in `auth.revoked_token_ids` (as this verifier's config
    /// had it: a reload, also one shared by another replica, builds a new verifier).
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }

    /// The JWKS set, when `auth.jwks_url` is configured.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Checks `token` at time `now` (seconds since the epoch, see [`unix_now`]).
    pub fn verify(&self, token: &str, now: u64) -> Result<Client, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthFailure::Malformed);
        }
        if let Some(client) = self.verified.get(token, now) {
            return Ok(client);
        }
        let header = Header::parse(token)?;
        let alg = header.algorithm()?;
        match alg.family() {
            AlgorithmFamily::Hmac => {
                let key = self.hmac.as_ref().ok_or(AuthFailure::NoKeyFor(alg))?;
                let claims = decode(token, key, alg)?;
                let window = self.window(&claims);
                let client = self.check_claims(claims, now)?;
                if let Some((from, until)) = window {
                    self.verified.put(token, &client, from, until);
                }
                Ok(client)
            }
            _ => {
                let claims = self.decode_public(token, alg, header.kid.as_deref())?;
                self.check_claims(claims, now)
            }
        }
    }

    /// The seconds between which a token with these claims passes the time checks of
    /// [`Self::check_claims`] (`None` without `exp`: it never does).
    fn window(&self, c: &Claims) -> Option<(u64, u64)> {
        let until = c.exp.as_ref()?.0.saturating_add(self.leeway);
        let from = c
            .nbf
            .as_ref()
            .map_or(0, |nbf| nbf.0.saturating_sub(self.leeway));
        Some((from, until))
    }

    /// Verifies with the public key file or the JWKS: by `kid` when the token names one, else
    /// with every key of the right family until one fits.
    fn decode_public(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Claims, AuthFailure> {
        let jwks_keys = self.jwks.as_ref().map(|j| j.keys());
        let jwks_keys = jwks_keys.as_deref().map_or(&[][..], |k| &k[..]);
        if let Some(kid) = kid
            && let Some(key) = jwks_keys.iter().find(|k| k.kid.as_deref() == Some(kid))
        {
            if !key.accepts(alg) {
                return Err(AuthFailure::BadSignature);
            }
            return decode(token, &key.key, alg);
        }
        let candidates = self
            .public_key
            .iter()
            .chain(
                jwks_keys
                    .iter()
                    .filter(|k| kid.is_none() || k.kid.is_none()),
            )
            .filter(|k| k.accepts(alg));
        let mut last = None;
        for key in candidates {
            match decode(token, &key.key, alg) {
                Err(AuthFailure::BadSignature) => last = Some(AuthFailure::BadSignature),
                other => return other,
            }
        }
        if let Some(failure) = last {
            return Err(failure);
        }
        match &self.jwks {
            Some(jwks) if !jwks.is_loaded() => Err(AuthFailure::KeysUnavailable),
            Some(jwks) if kid.is_some() => {
                // Perhaps the provider rotated its keys: fetch early, in the background.
                jwks.nudge();
                Err(AuthFailure::UnknownKey)
            }
            _ if self.public_key.is_none() && self.jwks.is_none() => {
                Err(AuthFailure::NoKeyFor(alg))
            }
            _ if kid.is_some() => Err(AuthFailure::UnknownKey),
            _ => Err(AuthFailure::NoKeyFor(alg)),
        }
    }

    fn check_claims(&self, c: Claims, now: u64) -> Result<Client, AuthFailure> {
        let exp = c.exp.ok_or(AuthFailure::NoExpiry)?.0;
        if exp.saturating_add(self.leeway) <= now {
            return Err(AuthFailure::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| nbf.0 > now.saturating_add(self.leeway))
        {
            return Err(AuthFailure::NotYetValid);
        }
        if let Some(want) = &self.issuer
            && c.iss.as_deref() != Some(want.as_str())
        {
            return Err(AuthFailure::WrongIssuer);
        }
        if let Some(want) = &self.audience
            && !c.aud.as_ref().is_some_and(|a| a.iter().any(|a| a == want))
        {
            return Err(AuthFailure::WrongAudience);
        }
        if c.jti.as_deref().is_some_and(|jti| self.is_revoked(jti)) {
            return Err(AuthFailure::Revoked);
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::NoSubject)?;
        Ok(Client {
            id: Arc::from(sub),
            role: match c.role.as_deref() {
                Some("admin") => Role::Admin,
                _ => Role::Client,
            },
            models: match &c.models {
                Some(m) => ModelPolicy::only(m.iter()),
                None => ModelPolicy::Any,
            },
            rpm: c.rpm,
            tpm: c.tpm,
            tpd: c.tpd,
            live_sessions: c.live_sessions,
            overrides: match c.overrides {
                Some(rules) if !crate::config::override_problems(&rules).is_empty() => {
                    return Err(AuthFailure::Malformed);
                }
                Some(rules) if !rules.is_empty() => Some(TokenOverrides(rules.into())),
                _ => None,
            },
            token_id: c.jti.filter(|j| !j.is_empty()).map(Arc::from),
        })
    }
}

/// Checks the signature of a token (three parts, as [`Verifier::verify`] made sure) with `key`
/// for `alg`, then parses its claims.
fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthFailure> {
    let (message, signature) = token.rsplit_once('.').ok_or(AuthFailure::Malformed)?;
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg) {
        Ok(true) => {}
        Ok(false) => return Err(AuthFailure::BadSignature),
        Err(e) => {
            return Err(match e.kind() {
                JwtErrorKind::Base64(_) => AuthFailure::Malformed,
                // A key of another family or shape: the token was not signed by it.
                _ => AuthFailure::BadSignature,
            });
        }
    }
    let payload = message.split_once('.').ok_or(AuthFailure::Malformed)?.1;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthFailure::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthFailure::BadClaims)
}

/// The parts of a token header we look at before verifying.
#[derive(Debug, serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Header {
    fn parse(token: &str) -> Result<Header, AuthFailure> {
        let encoded = token.split('.').next().unwrap_or_default();
        // Headers are small; decode on the stack unless this one is not.
        let mut buf = [0u8; 384];
        let heap;
        let json = if encoded.len() / 4 * 3 + 3 <= buf.len() {
            let n = URL_SAFE_NO_PAD
                .decode_slice(encoded, &mut buf)
                .map_err(|_| AuthFailure::Malformed)?;
            &buf[..n]
        } else {
            heap = URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| AuthFailure::Malformed)?;
            &heap[..]
        };
        serde_json::from_slice(json).map_err(|_| AuthFailure::Malformed)
    }

    fn algorithm(&self) -> Result<Algorithm, AuthFailure> {
        if self.alg.eq_ignore_ascii_case("none") {
            return Err(AuthFailure::Unsigned);
        }
        let alg: Algorithm = self
            .alg
            .parse()
            .map_err(|_| AuthFailure::UnsupportedAlgorithm)?;
        if ACCEPTED.contains(&alg) {
            Ok(alg)
        } else {
            Err(AuthFailure::UnsupportedAlgorithm)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::{NumericDate, OneOrMany};
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, encode};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn config() -> AuthConfig {
        AuthConfig {
            enabled: true,
            jwt_secret: Secret::new(SECRET),
            leeway_seconds: 30,
            ..AuthConfig::default()
        }
    }

    fn claims() -> Claims {
        Claims {
            sub: Some("alice".into()),
            exp: Some(NumericDate(NOW + 3600)),
            ..Claims::default()
        }
    }

    fn hs(alg: Algorithm, claims: &Claims, secret: &str) -> String {
        encode(
            &jsonwebtoken::Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verify(cfg: &AuthConfig, token: &str) -> Result<Client, AuthFailure> {
        Verifier::new(cfg, None).unwrap().verify(token, NOW)
    }

    /// A token with a hand-made header and payload and a given signature part.
    fn raw(header: &str, payload: &str, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn a_token_verified_before_is_still_held_to_its_time_window() {
        let v = Verifier::new(&config(), None).unwrap();
        let mut c = claims();
        c.nbf = Some(NumericDate(NOW + 100));
        let token = hs(Algorithm::HS256, &c, SECRET);
        // Not yet valid (nbf beyond the 30 s leeway): refused, and not remembered.
        assert_eq!(v.verify(&token, NOW).unwrap_err(), AuthFailure::NotYetValid);
        assert_eq!(&*v.verify(&token, NOW + 70).unwrap().id, "alice");
        // The second time comes from the cache, with the same answer.
        assert_eq!(v.verify(&token, NOW + 70), v.verify(&token, NOW + 71));
        assert_eq!(
            v.verify(&token, NOW + 69).unwrap_err(),
            AuthFailure::NotYetValid
        );
        // Past exp + leeway: expired, although it passed a moment before.
        assert!(v.verify(&token, NOW + 3629).is_ok());
        assert_eq!(
            v.verify(&token, NOW + 3630).unwrap_err(),
            AuthFailure::Expired
        );
        // A token with a forged signature never passes, even with a verified one's claims.
        let last = if token.ends_with('A') { 'B' } else { 'A' };
        let forged = format!("{}{last}", &token[..token.len() - 1]);
        assert!(v.verify(&forged, NOW + 70).is_err());
    }

    #[test]
    fn good_tokens_become_clients() {
        let cfg = config();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let c = verify(&cfg, &hs(alg, &claims(), SECRET)).unwrap();
            assert_eq!(&*c.id, "alice");
            assert_eq!(c.role, Role::Client);
            assert_eq!(c.models, ModelPolicy::Any);
            assert_eq!(c.rpm, None);
        }
        let mut cl = claims();
        cl.role = Some("admin".into());
        cl.rpm = Some(7);
        cl.models = Some(OneOrMany::Many(vec!["gemini-2.5-*".into()]));
        let c = verify(&cfg, &hs(Algorithm::HS256, &cl, SECRET)).unwrap();
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.rpm, Some(7));
        assert!(c.allows_model("gemini-2.5-flash"));
        assert!(!c.allows_model("gemini-2.0-flash"));
    }

    #[test]
    fn each_failure_says_what_is_wrong() {
        let mut cfg = config();
        cfg.issuer = Some("https://issuer.example".into());
        cfg.audience = Some("gem-proxy".into());
        cfg.revoked_token_ids = vec!["revoked-1".into()];
        let good = || {
            let mut c = claims();
            c.iss = Some("https://issuer.example".into());
            c.aud = Some(OneOrMany::Many(vec!["other".into(), "gem-proxy".into()]));
            c
        };
        assert!(verify(&cfg, &hs(Algorithm::HS256, &good(), SECRET)).is_ok());

        let with = |f: &dyn Fn(&mut Claims)| {
            let mut c = good();
            f(&mut c);
            verify(&cfg, &hs(Algorithm::HS256, &c, SECRET)).unwrap_err()
        };
        assert_eq!(with(&|c| c.exp = None), AuthFailure::NoExpiry);
        // Leeway: 30 s past expiry is still fine, 31 s is not.
        assert!(
            verify(&cfg, &{
                let mut c = good();
                c.exp = Some(NumericDate(NOW - 29));
                hs(Algorithm::HS256, &c, SECRET)
            })
            .is_ok()
        );
        assert_eq!(
            with(&|c| c.exp = Some(NumericDate(NOW - 31))),
            AuthFailure::Expired
        );
        assert_eq!(
            with(&|c| c.nbf = Some(NumericDate(NOW + 31))),
            AuthFailure::NotYetValid
        );
        assert!(
            verify(&cfg, &{
                let mut c = good();
                c.nbf = Some(NumericDate(NOW + 29));
                hs(Algorithm::HS256, &c, SECRET)
            })
            .is_ok()
        );
        assert_eq!(
            with(&|c| c.iss = Some("https://evil.example".into())),
            AuthFailure::WrongIssuer
        );
        assert_eq!(with(&|c| c.iss = None), AuthFailure::WrongIssuer);
        assert_eq!(
            with(&|c| c.aud = Some(OneOrMany::One("other".into()))),
            AuthFailure::WrongAudience
        );
        assert_eq!(with(&|c| c.aud = None), AuthFailure::WrongAudience);
        assert_eq!(
            with(&|c| c.jti = Some("revoked-1".into())),
            AuthFailure::Revoked
        );
        assert_eq!(with(&|c| c.sub = None), AuthFailure::NoSubject);
        assert_eq!(
            with(&|c| c.sub = Some(String::new())),
            AuthFailure::NoSubject
        );

        let bad_sig = hs(
            Algorithm::HS256,
            &good(),
            "another-secret-another-secret-xx",
        );
        assert_eq!(verify(&cfg, &bad_sig), Err(AuthFailure::BadSignature));
    }

    #[test]
    fn unset_audience_ignores_the_claim() {
        let mut c = claims();
        c.aud = Some(OneOrMany::One("anything".into()));
        assert!(verify(&config(), &hs(Algorithm::HS256, &c, SECRET)).is_ok());
    }

    #[test]
    fn garbage_and_unsigned_tokens_are_refused() {
        let cfg = config();
        for t in [
            "",
            "garbage",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "e30.e30.e30",
        ] {
            assert_eq!(verify(&cfg, t), Err(AuthFailure::Malformed), "{t:?}");
        }
        let payload = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
        for alg in ["none", "None", "NONE"] {
            let t = raw(&format!(r#"{{"alg":"{alg}"}}"#), &payload, "");
            assert_eq!(verify(&cfg, &t), Err(AuthFailure::Unsigned), "{alg}");
        }
        let t = raw(r#"{"alg":"HS1"}"#, &payload, "c2ln");
        assert_eq!(verify(&cfg, &t), Err(AuthFailure::UnsupportedAlgorithm));
        // A well-signed token whose claims are not what they should be.
        let t = {
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"a","exp":"soon"}"#);
            let msg = format!("{header}.{body}");
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{msg}.{sig}")
        };
        assert_eq!(verify(&cfg, &t), Err(AuthFailure::BadClaims));
        let long = format!("{}.e30.e30", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(verify(&cfg, &long), Err(AuthFailure::Malformed));
    }

    #[test]
    fn asymmetric_algorithms_need_a_key() {
        let t = raw(
            r#"{"alg":"RS256"}"#,
            &format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60),
            "c2ln",
        );
        assert_eq!(
            verify(&config(), &t),
            Err(AuthFailure::NoKeyFor(Algorithm::RS256))
        );
        assert_eq!(
            AuthFailure::NoKeyFor(Algorithm::RS256).to_string(),
            "RS256 tokens are not accepted: no key for them is configured"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let v = Verifier::new(&config(), None).unwrap();
        assert!(!format!("{v:?}").contains(SECRET));
    }
}

//! Capabilities: short-lived signed links that stand in for a token on exactly one request kind.
//!
//! Google's upload URL is its own authority: google-genai sends a file's bytes to the
//! `X-Goog-Upload-URL` with no credential, and a downloaded video's URI is fetched the same way.
//! With `auth.enabled` the gateway therefore puts a capability in the `key` parameter of every
//! such URL it hands out: `gpcap1.<claims>.<mac>`, the claims (client `sub`, the resource —
//! `upload:<id>` or `files/<id>` — the expiry, the client's limits and the id (`jti`) of the
//! token it was earned with) in base64url JSON, the MAC an HMAC-SHA256 over them. It never holds
//! a pool key or the client's token; the upstream client strips `key=` like every client
//! credential.
//!
//! A capability dies with its token: the auth layer refuses one whose `jti` is in
//! `auth.revoked_token_ids` ([`super::Verifier::is_revoked`]). One made before capabilities
//! carried the id, or for a token without one, has none and lives until it expires.
//!
//! The MAC key is `auth.capability_secret` when set, else derived from `auth.jwt_secret` (which
//! auth requires), so every replica sharing the secret accepts the links of the others. Links live
//! `auth.capability_ttl_seconds`.

use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use serde::{Deserialize, Serialize};

use super::{AuthFailure, Client, ModelPolicy, Role};
use crate::config::AuthConfig;

/// What every capability starts with, so the auth layer tells it from a JWT at a glance.
pub const PREFIX: &str = "gpcap1.";

/// The claims of a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// The client it was made for (token `sub`).
    pub sub: String,
    /// What it opens: `upload:<upload id>` or `files/<id>`.
    pub res: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The client's `rpm` claim, so a link is limited like its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// The client's `tpm` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// The client's `tpd` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    /// The id (`jti`) of the token the client earned it with: revoking that token revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Capability {
    /// The client this capability acts for: its own limits, no role, no model (uploads and
    /// downloads name none).
    pub fn client(&self) -> Client {
        Client {
            id: Arc::from(self.sub.as_str()),
            role: Role::Client,
            models: ModelPolicy::default(),
            rpm: self.rpm,
            tpm: self.tpm,
            tpd: self.tpd,
            live_sessions: None,
            overrides: None,
            // A capability earned on a request made with a capability carries the same id.
            token_id: self.jti.as_deref().map(Arc::from),
        }
    }
}

/// Whether a credential is a capability rather than a token.
pub fn is_capability(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

/// What a request would open with a capability: `upload:<id>` for bytes sent to an upload URL
/// (`/upload/{v}/…?upload_id=`), `files/<id>` for a download (`…/files/<id>:download`). `None`
/// for every other request: no capability opens it.
pub fn opens(uri: &Uri) -> Option<String> {
    let path = uri.path();
    if path.starts_with("/upload/") {
        let id = uri
            .query()?
            .split('&')
            .find_map(|p| p.strip_prefix("upload_id="))
            .filter(|id| !id.is_empty())?;
        return Some(format!("upload:{id}"));
    }
    let rest = path.strip_prefix("/download").unwrap_or(path);
    let (_version, rest) = rest.strip_prefix('/')?.split_once('/')?;
    let id = rest.strip_prefix("files/")?.strip_suffix(":download")?;
    (!id.is_empty() && !id.contains('/')).then(|| format!("files/{id}"))
}

/// The capability in a request's `key` parameter, if that is one.
pub fn in_query(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|p| p.strip_prefix("key="))
        .filter(|k| is_capability(k))
}

/// A capability for `client` to reach `resource` until `now + auth.capability_ttl_seconds`.
pub fn mint(auth: &AuthConfig, client: &Client, resource: &str, now: u64) -> String {
    let claims = Capability {
        sub: client.id.to_string(),
        res: resource.to_owned(),
        exp: now.saturating_add(auth.capability_ttl_seconds),
        rpm: client.rpm,
        tpm: client.tpm,
        tpd: client.tpd,
        jti: client.token_id.as_deref().map(str::to_owned),
    };
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let body = URL_SAFE_NO_PAD.encode(json);
    let tag = hmac::sign(&mac_key(auth), body.as_bytes());
    format!("{PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Checks a capability's signature and expiry (no leeway: the gateway's own clock made it).
pub fn verify(auth: &AuthConfig, credential: &str, now: u64) -> Result<Capability, AuthFailure> {
    let rest = credential
        .strip_prefix(PREFIX)
        .ok_or(AuthFailure::CapabilityInvalid)?;
    let (body, tag) = rest.split_once('.').ok_or(AuthFailure::CapabilityInvalid)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| AuthFailure::CapabilityInvalid)?;
    // Constant-time comparison inside aws-lc.
    hmac::verify(&mac_key(auth), body.as_bytes(), &tag)
        .map_err(|_| AuthFailure::CapabilityInvalid)?;
    let json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| AuthFailure::CapabilityInvalid)?;
    let claims: Capability =
        serde_json::from_slice(&json).map_err(|_| AuthFailure::CapabilityInvalid)?;
    if claims.exp <= now {
        return Err(AuthFailure::CapabilityExpired);
    }
    Ok(claims)
}

/// The MAC key: configured, or derived from the token secret.
fn mac_key(auth: &AuthConfig) -> hmac::Key {
    const LABEL: &[u8] = b"gem-proxy capability key v1";
    if !auth.capability_secret.is_empty() {
        return hmac::Key::new(
            hmac::HMAC_SHA256,
            auth.capability_secret.expose().as_bytes(),
        );
    }
    // A key of its own, so a capability's MAC can never be replayed as a token signature.
    let parent = hmac::Key::new(hmac::HMAC_SHA256, auth.jwt_secret.expose().as_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&parent, LABEL).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Secret::new(secret),
            ..Default::default()
        }
    }

    fn alice() -> Client {
        Capability {
            sub: "alice".into(),
            res: String::new(),
            exp: 0,
            rpm: Some(7),
            tpm: None,
            tpd: None,
            jti: None,
        }
        .client()
    }

    #[test]
    fn a_capability_round_trips_and_names_its_client_and_resource() {
        let a = auth("0123456789abcdef0123456789abcdef");
        let cap = mint(&a, &alice(), "upload:U1", 1_000);
        assert!(is_capability(&cap));
        let got = verify(&a, &cap, 1_001).unwrap();
        assert_eq!((got.sub.as_str(), got.res.as_str()), ("alice", "upload:U1"));
        assert_eq!(got.client().rpm, Some(7));
        // Nothing of the secret in the link.
        assert!(!cap.contains("0123456789abcdef"));
    }

    #[test]
    fn a_capability_carries_the_id_of_the_token_it_was_earned_with() {
        let a = auth("0123456789abcdef0123456789abcdef");
        let mut client = alice();
        client.token_id = Some(Arc::from("jti-1"));
        let got = verify(&a, &mint(&a, &client, "upload:U1", 1_000), 1_001).unwrap();
        assert_eq!(got.jti.as_deref(), Some("jti-1"));
        // A capability used as the credential hands the id on to the links it earns.
        let again = verify(&a, &mint(&a, &got.client(), "files/f1", 1_000), 1_001).unwrap();
        assert_eq!(again.jti.as_deref(), Some("jti-1"));
        // One made without an id (before capabilities carried it) still verifies, without one.
        let old = verify(&a, &mint(&a, &alice(), "files/f1", 1_000), 1_001).unwrap();
        assert_eq!(old.jti, None);
        assert_eq!(old.client().token_id, None);
    }

    #[test]
    fn only_uploads_and_downloads_are_opened() {
        let opens = |u: &str| opens(&u.parse().unwrap());
        assert_eq!(
            opens("/upload/v1beta/files?upload_id=U1&upload_protocol=resumable").as_deref(),
            Some("upload:U1")
        );
        assert_eq!(
            opens("/download/v1beta/files/f1:download?alt=media").as_deref(),
            Some("files/f1")
        );
        assert_eq!(
            opens("/v1beta/files/f1:download?alt=media").as_deref(),
            Some("files/f1")
        );
        for other in [
            "/upload/v1beta/files",
            "/v1beta/files/f1",
            "/v1beta/models/m:generateContent",
            "/download/v1beta/files/a/b:download",
        ] {
            assert_eq!(opens(other), None, "{other}");
        }
    }

    #[test]
    fn forged_expired_and_foreign_capabilities_are_refused() {
        let a = auth("0123456789abcdef0123456789abcdef");
        let cap = mint(&a, &alice(), "files/f1", 1_000);
        let exp = 1_000 + a.capability_ttl_seconds;
        assert_eq!(verify(&a, &cap, exp), Err(AuthFailure::CapabilityExpired));
        // Another replica with the same token secret accepts it; another secret does not.
        assert!(verify(&auth("0123456789abcdef0123456789abcdef"), &cap, 1_001).is_ok());
        assert_eq!(
            verify(&auth("another-secret-another-secret-xx"), &cap, 1_001),
            Err(AuthFailure::CapabilityInvalid)
        );
        // Claims changed (another resource), signature kept.
        let (_, tag) = cap.rsplit_once('.').unwrap();
        let other = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","res":"files/f2","exp":99999999999}"#.as_slice());
        let forged = format!("{PREFIX}{other}.{tag}");
        assert_eq!(
            verify(&a, &forged, 1_001),
            Err(AuthFailure::CapabilityInvalid)
        );
        for junk in ["gpcap1.", "gpcap1.x", "gpcap1.x.y", "a.b.c"] {
            assert_eq!(verify(&a, junk, 1_001), Err(AuthFailure::CapabilityInvalid));
        }
        // A configured secret wins over the derived one.
        let configured = AuthConfig {
            capability_secret: Secret::new("shared-by-every-replica-shared-by"),
            ..a.clone()
        };
        assert!(verify(&configured, &cap, 1_001).is_err());
        let cap = mint(&configured, &alice(), "files/f1", 1_000);
        assert!(verify(&configured, &cap, 1_001).is_ok());
    }
}

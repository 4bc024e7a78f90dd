//! Issuing client tokens (`gem-proxy token`): HS256 with `auth.jwt_secret`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

use super::Role;
use super::claims::{Claims, NumericDate, OneOrMany};
use crate::config::{AuthConfig, MIN_JWT_SECRET_CHARS};

/// What a new token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The client's identity (`sub`).
    pub sub: String,
    /// How long the token is valid.
    pub ttl: Duration,
    /// Allowed model patterns (`models`); empty means any model.
    pub models: Vec<String>,
    /// The client's own requests-per-minute limit (`rpm`).
    pub rpm: Option<u32>,
    /// The client's tokens-per-minute budget (`tpm`).
    pub tpm: Option<u64>,
    /// The client's tokens-per-day budget (`tpd`).
    pub tpd: Option<u64>,
    /// Live API sessions the client may hold open at once (`live_sessions`).
    pub live_sessions: Option<u32>,
    /// The client's role (`role`); only `admin` is written.
    pub role: Role,
}

/// A token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// `auth.jwt_secret` is missing or too short.
    #[error(
        "auth.jwt_secret must be set to at least {MIN_JWT_SECRET_CHARS} characters to issue tokens (has {0})"
    )]
    WeakSecret(usize),
    /// An empty subject.
    #[error("the subject (--sub) must not be empty")]
    EmptySubject,
    /// A zero lifetime.
    #[error("the lifetime (--ttl) must be longer than zero")]
    ZeroTtl,
    /// Signing failed (should not happen with an HMAC key).
    #[error("signing failed: {0}")]
    Signing(String),
    /// The `overrides` rules break the rules for `gemini.overrides`.
    #[error("the overrides are not valid: {0}")]
    BadOverrides(String),
}

/// An issued token and the claims worth telling the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The token. Print it once; never log it.
    pub token: String,
    /// Its id (`jti`), for `auth.revoked_token_ids`.
    pub jti: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

/// Signs a token for `req` with the configuration's secret, at time `now` (seconds since the
/// epoch). `iss` and `aud` are set from `auth.issuer` and `auth.audience` so the gateway accepts
/// its own tokens; a random `jti` makes each token revocable on its own.
pub fn issue(auth: &AuthConfig, req: &TokenRequest, now: u64) -> Result<Issued, IssueError> {
    issue_with_overrides(auth, req, &[], now)
}

/// [`issue`], with an `overrides` claim: request overrides for this client (the shape of
/// `gemini.overrides`; `match.clients` is moot), applied after the configured ones. Rules that
/// `gemini.overrides` would refuse are refused here too.
pub fn issue_with_overrides(
    auth: &AuthConfig,
    req: &TokenRequest,
    overrides: &[crate::config::OverrideRule],
    now: u64,
) -> Result<Issued, IssueError> {
    let problems = crate::config::override_problems(overrides);
    if !problems.is_empty() {
        let text: Vec<String> = problems
            .iter()
            .map(|(path, msg)| {
                format!(
                    "{}: {msg}",
                    path.replacen("gemini.overrides", "overrides", 1)
                )
            })
            .collect();
        return Err(IssueError::BadOverrides(text.join("; ")));
    }
    let secret = auth.jwt_secret.expose();
    if auth.jwt_secret.char_len() < MIN_JWT_SECRET_CHARS {
        return Err(IssueError::WeakSecret(auth.jwt_secret.char_len()));
    }
    if req.sub.trim().is_empty() {
        return Err(IssueError::EmptySubject);
    }
    if req.ttl.is_zero() {
        return Err(IssueError::ZeroTtl);
    }
    let jti = random_id();
    let expires_at = now.saturating_add(req.ttl.as_secs().max(1));
    let claims = Claims {
        sub: Some(req.sub.clone()),
        exp: Some(NumericDate(expires_at)),
        iat: Some(NumericDate(now)),
        nbf: None,
        iss: auth.issuer.clone(),
        aud: auth.audience.clone().map(OneOrMany::One),
        jti: Some(jti.clone()),
        models: (!req.models.is_empty()).then(|| OneOrMany::Many(req.models.clone())),
        rpm: req.rpm,
        tpm: req.tpm,
        tpd: req.tpd,
        live_sessions: req.live_sessions,
        role: (req.role == Role::Admin).then(|| Role::Admin.as_str().to_owned()),
        overrides: (!overrides.is_empty()).then(|| overrides.to_vec()),
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| IssueError::Signing(e.to_string()))?;
    Ok(Issued {
        token,
        jti,
        expires_at,
    })
}

/// 128 random bits, hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a lifetime: a number with a unit `s`, `m`, `h`, `d` or `w` (`30d`, `12h`, `90m`); a
/// bare number is seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a lifetime like 30d, 12h, 90m or 3600s"))?;
    let unit_seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ));
        }
    };
    n.checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ModelPolicy, Verifier};
    use crate::config::Secret;

    const NOW: u64 = 1_800_000_000;

    fn auth() -> AuthConfig {
        AuthConfig {
            enabled: true,
            jwt_secret: Secret::new("s".repeat(40)),
            issuer: Some("gem-proxy".into()),
            audience: Some("gemini".into()),
            ..AuthConfig::default()
        }
    }

    fn req() -> TokenRequest {
        TokenRequest {
            sub: "ci-bot".into(),
            ttl: Duration::from_secs(3600),
            models: vec!["gemini-2.5-*".into()],
            rpm: Some(30),
            tpm: None,
            tpd: Some(5000),
            live_sessions: None,
            role: Role::Admin,
        }
    }

    #[test]
    fn issued_tokens_verify_with_everything_they_carry() {
        let cfg = auth();
        let issued = issue(&cfg, &req(), NOW).unwrap();
        assert_eq!(issued.expires_at, NOW + 3600);
        assert_eq!(issued.jti.len(), 32);
        let v = Verifier::new(&cfg, None).unwrap();
        let client = v.verify(&issued.token, NOW + 10).unwrap();
        assert_eq!(&*client.id, "ci-bot");
        assert_eq!(client.role, Role::Admin);
        assert_eq!(client.rpm, Some(30));
        assert_eq!((client.tpm, client.tpd), (None, Some(5000)));
        assert_eq!(client.models, ModelPolicy::only(["gemini-2.5-*"]));
        assert!(v.verify(&issued.token, NOW + 3700).is_err(), "expired");

        // Each token gets its own id; revoking one leaves the other valid.
        let other = issue(&cfg, &req(), NOW).unwrap();
        assert_ne!(other.jti, issued.jti);
        let mut revoked = cfg.clone();
        revoked.revoked_token_ids = vec![issued.jti.clone()];
        let v = Verifier::new(&revoked, None).unwrap();
        assert!(v.verify(&issued.token, NOW).is_err());
        assert!(v.verify(&other.token, NOW).is_ok());
    }

    #[test]
    fn refuses_weak_secrets_and_empty_subjects() {
        let mut cfg = auth();
        cfg.jwt_secret = Secret::new("short");
        assert_eq!(issue(&cfg, &req(), NOW), Err(IssueError::WeakSecret(5)));
        let mut r = req();
        r.sub = " ".into();
        assert_eq!(issue(&auth(), &r, NOW), Err(IssueError::EmptySubject));
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_ttl("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "d", "10y", "-1d", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

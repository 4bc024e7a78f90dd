//! The claims of a token, as sent: registered ones (RFC 7519) and ours.

use serde::{Deserialize, Serialize};

/// A token's claims. Unknown claims are ignored; a claim of the wrong type makes the token
/// malformed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Subject: the client's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<NumericDate>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<NumericDate>,
    /// Issued at, seconds since the epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<NumericDate>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<OneOrMany>,
    /// Token id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Allowed model patterns: one string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<OneOrMany>,
    /// The client's requests-per-minute limit (`0` = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// The client's tokens-per-minute budget (`0` = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// The client's tokens-per-UTC-day budget (`0` = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    /// Live API sessions the client may hold open at once (`0` = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_sessions: Option<u32>,
    /// `admin`, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Request overrides for this client, like `gemini.overrides` (their `match.clients` is
    /// ignored: the token is the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<crate::config::OverrideRule>>,
}

/// A JSON number of seconds since the epoch; RFC 7519 allows fractions, which are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct NumericDate(pub u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(NumericDate(n)),
            Raw::Float(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                Ok(NumericDate(f as u64))
            }
            Raw::Float(_) => Err(serde::de::Error::custom(
                "a date must be a non-negative number of seconds",
            )),
        }
    }
}

/// A claim that may be one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    /// `"x"`
    One(String),
    /// `["x", "y"]`
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[String]) = match self {
            OneOrMany::One(s) => (Some(s), &[]),
            OneOrMany::Many(v) => (None, v),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_fractional_dates() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"a","exp":1700000000.7,"aud":["x","y"],"models":"gemini-*","rpm":5,"extra":{"k":1}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(NumericDate(1_700_000_000)));
        assert_eq!(c.aud.unwrap().iter().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(c.models.unwrap().iter().collect::<Vec<_>>(), ["gemini-*"]);
        assert_eq!(c.rpm, Some(5));
    }

    #[test]
    fn wrong_types_are_errors() {
        for bad in [
            r#"{"exp":"tomorrow"}"#,
            r#"{"exp":-5}"#,
            r#"{"rpm":"lots"}"#,
            r#"{"rpm":-1}"#,
            r#"{"sub":7}"#,
        ] {
            assert!(serde_json::from_str::<Claims>(bad).is_err(), "{bad}");
        }
    }
}

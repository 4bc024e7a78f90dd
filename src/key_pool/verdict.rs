//! Reading Google's answers: what an upstream status and error body mean for the key that got it.
//!
//! | answer | verdict | retried on another key |
//! |---|---|---|
//! | 2xx, 3xx | success | — |
//! | 429 with a per-day `quotaId` | rest for that model until midnight Pacific | yes |
//! | 429 with `RetryInfo.retryDelay` | rest for that model for that delay | yes |
//! | 429 without a delay | rest for that model for `gemini.default_retry_delay_seconds` | yes |
//! | 400 `ErrorInfo.reason = API_KEY_INVALID` | key invalid | yes |
//! | 400 `FAILED_PRECONDITION` (billing, region) | key unusable for that model (long rest) | yes |
//! | 401 | key invalid | yes |
//! | 403 with a key-level `ErrorInfo.reason` (see [`KEY_LEVEL_REASONS`]) | key invalid | yes |
//! | any other 403 (a file, cache, upload or tuned model the key may not touch) | the request's fault | no |
//! | other 400s, 404, other 4xx | the request's fault | no |
//! | 503 | overloaded: not the key's fault | yes |
//! | 500, 502, 504, other 5xx | upstream failure | only with `gemini.retry_on_timeout` |
//!
//! A 403 invalidates a key only on Google's explicit word: a resumable-upload chunk or a file that
//! reaches a key which does not own it is answered 403 `PERMISSION_DENIED` too, and that must not
//! take healthy keys out of rotation one after the other.
//!
//! `retryDelay` is untrusted input: it is parsed saturating and capped at [`MAX_RETRY_DELAY`].

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use super::store::{KeyOutcome, RestReason};

/// `ErrorInfo.reason`s that say the *key* (or the project behind it) is unusable, whatever the
/// request: the key is taken out of rotation.
pub const KEY_LEVEL_REASONS: &[&str] = &[
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
    "CONSUMER_SUSPENDED",
    "CONSUMER_INVALID",
    "SERVICE_DISABLED",
];

/// The longest rest a `retryDelay` can ask for; longer (or unparseable-as-finite) delays are cut
/// to this. Google's delays are seconds to minutes; daily quotas say `PerDay` instead.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// How long a key rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestFor {
    /// As Google said (`RetryInfo.retryDelay`).
    Delay(Duration),
    /// Google gave no delay: the configured default.
    Default,
    /// A daily quota: until the next midnight Pacific.
    UntilMidnightPacific,
    /// The key cannot use the model: the configured long rest.
    Unusable,
}

/// What an answer means for the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Success,
    /// The key rests for the request's model.
    Rest(RestFor, RestReason),
    /// The key is out of rotation until an operator acts.
    Invalid(String),
    /// A Vertex service account's access token was refused (401) while its credentials are fine:
    /// a new token is on its way, the member stays in the pool.
    StaleCredential,
    /// The upstream is overloaded; the key is not to blame.
    Overloaded,
    /// The upstream failed (500, 502, 504…): the request may have been processed, so a replay
    /// may bill twice.
    ServerError,
    /// The request itself is wrong: pass the answer on.
    ClientError,
}

impl Verdict {
    /// Whether another key may do better.
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self, Verdict::Success | Verdict::ClientError)
    }

    /// Whether Google certainly did not act on the request (it refused the key, the quota or the
    /// load before doing anything), so a replay cannot bill twice or create a resource twice.
    pub fn refused_before_processing(&self) -> bool {
        matches!(
            self,
            Verdict::Rest(..)
                | Verdict::Invalid(_)
                | Verdict::StaleCredential
                | Verdict::Overloaded
        )
    }

    /// The counter it goes to.
    pub fn outcome(&self) -> KeyOutcome {
        match self {
            Verdict::Success => KeyOutcome::Success,
            Verdict::Rest(..) => KeyOutcome::RateLimited,
            Verdict::Invalid(_) | Verdict::StaleCredential => KeyOutcome::Invalid,
            Verdict::Overloaded => KeyOutcome::Overloaded,
            Verdict::ServerError => KeyOutcome::ServerError,
            Verdict::ClientError => KeyOutcome::ClientError,
        }
    }
}

/// Classifies an answer. `body` is the (small, uncompressed) error body.
pub fn classify(status: StatusCode, body: &[u8]) -> Verdict {
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Verdict::Success;
    }
    let error = parse_error(body);
    let error = error.as_ref();
    let google_status = error.and_then(|e| e.get("status")).and_then(Value::as_str);
    match status.as_u16() {
        429 => {
            let details = details(error);
            let per_day = details
                .iter()
                .filter(|d| type_is(d, "google.rpc.QuotaFailure"))
                .flat_map(|d| {
                    d.get("violations")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
                .any(|id| id.contains("PerDay"));
            if per_day {
                return Verdict::Rest(RestFor::UntilMidnightPacific, RestReason::ExhaustedToday);
            }
            let delay = details
                .iter()
                .filter(|d| type_is(d, "google.rpc.RetryInfo"))
                .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
                .and_then(parse_duration);
            match delay {
                Some(d) => Verdict::Rest(RestFor::Delay(d), RestReason::RateLimited),
                None => Verdict::Rest(RestFor::Default, RestReason::RateLimited),
            }
        }
        400 => {
            if error_info_reasons(error).any(|r| r == "API_KEY_INVALID") {
                Verdict::Invalid("API_KEY_INVALID".into())
            } else if google_status == Some("FAILED_PRECONDITION") {
                Verdict::Rest(RestFor::Unusable, RestReason::Unusable)
            } else {
                Verdict::ClientError
            }
        }
        401 => Verdict::Invalid("UNAUTHENTICATED".into()),
        403 => match error_info_reasons(error).find(|r| KEY_LEVEL_REASONS.contains(r)) {
            Some(reason) => Verdict::Invalid(reason.to_owned()),
            None => Verdict::ClientError,
        },
        503 => Verdict::Overloaded,
        s if s >= 500 => Verdict::ServerError,
        _ => Verdict::ClientError,
    }
}

/// The `error` object of a Google error body: `{"error": {...}}`, or `[{"error": {...}}]` as the
/// OpenAI-compatible surface sometimes answers.
fn parse_error(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let v = match v {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        v => v,
    };
    match v {
        Value::Object(mut map) => map.remove("error"),
        _ => None,
    }
}

fn details(error: Option<&Value>) -> Vec<&Value> {
    error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(|d| d.iter().collect())
        .unwrap_or_default()
}

fn type_is(detail: &Value, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(name))
}

/// Every `ErrorInfo.reason` in the error's details, in order.
fn error_info_reasons(error: Option<&Value>) -> impl Iterator<Item = &str> {
    details(error)
        .into_iter()
        .filter(|d| type_is(d, "google.rpc.ErrorInfo"))
        .filter_map(|d| d.get("reason").and_then(Value::as_str))
}

/// `"14s"`, `"14.19s"`, `"0.5s"` (protobuf Duration JSON), at most [`MAX_RETRY_DELAY`]. A delay
/// too large for a `Duration` (`"1e30s"`, `"inf"`) saturates instead of panicking.
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    let delay = Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_DELAY);
    Some(delay.min(MAX_RETRY_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: u16, google: &str, details: &str) -> Vec<u8> {
        format!(
            r#"{{"error":{{"code":{status},"message":"m","status":"{google}","details":[{details}]}}}}"#
        )
        .into_bytes()
    }

    fn v(status: u16, body: &[u8]) -> Verdict {
        classify(StatusCode::from_u16(status).unwrap(), body)
    }

    const QUOTA_MINUTE: &str = r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.5-flash"}}]}"#;
    const QUOTA_DAY: &str = r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}"#;
    const RETRY_14: &str =
        r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"14s"}"#;

    #[test]
    fn row_2xx_is_success() {
        assert_eq!(v(200, b"{}"), Verdict::Success);
        assert_eq!(v(204, b""), Verdict::Success);
    }

    #[test]
    fn row_429_with_retry_delay_rests_for_that_delay() {
        let b = body(
            429,
            "RESOURCE_EXHAUSTED",
            &format!("{QUOTA_MINUTE},{RETRY_14}"),
        );
        assert_eq!(
            v(429, &b),
            Verdict::Rest(
                RestFor::Delay(Duration::from_secs(14)),
                RestReason::RateLimited
            )
        );
        let b = body(
            429,
            "RESOURCE_EXHAUSTED",
            r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"14.19s"}"#,
        );
        assert_eq!(
            v(429, &b),
            Verdict::Rest(
                RestFor::Delay(Duration::from_secs_f64(14.19)),
                RestReason::RateLimited
            )
        );
    }

    #[test]
    fn row_429_per_day_rests_until_midnight_pacific() {
        let b = body(
            429,
            "RESOURCE_EXHAUSTED",
            &format!("{QUOTA_DAY},{RETRY_14}"),
        );
        assert_eq!(
            v(429, &b),
            Verdict::Rest(RestFor::UntilMidnightPacific, RestReason::ExhaustedToday)
        );
    }

    #[test]
    fn row_429_without_delay_rests_for_the_default() {
        assert_eq!(
            v(429, &body(429, "RESOURCE_EXHAUSTED", "")),
            Verdict::Rest(RestFor::Default, RestReason::RateLimited)
        );
        assert_eq!(
            v(429, b"not json"),
            Verdict::Rest(RestFor::Default, RestReason::RateLimited)
        );
    }

    #[test]
    fn row_400_api_key_invalid_takes_the_key_out() {
        let b = body(
            400,
            "INVALID_ARGUMENT",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}"#,
        );
        assert_eq!(v(400, &b), Verdict::Invalid("API_KEY_INVALID".into()));
    }

    /// Found by the property test: `API_KEY_INVALID` that is not the first `ErrorInfo` of the
    /// details was missed.
    #[test]
    fn row_400_api_key_invalid_counts_wherever_it_sits_in_the_details() {
        let b = body(
            400,
            "INVALID_ARGUMENT",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"OTHER"},{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}"#,
        );
        assert_eq!(v(400, &b), Verdict::Invalid("API_KEY_INVALID".into()));
    }

    #[test]
    fn row_400_failed_precondition_makes_the_key_unusable_for_the_model() {
        assert_eq!(
            v(400, &body(400, "FAILED_PRECONDITION", "")),
            Verdict::Rest(RestFor::Unusable, RestReason::Unusable)
        );
    }

    #[test]
    fn row_other_400_and_404_are_the_requests_fault() {
        let b = body(400, "INVALID_ARGUMENT", "");
        assert_eq!(v(400, &b), Verdict::ClientError);
        assert!(!v(400, &b).retry_elsewhere());
        assert_eq!(v(404, &body(404, "NOT_FOUND", "")), Verdict::ClientError);
        assert_eq!(v(413, b""), Verdict::ClientError);
    }

    #[test]
    fn row_401_takes_the_key_out() {
        assert_eq!(
            v(401, &body(401, "UNAUTHENTICATED", "")),
            Verdict::Invalid("UNAUTHENTICATED".into())
        );
    }

    #[test]
    fn row_403_with_a_key_level_reason_takes_the_key_out() {
        for reason in [
            "CONSUMER_SUSPENDED",
            "API_KEY_SERVICE_BLOCKED",
            "SERVICE_DISABLED",
        ] {
            let b = body(
                403,
                "PERMISSION_DENIED",
                &format!(
                    r#"{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"{reason}","domain":"googleapis.com"}}"#
                ),
            );
            assert_eq!(v(403, &b), Verdict::Invalid(reason.into()), "{reason}");
        }
        // The key-level reason wins wherever it sits among the details.
        let b = body(
            403,
            "PERMISSION_DENIED",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED"},{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_SUSPENDED"}"#,
        );
        assert_eq!(v(403, &b), Verdict::Invalid("CONSUMER_SUSPENDED".into()));
    }

    #[test]
    fn row_any_other_403_is_the_requests_fault_and_not_retried() {
        // A resumable-upload chunk or a file that reached a key which does not own it.
        let not_yours = br#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#;
        let iam = body(
            403,
            "PERMISSION_DENIED",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED"}"#,
        );
        for b in [&not_yours[..], &iam, b"", b"<html>Forbidden</html>"] {
            let verdict = v(403, b);
            assert_eq!(
                verdict,
                Verdict::ClientError,
                "{}",
                String::from_utf8_lossy(b)
            );
            assert!(!verdict.retry_elsewhere());
            assert_eq!(verdict.outcome(), KeyOutcome::ClientError);
        }
    }

    #[test]
    fn a_huge_or_odd_retry_delay_saturates_instead_of_panicking() {
        for (delay, expected) in [
            ("1e30s", Some(MAX_RETRY_DELAY)),
            ("1e400s", Some(MAX_RETRY_DELAY)),
            ("infs", Some(MAX_RETRY_DELAY)),
            ("200000s", Some(MAX_RETRY_DELAY)),
            ("NaNs", None),
            ("-5s", None),
            ("5", None),
        ] {
            let detail = format!(
                r#"{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}"#
            );
            let verdict = v(429, &body(429, "RESOURCE_EXHAUSTED", &detail));
            let want = match expected {
                Some(d) => Verdict::Rest(RestFor::Delay(d), RestReason::RateLimited),
                None => Verdict::Rest(RestFor::Default, RestReason::RateLimited),
            };
            assert_eq!(verdict, want, "{delay}");
        }
    }

    #[test]
    fn row_503_is_retried_without_blaming_the_key() {
        let verdict = v(503, &body(503, "UNAVAILABLE", ""));
        assert_eq!(verdict, Verdict::Overloaded);
        assert!(verdict.retry_elsewhere());
        assert_eq!(verdict.outcome(), KeyOutcome::Overloaded);
    }

    #[test]
    fn row_500_502_504_are_retried() {
        for s in [500, 502, 504] {
            assert_eq!(v(s, b""), Verdict::ServerError, "{s}");
            assert!(v(s, b"").retry_elsewhere());
        }
    }

    #[test]
    fn openai_surface_errors_come_as_a_list() {
        let b = format!(
            "[{}]",
            String::from_utf8(body(429, "RESOURCE_EXHAUSTED", QUOTA_DAY)).unwrap()
        );
        assert_eq!(
            v(429, b.as_bytes()),
            Verdict::Rest(RestFor::UntilMidnightPacific, RestReason::ExhaustedToday)
        );
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::json;

        use super::*;

        const REASONS: &[&str] = &[
            "API_KEY_INVALID",
            "API_KEY_SERVICE_BLOCKED",
            "CONSUMER_SUSPENDED",
            "SERVICE_DISABLED",
            "IAM_PERMISSION_DENIED",
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "RATE_LIMIT_EXCEEDED",
            "",
        ];
        const STATUSES: &[&str] = &[
            "PERMISSION_DENIED",
            "INVALID_ARGUMENT",
            "FAILED_PRECONDITION",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "NOT_FOUND",
        ];

        /// One `details` entry of Google's error shape, with arbitrary values in its fields.
        fn detail() -> impl Strategy<Value = Value> {
            prop_oneof![
                (prop::sample::select(REASONS), ".{0,12}").prop_map(|(reason, domain)| json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason, "domain": domain,
                })),
                "[-0-9.eE+a-z]{0,12}s?".prop_map(|delay| json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay,
                })),
                "[A-Za-z-]{0,40}".prop_map(|id| json!({
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": id}],
                })),
                any::<i64>().prop_map(|n| json!({"@type": n, "reason": n})),
            ]
        }

        /// `(status, body, whether it carries the explicit signal that invalidates a key)`.
        fn error() -> impl Strategy<Value = (u16, Vec<u8>, bool)> {
            (
                prop::sample::select(&[400u16, 401, 403, 404, 409, 429, 500, 503, 504][..]),
                prop::sample::select(STATUSES),
                proptest::collection::vec(detail(), 0..4),
                any::<bool>(),
            )
                .prop_map(|(code, status, details, as_list)| {
                    // 400 invalidates on `API_KEY_INVALID` only, 403 on any key-level reason.
                    let invalidates = |r: &str| match code {
                        400 => r == "API_KEY_INVALID",
                        _ => KEY_LEVEL_REASONS.contains(&r),
                    };
                    let key_level = details.iter().any(|d| {
                        d["@type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("ErrorInfo"))
                            && d["reason"].as_str().is_some_and(invalidates)
                    });
                    let body = json!({"error": {
                        "code": code, "message": "m", "status": status, "details": details,
                    }});
                    let body = if as_list { json!([body]) } else { body };
                    (code, serde_json::to_vec(&body).unwrap(), key_level)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
            ))]

            /// Google-shaped errors never panic the verdict, and a 403 (or a 400) takes a key out
            /// only on an explicit key-level reason.
            #[test]
            fn invalidates_only_on_explicit_signals((code, body, key_level) in error()) {
                let verdict = classify(StatusCode::from_u16(code).unwrap(), &body);
                if matches!(code, 400 | 403) {
                    prop_assert_eq!(
                        matches!(verdict, Verdict::Invalid(_)),
                        key_level,
                        "{} {}", code, String::from_utf8_lossy(&body)
                    );
                }
                if code == 403 && !key_level {
                    prop_assert_eq!(&verdict, &Verdict::ClientError);
                }
                if let Verdict::Rest(RestFor::Delay(d), _) = verdict {
                    prop_assert!(d <= MAX_RETRY_DELAY);
                }
            }

            /// Arbitrary bytes never panic it either.
            #[test]
            fn arbitrary_bodies_never_panic(
                code in 100u16..600,
                body in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                classify(StatusCode::from_u16(code).unwrap(), &body);
            }
        }
    }
}

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
//! | 403 on a file or cached content | the resource is another key's: the request's fault | no |
//! | 403 otherwise (suspended, no access) | key invalid | yes |
//! | other 400s, 404, other 4xx | the request's fault | no |
//! | 503 | overloaded: not the key's fault | yes |
//! | 500, 502, 504, other 5xx | upstream failure | yes |

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use super::store::{KeyOutcome, RestReason};

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
    /// The upstream is overloaded; the key is not to blame.
    Overloaded,
    /// The upstream failed.
    ServerError,
    /// The request itself is wrong: pass the answer on.
    ClientError,
}

impl Verdict {
    /// Whether another key may do better.
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self, Verdict::Success | Verdict::ClientError)
    }

    /// The counter it goes to.
    pub fn outcome(&self) -> KeyOutcome {
        match self {
            Verdict::Success => KeyOutcome::Success,
            Verdict::Rest(..) => KeyOutcome::RateLimited,
            Verdict::Invalid(_) => KeyOutcome::Invalid,
            Verdict::Overloaded => KeyOutcome::Overloaded,
            Verdict::ServerError => KeyOutcome::ServerError,
            Verdict::ClientError => KeyOutcome::ClientError,
        }
    }
}

/// Classifies an answer. `body` is the (small) error body; `about_resource` says whether the
/// request named a file or cached content, whose 403 means "not yours" rather than "bad key".
pub fn classify(status: StatusCode, body: &[u8], about_resource: bool) -> Verdict {
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
            let reason = error_info_reason(error);
            if reason == Some("API_KEY_INVALID") {
                Verdict::Invalid("API_KEY_INVALID".into())
            } else if google_status == Some("FAILED_PRECONDITION") {
                Verdict::Rest(RestFor::Unusable, RestReason::Unusable)
            } else {
                Verdict::ClientError
            }
        }
        401 => Verdict::Invalid("UNAUTHENTICATED".into()),
        403 if about_resource => Verdict::ClientError,
        403 => Verdict::Invalid(
            error_info_reason(error)
                .or(google_status)
                .unwrap_or("PERMISSION_DENIED")
                .to_owned(),
        ),
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

fn error_info_reason(error: Option<&Value>) -> Option<&str> {
    details(error)
        .into_iter()
        .filter(|d| type_is(d, "google.rpc.ErrorInfo"))
        .find_map(|d| d.get("reason").and_then(Value::as_str))
}

/// `"14s"`, `"14.19s"`, `"0.5s"` (protobuf Duration JSON).
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
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
        classify(StatusCode::from_u16(status).unwrap(), body, false)
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
    fn row_403_suspended_takes_the_key_out_but_not_for_a_resource() {
        let b = body(
            403,
            "PERMISSION_DENIED",
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_SUSPENDED"}"#,
        );
        assert_eq!(v(403, &b), Verdict::Invalid("CONSUMER_SUSPENDED".into()));
        assert_eq!(
            v(403, &body(403, "PERMISSION_DENIED", "")),
            Verdict::Invalid("PERMISSION_DENIED".into())
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &b, true),
            Verdict::ClientError
        );
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
}

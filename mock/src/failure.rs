//! Errors on demand, shaped exactly like Google's.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::reply;

/// `retryDelay` of a 429 triggered by a code (`"429"`, `"429-day"`) when nothing else says.
pub const DEFAULT_RETRY_DELAY_SECONDS: u64 = 14;

/// An error Google answers with, for a mock to return on demand.
///
/// Each maps to one HTTP status and a body like Google's: `{"error":{"code","message","status","details"?}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 429 `RESOURCE_EXHAUSTED` with `google.rpc.QuotaFailure` for the request's model and, when
    /// `retry_delay_seconds` is set, `google.rpc.RetryInfo` (`"retryDelay": "<n>s"`).
    RateLimited {
        /// The `retryDelay` Google asks for; `None` leaves `RetryInfo` out of the body.
        retry_delay_seconds: Option<u64>,
        /// The daily quota (`GenerateRequestsPerDayPerProjectPerModel-FreeTier`) rather than the per-minute one.
        per_day: bool,
    },
    /// 503 `UNAVAILABLE`: "The model is overloaded. Please try again later."
    Overloaded,
    /// 500 `INTERNAL`.
    Internal,
    /// 504 `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// 400 `INVALID_ARGUMENT` with an `ErrorInfo` detail whose reason is `API_KEY_INVALID`.
    InvalidKey,
    /// 403 `PERMISSION_DENIED` with reason `CONSUMER_SUSPENDED`, like a suspended key.
    PermissionDenied,
    /// 403 `PERMISSION_DENIED` without a key-level reason: the key is fine, but the file,
    /// upload or tuned model the request names is not its own (another project's, or gone).
    ForbiddenResource,
    /// 400 `INVALID_ARGUMENT`: "Request contains an invalid argument."
    BadRequest,
    /// 404 `NOT_FOUND`, the model not being found.
    NotFound,
}

impl Failure {
    /// Parses a trigger code: `429`, `429-day`, `503`, `500`, `504`, `400`, `400-key`, `403`,
    /// `403-resource`, `404`.
    /// The 429s carry [`DEFAULT_RETRY_DELAY_SECONDS`].
    pub fn from_code(code: &str) -> Option<Failure> {
        Some(match code.trim() {
            "429" => Failure::RateLimited {
                retry_delay_seconds: Some(DEFAULT_RETRY_DELAY_SECONDS),
                per_day: false,
            },
            "429-day" => Failure::RateLimited {
                retry_delay_seconds: Some(DEFAULT_RETRY_DELAY_SECONDS),
                per_day: true,
            },
            "503" => Failure::Overloaded,
            "500" => Failure::Internal,
            "504" => Failure::DeadlineExceeded,
            "400" => Failure::BadRequest,
            "400-key" => Failure::InvalidKey,
            "403" => Failure::PermissionDenied,
            "403-resource" => Failure::ForbiddenResource,
            "404" => Failure::NotFound,
            _ => return None,
        })
    }

    /// The trigger code that [`Failure::from_code`] parses back into this failure's kind.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::RateLimited { per_day: false, .. } => "429",
            Failure::RateLimited { per_day: true, .. } => "429-day",
            Failure::Overloaded => "503",
            Failure::Internal => "500",
            Failure::DeadlineExceeded => "504",
            Failure::InvalidKey => "400-key",
            Failure::PermissionDenied => "403",
            Failure::ForbiddenResource => "403-resource",
            Failure::BadRequest => "400",
            Failure::NotFound => "404",
        }
    }

    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Failure::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Failure::InvalidKey | Failure::BadRequest => StatusCode::BAD_REQUEST,
            Failure::PermissionDenied | Failure::ForbiddenResource => StatusCode::FORBIDDEN,
            Failure::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The full error response for a request described by `ctx`.
    pub(crate) fn response(&self, ctx: &ErrorContext<'_>) -> Response<MockBody> {
        reply::json(self.status(), self.body(ctx))
    }

    fn body(&self, ctx: &ErrorContext<'_>) -> Bytes {
        let model = ctx.model.unwrap_or("gemini-2.5-flash");
        match self {
            Failure::RateLimited {
                retry_delay_seconds,
                per_day,
            } => {
                let retry_delay_seconds = ctx.retry_delay_seconds.or(*retry_delay_seconds);
                rate_limited(ctx.model, retry_delay_seconds, *per_day)
            }
            Failure::Overloaded => google_error(
                503,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
                None,
            ),
            Failure::Internal => google_error(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in \
                 https://developers.generativeai.google/guide/troubleshooting",
                None,
            ),
            Failure::DeadlineExceeded => google_error(
                504,
                "DEADLINE_EXCEEDED",
                "Deadline expired before operation could complete.",
                None,
            ),
            Failure::InvalidKey => invalid_key(),
            Failure::PermissionDenied => google_error(
                403,
                "PERMISSION_DENIED",
                "Permission denied: Consumer 'projects/000000000000' has been suspended.",
                Some(json!([{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CONSUMER_SUSPENDED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "consumer": "projects/000000000000",
                        "service": "generativelanguage.googleapis.com",
                    },
                }])),
            ),
            Failure::ForbiddenResource => google_error(
                403,
                "PERMISSION_DENIED",
                "You do not have permission to access the File or it may not exist.",
                None,
            ),
            Failure::BadRequest => google_error(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                None,
            ),
            Failure::NotFound => google_error(
                404,
                "NOT_FOUND",
                &format!(
                    "models/{model} is not found for API version {}, or is not supported for \
                     generateContent. Call ListModels to see the list of available models and their \
                     supported methods.",
                    ctx.version
                ),
                None,
            ),
        }
    }
}

/// What an error body mentions about the request it answers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ErrorContext<'a> {
    /// The model asked for, without `models/`.
    pub(crate) model: Option<&'a str>,
    /// `v1`, `v1beta` or `v1alpha`.
    pub(crate) version: &'a str,
    /// `x-mock-retry-delay-seconds`, which wins over the failure's own delay.
    pub(crate) retry_delay_seconds: Option<u64>,
}

/// `{"error":{"code","message","status","details"?}}`, pretty-printed as Google does.
pub(crate) fn google_error(
    code: u16,
    status: &str,
    message: &str,
    details: Option<Value>,
) -> Bytes {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if let Some(details) = details {
        error["details"] = details;
    }
    reply::pretty(&json!({ "error": error }))
}

/// The 400 Google answers for a key it does not know.
pub(crate) fn invalid_key() -> Bytes {
    const MESSAGE: &str = "API key not valid. Please pass a valid API key.";
    google_error(
        400,
        "INVALID_ARGUMENT",
        MESSAGE,
        Some(json!([
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": { "service": "generativelanguage.googleapis.com" },
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": MESSAGE,
            },
        ])),
    )
}

/// Google's 429 body: `QuotaFailure` for the model, a `Help` link and (optionally) `RetryInfo`.
fn rate_limited(model: Option<&str>, retry_delay_seconds: Option<u64>, per_day: bool) -> Bytes {
    let (quota_id, limit) = if per_day {
        ("GenerateRequestsPerDayPerProjectPerModel-FreeTier", 250)
    } else {
        ("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", 10)
    };
    let mut message = String::from(
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To \
         monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded \
         for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: ",
    );
    message.push_str(&limit.to_string());
    let mut dimensions = json!({ "location": "global" });
    if let Some(model) = model {
        message.push_str(", model: ");
        message.push_str(model);
        dimensions["model"] = json!(model);
    }
    if let Some(seconds) = retry_delay_seconds {
        // Google's message carries the precise delay; `retryDelay` is its whole seconds.
        message.push_str(&format!("\nPlease retry in {seconds}.19s."));
    }
    let mut details = vec![
        json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaDimensions": dimensions,
                "quotaValue": limit.to_string(),
            }],
        }),
        json!({
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }],
        }),
    ];
    if let Some(seconds) = retry_delay_seconds {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{seconds}s"),
        }));
    }
    google_error(
        429,
        "RESOURCE_EXHAUSTED",
        &message,
        Some(Value::Array(details)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn codes_round_trip() {
        for code in [
            "429",
            "429-day",
            "503",
            "500",
            "504",
            "400",
            "400-key",
            "403",
            "403-resource",
            "404",
        ] {
            let failure = Failure::from_code(code).unwrap();
            assert_eq!(failure.code(), code);
        }
        assert_eq!(Failure::from_code("418"), None);
    }

    #[test]
    fn rate_limit_body_names_quota_model_and_delay() {
        let ctx = ErrorContext {
            model: Some("gemini-2.5-pro"),
            version: "v1beta",
            retry_delay_seconds: None,
        };
        let body = parse(&Failure::from_code("429-day").unwrap().body(&ctx));
        let error = &body["error"];
        assert_eq!(error["code"], 429);
        assert_eq!(error["status"], "RESOURCE_EXHAUSTED");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .ends_with("Please retry in 14.19s.")
        );
        let violation = &error["details"][0]["violations"][0];
        assert_eq!(
            violation["quotaId"],
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        );
        assert_eq!(violation["quotaDimensions"]["model"], "gemini-2.5-pro");
        assert_eq!(error["details"][2]["retryDelay"], "14s");
    }

    #[test]
    fn rate_limit_without_delay_has_no_retry_info() {
        let failure = Failure::RateLimited {
            retry_delay_seconds: None,
            per_day: false,
        };
        let body = parse(&failure.body(&ErrorContext {
            version: "v1",
            ..ErrorContext::default()
        }));
        let details = body["error"]["details"].as_array().unwrap();
        assert!(
            details
                .iter()
                .all(|d| d["@type"] != "type.googleapis.com/google.rpc.RetryInfo")
        );
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Please retry")
        );
    }

    #[test]
    fn every_failure_has_matching_code_and_status() {
        for code in [
            "429",
            "503",
            "500",
            "504",
            "400",
            "400-key",
            "403",
            "403-resource",
            "404",
        ] {
            let failure = Failure::from_code(code).unwrap();
            let body = parse(&failure.body(&ErrorContext {
                version: "v1beta",
                ..ErrorContext::default()
            }));
            assert_eq!(body["error"]["code"], failure.status().as_u16(), "{code}");
            assert!(body["error"]["status"].is_string(), "{code}");
        }
    }
}

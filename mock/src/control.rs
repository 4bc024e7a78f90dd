//! `/_mock/*`: inspect and steer a mock running in another process. Never recorded.

use bytes::Bytes;
use http::{Method, Response};
use serde::Deserialize;

use crate::body::MockBody;
use crate::failure::{DEFAULT_RETRY_DELAY_SECONDS, Failure};
use crate::reply;
use crate::shared::Shared;

#[derive(Deserialize)]
struct KeyFailure {
    key: String,
    failure: Option<String>,
    retry_delay_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Hold {
    on: bool,
}

#[derive(Deserialize)]
struct Release {
    count: Option<usize>,
}

/// Answers `/_mock/{endpoint}`.
pub(crate) fn handle(
    shared: &Shared,
    method: &Method,
    endpoint: &str,
    body: &Bytes,
) -> Response<MockBody> {
    match (method, endpoint) {
        (&Method::GET, "requests") => {
            let requests = shared.requests();
            let json: Vec<_> = requests.iter().map(|r| r.to_json()).collect();
            reply::ok(reply::compact(&json))
        }
        (&Method::GET, "vertex-tokens") => reply::ok(reply::compact(&shared.vertex.issued())),
        (&Method::POST, "reset") => {
            shared.clear_requests();
            shared.clear_key_failures();
            shared.gate.set_holding(false);
            done()
        }
        (&Method::POST, "key-failure") => {
            let Ok(request) = serde_json::from_slice::<KeyFailure>(body) else {
                return reply::invalid_argument(
                    "expected {\"key\": \"...\", \"failure\": \"429\"|...|null}",
                );
            };
            let failure = match request.failure.as_deref().map(Failure::from_code) {
                None => None,
                Some(Some(Failure::RateLimited { per_day, .. })) => Some(Failure::RateLimited {
                    retry_delay_seconds: Some(
                        request
                            .retry_delay_seconds
                            .unwrap_or(DEFAULT_RETRY_DELAY_SECONDS),
                    ),
                    per_day,
                }),
                Some(Some(failure)) => Some(failure),
                Some(None) => return reply::invalid_argument("unknown failure code"),
            };
            shared.set_key_failure(&request.key, failure);
            done()
        }
        (&Method::POST, "hold-streams") => match serde_json::from_slice::<Hold>(body) {
            Ok(hold) => {
                shared.gate.set_holding(hold.on);
                done()
            }
            Err(_) => reply::invalid_argument("expected {\"on\": true|false}"),
        },
        (&Method::POST, "release-chunk") => {
            let count = if body.is_empty() {
                Some(1)
            } else {
                serde_json::from_slice::<Release>(body)
                    .ok()
                    .map(|r| r.count.unwrap_or(1))
            };
            match count {
                Some(count) => {
                    shared.gate.release(count);
                    done()
                }
                None => reply::invalid_argument("expected {\"count\": N}"),
            }
        }
        _ => reply::not_found("unknown mock control endpoint"),
    }
}

fn done() -> Response<MockBody> {
    reply::ok(Bytes::from_static(b"{}"))
}

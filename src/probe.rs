//! `gem-proxy health --url URL`: asks a gateway's health endpoint and turns the answer into an
//! exit code, so a container image needs no curl for its `HEALTHCHECK` (and scripts and probes can
//! use the binary they already have).
//!
//! Exit 0 when the URL answers 2xx; 1 (with the reason on stderr) on any other status, a refused
//! or timed-out connection, or a URL that cannot be used. The request goes through the same hyper
//! client the gateway uses upstream, so `https://` works too (public roots only).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};

/// Longest piece of a failing answer's body shown in the message.
const BODY_SHOWN_BYTES: usize = 300;

/// Asks `url` once, within `timeout`; prints a one-line verdict and returns the exit code.
pub fn run(url: &str, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gem-proxy health: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(check(url, timeout)) {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("gem-proxy health: {url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(status line)` for a 2xx answer, else why not.
async fn check(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => {}
        _ => return Err("not an http:// or https:// URL with a host".into()),
    }
    let request = Request::get(uri)
        .header(http::header::USER_AGENT, "gem-proxy-health")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let client = crate::http_client::build_client(timeout);
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("no answer: {}", error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(format!("HTTP {status}"));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let shown = String::from_utf8_lossy(&body[..body.len().min(BODY_SHOWN_BYTES)]);
        Err(format!("unhealthy: HTTP {status}: {}", shown.trim()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs_f64()))?
}

/// The error and its causes on one line ("client error (Connect): tcp connect error: Connection
/// refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

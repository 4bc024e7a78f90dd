//! The admin listener (`metrics.prometheus_port`): `GET /health` for probes. The admin API, metrics
//! and the console join it later.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tower::Service;

use crate::body::GatewayBody;
use crate::error::google_error;
use crate::gateway::Gateway;

/// The admin service.
pub fn service<B>(
    gateway: Arc<Gateway>,
) -> impl Service<
    Request<B>,
    Response = Response<GatewayBody>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<GatewayBody>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<B>| {
        std::future::ready(Ok::<_, Infallible>(route(&gateway, &req)))
    })
}

fn route<B>(gateway: &Gateway, req: &Request<B>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => json(StatusCode::OK, &health(gateway)),
        (_, "/health") => google_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_ARGUMENT",
            "use GET /health",
        ),
        (_, path) => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no admin route {path}"),
        ),
    }
}

/// `/health`: liveness with version, uptime, and each key's state (never the key itself).
fn health(gateway: &Gateway) -> serde_json::Value {
    let live = gateway.live();
    let now = tokio::time::Instant::now();
    let store = gateway.store();
    let mut counts = std::collections::BTreeMap::from([
        ("active", 0u32),
        ("cooling", 0),
        ("invalid", 0),
        ("disabled", 0),
    ]);
    let states: Vec<serde_json::Value> = live
        .keys
        .keys()
        .map(|k| {
            let mut status = store.status(&k.id, now);
            if !live.keys.is_enabled(&k.id) {
                status.state = "disabled";
            }
            *counts.entry(status.state).or_default() += 1;
            let mut v = serde_json::to_value(&status).unwrap_or_default();
            v["id"] = serde_json::Value::from(&*k.id);
            v
        })
        .collect();
    serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.started().elapsed().as_secs(),
        "keys": {
            "total": live.keys.len(),
            "active": counts["active"],
            "cooling": counts["cooling"],
            "invalid": counts["invalid"],
            "disabled": counts["disabled"],
        },
        "key_states": states,
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut res = Response::new(GatewayBody::full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

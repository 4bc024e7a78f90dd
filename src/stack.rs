//! The request path, built in one place.
//!
//! Every client request passes these layers, outermost first; each line says why it sits where it
//! does.
//!
//! 1. **catch-panic** (tower-http) — a bug in any layer below becomes a Google-shaped 500 for that
//!    request instead of a dropped connection.
//! 2. **set request id** (tower-http, [`CounterRequestId`]) — `x-request-id`, kept when the client
//!    sent one, so everything below can name the request.
//! 3. **propagate request id** (tower-http) — echoes it on the response, errors included.
//! 4. **access log** ([`AccessLogLayer`]) — outside the error layer so it sees the final status of
//!    every request; writes its line when the response body ends.
//! 5. **sensitive headers** (tower-http) — marks `Authorization` and `x-goog-api-key` sensitive so no
//!    `Debug` of a request below can print a credential.
//! 6. **error response** ([`ErrorResponseLayer`]) — the one place a [`GatewayError`] becomes a
//!    Google-shaped response; every layer below returns `Result<_, GatewayError>`.
//! 7. **route** ([`RouteLayer`]) — classifies the path (API, version, model); 404 before any body is
//!    read.
//! 8. **buffer body** ([`BufferBodyLayer`]) — reads the body (≤ `server.max_request_body_bytes`) so
//!    an attempt can be replayed; 413 / 408.
//! 9. **key select** ([`KeySelectLayer`]) — picks the upstream key.
//! 10. **upstream** ([`Upstream`]) — strips client credentials and hop-by-hop headers, injects the
//!     key, sends, streams the answer back.
//!
//! Request extensions (who inserts → who reads):
//! - [`Route`](crate::layers::route::Route): route → upstream (credential header choice).
//! - [`SelectedKey`](crate::key_pool::SelectedKey): key select → upstream, which copies it onto the
//!   response for the access log.
//! - [`ClientAddr`](crate::server::ClientAddr): server → (client limits, later).
//!
//! Response extensions: [`ErrorKind`](crate::error::ErrorKind) (error response → access log),
//! [`SelectedKey`](crate::key_pool::SelectedKey) (upstream → access log).

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::{BoxError, GatewayBody};
use crate::error::{ErrorKind, GatewayError, google_error};
use crate::gateway::Gateway;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::buffer_body::BufferBodyLayer;
use crate::layers::error_response::ErrorResponseLayer;
use crate::layers::key_select::KeySelectLayer;
use crate::layers::request_id::CounterRequestId;
use crate::layers::route::RouteLayer;
use crate::upstream::{Upstream, X_GOOG_API_KEY};

/// The body of every proxied response (boxed once, by the catch-panic layer).
pub type ProxyBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;

/// Builds the whole request path for `gateway`.
pub fn build<B>(
    gateway: Arc<Gateway>,
) -> impl Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(PanicResponse))
        .layer(SetRequestIdLayer::x_request_id(CounterRequestId::default()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(AccessLogLayer::new())
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            X_GOOG_API_KEY.clone(),
        ]))
        .layer(ErrorResponseLayer::new())
        .layer(RouteLayer::new())
        .layer(BufferBodyLayer::new(gateway.clone()))
        .layer(KeySelectLayer::new(gateway.clone()))
        .service(Upstream::new(gateway))
}

/// Answers a panic with Google's 500 shape; the panic message is logged, never sent.
#[derive(Debug, Clone, Copy)]
struct PanicResponse;

impl ResponseForPanic for PanicResponse {
    type ResponseBody = GatewayBody;

    fn response_for_panic(&mut self, err: Box<dyn Any + Send + 'static>) -> Response<GatewayBody> {
        let msg = err
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| err.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(panic = msg, "a request handler panicked");
        let e = GatewayError::Internal("the gateway failed to handle this request");
        let mut res = google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.google_status(),
            &e.to_string(),
        );
        res.extensions_mut().insert(ErrorKind("panic"));
        res
    }
}

//! Client stats: right inside auth, the first place the [`Client`] is known, names the client on
//! the request's span (`enduser.id`) and, with `metrics.per_client`, counts its requests by status
//! class (the client-limit rejections below it included).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::Client;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::trace::RequestTrace;

/// Applies [`ClientStats`].
#[derive(Debug, Clone)]
pub struct ClientStatsLayer {
    metrics: Arc<Metrics>,
}

impl ClientStatsLayer {
    /// Records into the gateway's metrics.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            metrics: gateway.metrics().clone(),
        }
    }
}

impl<S> Layer<S> for ClientStatsLayer {
    type Service = ClientStats<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientStats {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Right inside auth, where the [`Client`] is known: names the client on the request's span
/// (`enduser.id`) and, with `metrics.per_client`, counts its requests by status class — the
/// client-limit rejections below it included.
#[derive(Debug, Clone)]
pub struct ClientStats<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResB> Service<Request<B>> for ClientStats<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ClientStatsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let client = ext.get::<Client>();
        if let (Some(trace), Some(client)) = (ext.get::<RequestTrace>(), client) {
            trace.set([KeyValue::new("enduser.id", client.id.to_string())]);
        }
        let counted = client
            .filter(|_| self.metrics.per_client())
            .map(|c| (self.metrics.clone(), self.metrics.client_index(&c.id)));
        ClientStatsFuture {
            future: self.inner.call(req),
            counted,
        }
    }
}

pin_project! {
    /// Response future of [`ClientStats`].
    pub struct ClientStatsFuture<F> {
        #[pin]
        future: F,
        counted: Option<(Arc<Metrics>, usize)>,
    }
}

impl<F, ResB> Future for ClientStatsFuture<F>
where
    F: Future<Output = Result<Response<ResB>, GatewayError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.future.poll(cx));
        if let Some((metrics, client)) = this.counted.take() {
            let status = match &out {
                Ok(res) => res.status(),
                Err(e) => e.status(),
            };
            metrics.client_request(client, status);
        }
        Poll::Ready(out)
    }
}

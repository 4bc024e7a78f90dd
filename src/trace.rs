//! OpenTelemetry traces, exported over OTLP (`metrics.otlp`, off by default).
//!
//! Each request gets a server span (made by [`crate::layers::trace`]) that continues the trace of
//! the client's W3C `traceparent` when it sent one. Inner layers add what they learn to it through
//! the [`RequestTrace`] request extension: the client (client-stats layer), one child span per
//! upstream attempt ([`AttemptTrace`], from failover; its context goes upstream as `traceparent`),
//! and the token counts as `gen_ai.usage.*` attributes (usage layer). The span ends when the
//! answer's body ends, so a stream's span covers the whole stream.
//!
//! Transport: `grpc` (tonic) or `http/protobuf` (sent by our own hyper client on the gateway's
//! runtime, the same rustls/aws-lc-rs stack as the upstream client). Spans are exported in
//! batches by the SDK's background thread; the HTTP client hands each export to the tokio runtime
//! the gateway was built on, so that thread never needs a reactor of its own.
//!
//! With tracing off, none of this exists: no span, no extension, no header change (a client's
//! `traceparent` then passes upstream untouched, like any end-to-end header).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::{OtlpConfig, OtlpProtocol};

/// The tracer of one gateway.
pub struct Tracing {
    provider: SdkTracerProvider,
    handle: Arc<TracingHandle>,
}

/// The tracer and propagator, shared by every request's spans.
struct TracingHandle {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The exporter needs the tokio runtime the gateway runs on.
    #[error("OTLP export needs a tokio runtime; build the gateway inside one")]
    NoRuntime,
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

impl Tracing {
    /// Starts exporting when `metrics.otlp.enabled`; `None` when off (or, logged, when it cannot
    /// start: the gateway serves without traces rather than not at all).
    pub fn from_config(config: &OtlpConfig) -> Option<Arc<Tracing>> {
        if !config.enabled {
            return None;
        }
        match Self::start(config) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "traces disabled: the OTLP exporter did not start");
                None
            }
        }
    }

    fn start(config: &OtlpConfig) -> Result<Tracing, TracingError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracingError::NoRuntime)?;
        let protocol = protocol(config);
        let exporter = match protocol {
            OtlpProtocol::Grpc => {
                // tonic's channel starts its worker on the current runtime: we are inside it.
                let _enter = runtime.enter();
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(ep) = &config.endpoint {
                    b = b.with_endpoint(ep.clone());
                }
                b.build()
            }
            OtlpProtocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(RuntimeHttpClient {
                        client: crate::http_client::build_client(Duration::from_secs(10)),
                        runtime,
                    });
                if let Some(ep) = &config.endpoint {
                    b = b.with_endpoint(http_traces_url(ep));
                }
                b.build()
            }
        }
        .map_err(|e| TracingError::Exporter(e.to_string()))?;
        let service = config
            .service_name
            .clone()
            .or_else(|| {
                std::env::var("OTEL_SERVICE_NAME")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "gem-proxy".to_owned());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("gem-proxy");
        tracing::info!(protocol = ?protocol, endpoint = config.endpoint.as_deref().unwrap_or("(from OTEL_* or default)"), "exporting traces over OTLP");
        Ok(Tracing {
            provider,
            handle: Arc::new(TracingHandle {
                tracer,
                propagator: TraceContextPropagator::new(),
            }),
        })
    }

    /// Starts a request's server span, continuing the client's trace (`traceparent`) if any.
    pub fn start_request(
        &self,
        headers: &HeaderMap,
        name: String,
        attributes: Vec<KeyValue>,
    ) -> RequestTrace {
        let h = &self.handle;
        let parent = h.propagator.extract(&HeaderExtractor(headers));
        let span = h
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&h.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            handle: h.clone(),
        }
    }

    /// Exports what is buffered and stops (waits up to a few seconds for the collector).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::debug!(error = %e, "OTLP shutdown");
        }
    }
}

/// A request's span; a request extension inserted by the trace layer (only when tracing is on).
#[derive(Clone)]
pub struct RequestTrace {
    cx: Context,
    handle: Arc<TracingHandle>,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("span", self.cx.span().span_context())
            .finish()
    }
}

impl RequestTrace {
    /// Adds attributes to the request's span.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// Marks the request's span as failed.
    pub fn fail(&self, description: impl Into<std::borrow::Cow<'static, str>>) {
        self.cx.span().set_status(Status::error(description));
    }

    /// Ends the request's span (later calls do nothing).
    pub fn end(&self) {
        self.cx.span().end();
    }

    /// The trace id, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Starts the span of upstream attempt `n` (0 for the first), a child of the request's span.
    pub fn attempt(&self, n: u32) -> AttemptTrace {
        let h = &self.handle;
        let span = h
            .tracer
            .span_builder("upstream attempt")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("gem_proxy.attempt", i64::from(n))])
            .start_with_context(&h.tracer, &self.cx);
        AttemptTrace {
            cx: self.cx.with_span(span),
            propagator: h.propagator.clone(),
        }
    }
}

/// One upstream attempt's span; a request extension on the attempt's request, read by the upstream
/// client to send `traceparent`.
#[derive(Clone)]
pub struct AttemptTrace {
    cx: Context,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for AttemptTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptTrace")
            .field("span", self.cx.span().span_context())
            .finish()
    }
}

impl AttemptTrace {
    /// Writes `traceparent` (and `tracestate`) for this attempt into upstream request headers,
    /// replacing the client's.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        self.propagator
            .inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// Ends the attempt's span with what happened.
    pub fn end(&self, attributes: Vec<KeyValue>, error: Option<&'static str>) {
        let span = self.cx.span();
        span.set_attributes(attributes);
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }
}

/// `grpc` or `http/protobuf`: the config, else the standard environment variables, else gRPC.
fn protocol(config: &OtlpConfig) -> OtlpProtocol {
    if let Some(p) = config.protocol {
        return p;
    }
    let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    match env.trim() {
        "" | "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            tracing::warn!(
                protocol = other,
                "unsupported OTLP protocol; using http/protobuf"
            );
            OtlpProtocol::HttpProtobuf
        }
    }
}

/// An HTTP endpoint without a path gets OTLP's `/v1/traces`.
fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        endpoint.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// OTLP/HTTP exports through the gateway's own hyper client, run on the gateway's runtime (the
/// SDK's export thread has no reactor).
#[derive(Debug)]
struct RuntimeHttpClient {
    client: crate::http_client::HttpClient,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for RuntimeHttpClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let send = async {
                let res = client.request(request.map(Full::new)).await?;
                let (parts, body) = res.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            tokio::time::timeout(Duration::from_secs(10), send)
                .await
                .map_err(|_| HttpError::from("OTLP export timed out"))?
        });
        Box::pin(async move { task.await.map_err(|e| HttpError::from(e.to_string()))? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_when_they_have_none() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn protocol_comes_from_the_config_first() {
        let config = OtlpConfig {
            protocol: Some(OtlpProtocol::HttpProtobuf),
            ..OtlpConfig::default()
        };
        assert_eq!(protocol(&config), OtlpProtocol::HttpProtobuf);
    }

    #[tokio::test]
    async fn a_request_span_continues_the_clients_trace_and_passes_it_upstream() {
        let config = OtlpConfig {
            enabled: true,
            // Nothing listens there: exports fail quietly in the background.
            endpoint: Some("http://127.0.0.1:9".into()),
            protocol: Some(OtlpProtocol::HttpProtobuf),
            ..OtlpConfig::default()
        };
        let t = Tracing::from_config(&config).expect("starts");
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let req = t.start_request(&headers, "POST generate".into(), vec![]);
        assert_eq!(req.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        let attempt = req.attempt(0);
        let mut up = headers.clone();
        attempt.inject(&mut up);
        let tp = up["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(
            !tp.contains("b7ad6b7169203331"),
            "the attempt's own span id goes upstream: {tp}"
        );
        attempt.end(vec![], None);
        req.end();
        t.shutdown();
    }
}

//! Where an answer's token counts go besides the key state and the usage history.

use std::sync::Arc;

use http::Request;
use opentelemetry::KeyValue;

use crate::auth::Client;
use crate::gateway::Gateway;
use crate::key_pool::Tokens;
use crate::metrics::Metrics;
use crate::trace::RequestTrace;

/// Where the token counts of an answer (or of a Live session's turns) go besides the key state:
/// `gem_proxy_tokens_total` (by model), the client's tokens (`metrics.per_client`) and
/// `gen_ai.usage.*` on the request's span.
#[derive(Debug)]
pub struct TokenSink {
    metrics: Arc<Metrics>,
    model: Arc<str>,
    client: Option<usize>,
    trace: Option<RequestTrace>,
}

impl TokenSink {
    /// The sink for one request for `model`; `None` when neither metrics nor traces are on.
    pub fn for_request<B>(gateway: &Gateway, req: &Request<B>, model: &Arc<str>) -> Option<Self> {
        let metrics = gateway.metrics();
        let trace = req.extensions().get::<RequestTrace>().cloned();
        if !metrics.enabled() && trace.is_none() {
            return None;
        }
        let client = req
            .extensions()
            .get::<Client>()
            .filter(|_| metrics.per_client())
            .map(|c| metrics.client_index(&c.id));
        Some(Self {
            metrics: metrics.clone(),
            model: model.clone(),
            client,
            trace,
        })
    }

    /// An answer reported these tokens (it succeeded: its model may join the label set).
    pub fn record(&self, t: &Tokens) {
        if self.metrics.enabled() {
            let model = self.metrics.admit_model(&self.model);
            self.metrics.tokens(model, t);
            if let Some(c) = self.client {
                self.metrics.client_tokens(c, t);
            }
        }
        if let Some(trace) = &self.trace {
            trace.set([
                KeyValue::new("gen_ai.usage.input_tokens", t.prompt as i64),
                KeyValue::new("gen_ai.usage.output_tokens", t.candidates as i64),
                KeyValue::new("gen_ai.usage.reasoning_tokens", t.thoughts as i64),
                KeyValue::new("gen_ai.usage.cache_read_tokens", t.cached as i64),
                KeyValue::new("gen_ai.usage.total_tokens", t.total as i64),
            ]);
        }
    }
}

//! The integration tests, one binary: the real gateway stack (or binary) on 127.0.0.1 in front of
//! the mock upstream, real clients, real CAs and tools where a test needs them.

mod support;

mod acme;
mod admin_api;
mod auth;
mod cache;
mod cli;
mod egress;
mod hostile;
mod key_pool;
mod live;
mod live_pick;
mod metrics;
mod model_names;
mod pool;
mod properties;
mod proxy;
mod redis_state;
mod reliability;
mod resources;
mod robustness;
mod routing;
mod security;
mod shutdown;

mod tls;
mod token_overrides;
mod usage;
mod usage_replicas;
mod vertex;

//! gem-proxy: a high-performance gateway for Google's Gemini API.
//!
//! Clients keep using the official SDKs (only the base URL changes); the gateway forwards their
//! requests to Google with an upstream key from its pool, streams the answers back untouched and
//! answers its own errors in Google's shape.
//!
//! Start reading at [`stack`]: it builds the whole request path in one place and numbers its
//! layers.

pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod conn_pool;
pub mod connection;
pub mod console;
pub mod deadline;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod heartbeat;
pub mod http_client;
pub mod key_pool;
pub mod layers;
pub mod live;
pub mod live_sessions;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod replay;
pub mod route;
pub mod server;
pub mod stack;
pub mod state;
pub mod time;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod usage;
pub mod vertex;

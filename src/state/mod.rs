//! Where key state lives: in this process ([`MemoryStore`], the default) or shared by several
//! replicas through Redis ([`RedisStore`], `state.backend: redis`).
//!
//! Either way the request path asks only local memory: the Redis backend keeps a local copy, spends
//! quota leased in the background ([`lease`]), and fans out what one replica learns (rests,
//! invalid keys, disables, bindings) to the others within a Redis round trip. See the README's
//! "Running several replicas" for what is shared and the bounds.

pub mod lease;
pub mod redis;
mod scripts;

use std::sync::Arc;

pub use self::redis::RedisStore;
use crate::config::state::{StateBackend, StateConfig};
use crate::key_pool::{KeyStateStore, MemoryStore};

/// The store `config` asks for. The Redis backend needs a tokio runtime for its background
/// tasks; outside one (or with `backend: memory`) the store is in memory.
pub fn open(config: &StateConfig) -> Arc<dyn KeyStateStore> {
    match config.backend {
        StateBackend::Memory => Arc::new(MemoryStore::new()),
        StateBackend::Redis if tokio::runtime::Handle::try_current().is_ok() => {
            RedisStore::start(&config.redis)
        }
        StateBackend::Redis => {
            tracing::error!(
                "state.backend: redis needs the async runtime; key state stays in memory"
            );
            Arc::new(MemoryStore::new())
        }
    }
}

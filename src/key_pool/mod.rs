//! The upstream API keys and which one carries the next request.
//!
//! Keys are used in turn (plain round-robin). Every header value a key needs is built once, when
//! the pool is built, so picking a key costs one atomic increment and no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;

use crate::config::ApiKeyConfig;

/// One upstream API key, ready to be put on a request.
#[derive(Debug)]
pub struct UpstreamKey {
    /// The key's id from the config: safe to log and show.
    pub id: Arc<str>,
    /// `x-goog-api-key: <key>` (marked sensitive).
    pub api_key_header: HeaderValue,
    /// `Authorization: Bearer <key>` for the OpenAI-compatible surface (marked sensitive).
    pub bearer_header: HeaderValue,
}

/// The key chosen for a request; inserted as a request extension by the key selection layer and
/// read by the upstream client (and copied onto the response for the access log).
#[derive(Debug, Clone)]
pub struct SelectedKey(pub Arc<UpstreamKey>);

/// The configured keys.
#[derive(Debug)]
pub struct KeyPool {
    keys: Vec<Arc<UpstreamKey>>,
    next: AtomicUsize,
}

/// A key whose value cannot be sent in an HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("gemini.api_keys[{index}].key: not a valid HTTP header value")]
pub struct InvalidKeyValue {
    /// Position in `gemini.api_keys`.
    pub index: usize,
}

impl KeyPool {
    /// Builds the pool, pre-building each key's header values.
    pub fn new(keys: &[ApiKeyConfig]) -> Result<Self, InvalidKeyValue> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                let secret = k.key.expose();
                let mut api_key_header =
                    HeaderValue::from_str(secret).map_err(|_| InvalidKeyValue { index })?;
                api_key_header.set_sensitive(true);
                let mut bearer_header = HeaderValue::from_str(&format!("Bearer {secret}"))
                    .map_err(|_| InvalidKeyValue { index })?;
                bearer_header.set_sensitive(true);
                Ok(Arc::new(UpstreamKey {
                    id: Arc::from(k.id.as_str()),
                    api_key_header,
                    bearer_header,
                }))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            next: AtomicUsize::new(0),
        })
    }

    /// The key for the next request, or `None` when the pool is empty.
    pub fn pick(&self) -> Option<&Arc<UpstreamKey>> {
        if self.keys.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.keys.get(n % self.keys.len())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key(id: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            key: Secret::new(format!("AIza-{id}")),
            weight: 1,
            max_requests_per_minute: None,
        }
    }

    #[test]
    fn keys_are_used_in_turn() {
        let pool = KeyPool::new(&[key("a"), key("b"), key("c")]).unwrap();
        let ids: Vec<_> = (0..6)
            .map(|_| pool.pick().unwrap().id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn header_values_are_sensitive() {
        let pool = KeyPool::new(&[key("a")]).unwrap();
        let k = pool.pick().unwrap();
        assert!(k.api_key_header.is_sensitive() && k.bearer_header.is_sensitive());
        assert_eq!(k.bearer_header.to_str().unwrap(), "Bearer AIza-a");
        assert!(
            !format!("{k:?}").contains("AIza"),
            "Debug must not show the key"
        );
    }
}
